#!/usr/bin/env bash
# Installs spinseg and what it needs into the current Python environment.
# If torch is missing, installs the CPU build pinned for this project (torch==2.13.0); GPU users
# install the CUDA build of torch matching their driver first, and this script leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  echo "installing the CPU build of torch (torch==2.13.0)"
  "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
"$PYTHON" -m pip install --quiet -e ".[test]"
"$PYTHON" -c "import torch, spinseg; print(f'spinseg {spinseg.__version__}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}')"

#!/usr/bin/env bash
# Installs spinseg (CPU torch if torch is missing) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bash/install.sh
exec "${PYTHON:-python3}" -m pytest "$@"

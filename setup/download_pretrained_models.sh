#!/usr/bin/env bash
# Downloads the authors' pretrained SPiN and U-Net (ATLAS) into pretrained_models/ and checks them.
#   bash setup/download_pretrained_models.sh                     # fetch with gdown (pip install gdown)
#   bash setup/download_pretrained_models.sh --zip_path ZIP      # install a zip downloaded by hand from
#     https://drive.google.com/file/d/1ZSeLeNT-LX1n4QR-r8fVzHk3KmufSps_/view
# Extra flags go to `python -m spinseg.download` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m spinseg.download --output_dir pretrained_models "$@"

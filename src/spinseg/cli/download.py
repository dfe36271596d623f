"""`python -m spinseg.download` / `spinseg download`: flags, then one call into `spinseg.inference.pretrained`."""
from __future__ import annotations

import argparse
import sys
import time

from spinseg.errors import cli_entry
from spinseg.inference.pretrained import (
    DEFAULT_OUTPUT_DIR,
    install_release,
    parse_check_configs,
)

DESCRIPTION = "Install the authors' pretrained models: ``python -m spinseg.download [--zip_path ZIP] [--output_dir pretrained_models]``.\n\nWithout ``--zip_path`` the release zip is fetched from Google Drive with ``gdown`` (optional:\n``pip install gdown``). The host is probed first with a short socket timeout, so that offline the\ncommand fails within seconds with the manual link. With ``--zip_path`` a zip downloaded by hand\nis installed instead.\n\nInstalling is all-or-nothing: the zip is extracted into a temporary folder beside the output\nfolder, checked, and only then are its top-level folders (``spin/``, ``u-net/``, ...) moved into\n``--output_dir``; other files there (e.g. its README.md) are kept. What is checked:\n\n* the expected files exist: ``spin/spin_atlas_traintest.pth`` and ``u-net/unet_atlas_traintest.pth``\n  (the zip may hold them at its top level or inside one folder, e.g. ``pretrained_models/``);\n* each loads with :func:`spinseg.checkpoint.load_model` (``torch.load(weights_only=True)``: no\n  code runs; every key and tensor shape must match the network). The network is built with the\n  paper's config unless ``--check_config NAME=JSON`` gives another one (as the tests do with a\n  small model); ``--skip_load_check`` checks only that the files exist;\n* any other ``.pth`` in the zip is only read safely; one that cannot be is reported as a warning."

def build_parser() -> argparse.ArgumentParser:
    """Flags of the download command."""
    parser = argparse.ArgumentParser(prog="python -m spinseg.download", description=DESCRIPTION.split("\n\n")[0])
    parser.add_argument("--output_dir", "--output", dest="output_dir", default=DEFAULT_OUTPUT_DIR, help="where spin/ and u-net/ go")
    parser.add_argument("--zip_path", default=None, help="install this zip (downloaded by hand) instead of downloading")
    parser.add_argument("--check_config", action="append", default=[], metavar="NAME=JSON",
                        help="config to load-check model NAME (spin or unet) with, instead of the paper's")
    parser.add_argument("--skip_load_check", action="store_true", help="only check that the expected files exist")
    parser.add_argument("--probe_timeout", type=float, default=5.0, help="seconds to wait for the download host")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Installs the pretrained models; problems end with one line and exit code 2."""
    arguments = build_parser().parse_args(argv)
    started = time.monotonic()
    lines = install_release(arguments.output_dir, arguments.zip_path, parse_check_configs(arguments.check_config),
                            not arguments.skip_load_check, arguments.probe_timeout)
    for line in lines:
        print(line, flush=True)
    print(f"done in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

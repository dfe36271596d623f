"""`python -m spinseg.download` / `spinseg download`: flags, then one call into `spinseg.inference.pretrained`."""
from __future__ import annotations

import argparse
import sys
import time

from spinseg.errors import cli_entry
from spinseg.inference import pretrained as pretrained_module
from spinseg.inference.pretrained import (
    DEFAULT_OUTPUT_DIR,
    install_release,
    parse_check_configs,
)

DESCRIPTION = pretrained_module.__doc__  # the command's description is its module's docstring

def build_parser() -> argparse.ArgumentParser:
    """Flags of the download command."""
    parser = argparse.ArgumentParser(prog="python -m spinseg.download", description=DESCRIPTION.split("\n\n")[0])
    parser.add_argument("--output_dir", "--output", dest="output_dir", default=DEFAULT_OUTPUT_DIR, help="where spin/ and u-net/ go")
    parser.add_argument("--zip_path", default=None, help="install this zip (downloaded by hand) instead of downloading")
    parser.add_argument("--check_config", action="append", default=[], metavar="NAME=JSON",
                        help="config to load-check model NAME (spin or unet) with, instead of the paper's")
    parser.add_argument("--skip_load_check", action="store_true", help="only check that the expected files exist")
    parser.add_argument("--probe_timeout", type=float, default=5.0, help="seconds to wait for the download host")
    parser.add_argument("--force", action="store_true",
                        help="install even where a file of yours differs from the release's, moving yours aside "
                             "(<name>.before-download-<time>); default: refuse and change nothing")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Installs the pretrained models; problems end with one line and exit code 2."""
    arguments = build_parser().parse_args(argv)
    started = time.monotonic()
    lines = install_release(arguments.output_dir, arguments.zip_path, parse_check_configs(arguments.check_config),
                            not arguments.skip_load_check, arguments.probe_timeout, arguments.force)
    for line in lines:
        print(line, flush=True)
    print(f"done in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

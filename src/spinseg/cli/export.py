"""Command line: ``python -m spinseg.export --checkpoint X.pth --export safetensors --output Y.safetensors``.

Converts one of our training checkpoints to ``.safetensors`` (weights only, model name and config
in its metadata), the format to publish weights in: loading it can never run code. ``load_model``
reads the result like a ``.pth``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spinseg.errors import UserInputError, cli_entry

EXPORT_FORMATS = ("safetensors",)


def build_parser() -> argparse.ArgumentParser:
    """Flags of the export command."""
    parser = argparse.ArgumentParser(prog="python -m spinseg.export", description=__doc__)
    parser.add_argument("--checkpoint", "--restore_path", dest="checkpoint", required=True, help="a spinseg training checkpoint (.pth)")
    parser.add_argument("--export", default="safetensors", choices=EXPORT_FORMATS, help="output format")
    parser.add_argument("--output", "--output_path", dest="output", default="", help="output file (default: the checkpoint's name with .safetensors)")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Exports the checkpoint; bad input ends with one line and exit code 2."""
    from spinseg.models.checkpoint import export_safetensors

    arguments = build_parser().parse_args(argv)
    output = Path(arguments.output) if arguments.output else Path(arguments.checkpoint).with_suffix(".safetensors")
    if output.suffix != ".safetensors":
        raise UserInputError(f"--output {output}: the file name must end in .safetensors")
    if output.resolve() == Path(arguments.checkpoint).resolve():
        raise UserInputError(f"--output {output}: would overwrite the checkpoint itself")
    written = export_safetensors(arguments.checkpoint, output)
    print(f"wrote {written}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``spinseg <command> [flags]``: one entry point for every command of the package.

    spinseg train ...      = python -m spinseg.train ...
    spinseg evaluate ...   = python -m spinseg.evaluate ...
    spinseg predict ...    = python -m spinseg.predict ...
    spinseg compare ...    = python -m spinseg.compare ...
    spinseg benchmark ...  = python -m spinseg.benchmark ...
    spinseg download ...   = python -m spinseg.download ...
    spinseg export ...     = python -m spinseg.export ...
    spinseg score ...      = python -m spinseg.score ...
    spinseg --version      prints the package version

Flags are spelled alike across commands (docs/cli.md): --model, --checkpoint, --output,
--batch_size, --amp/--no-amp; the release's spellings (--model_name, --restore_path, ...) still work.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = ("train", "evaluate", "predict", "compare", "benchmark", "download", "export", "score")


def main(argv: list[str] | None = None) -> int:
    """Dispatches to ``spinseg.cli.<command>.main``; ``--version`` prints the version; unknown commands exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from spinseg import __version__

        print(f"spinseg {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"spinseg.cli.{command}")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())

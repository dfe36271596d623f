"""Command line: ``python -m spinseg.train`` (also under ``torchrun --nproc_per_node=N -m spinseg.train``)."""
from __future__ import annotations

import argparse
import sys

from spinseg.recipes.config import TrainConfig, add_dataclass_arguments, config_from_namespace
from spinseg.acceleration.allocator import tune_glibc_malloc
from spinseg.errors import cli_entry
from spinseg.recipes.named import train_defaults, parse_with_recipe


def build_parser() -> argparse.ArgumentParser:
    """Flags of the training command (the release's names, the paper's defaults)."""
    parser = argparse.ArgumentParser(prog="python -m spinseg.train", description=__doc__)
    parser.add_argument("--recipe", default="", help="start from this model's recipe (spinseg.recipes); explicit flags win")
    add_dataclass_arguments(parser, TrainConfig)
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Parses flags and trains; bad input ends with one line and exit code 2."""
    tune_glibc_malloc()
    from spinseg.training.runtime import shutdown_distributed
    from spinseg.training.trainer import train

    config = config_from_namespace(TrainConfig, parse_with_recipe(build_parser(), argv, train_defaults))
    try:
        train(config)
    finally:
        shutdown_distributed()  # under torchrun: leave the process group cleanly, also after an error
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m spinseg.train`` (also under ``torchrun --nproc_per_node=N -m spinseg.train``)."""
from __future__ import annotations

import argparse
import sys

from spinseg.acceleration.allocator import tune_glibc_malloc
from spinseg.errors import cli_entry
from spinseg.recipes.config import (
    TrainConfig,
    add_dataclass_arguments,
    config_from_namespace,
)
from spinseg.recipes.named import (
    add_recipe_arguments,
    parse_with_recipe,
    train_defaults,
)


def build_parser() -> argparse.ArgumentParser:
    """Flags of the training command (the release's names, the paper's defaults)."""
    parser = argparse.ArgumentParser(prog="python -m spinseg.train", description=__doc__)
    add_recipe_arguments(parser, statistics=True)
    add_dataclass_arguments(parser, TrainConfig)
    return parser


def parse_train_config(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig that ``python -m spinseg.train <argv>`` runs: recipe first, explicit flags win."""
    flags = set(sys.argv[1:] if argv is None else argv)
    statistics_given = {"--dataset_means", "--dataset_stddevs"} <= flags

    def defaults_for(name: str, known: argparse.Namespace) -> dict:
        return train_defaults(name, known.dataset_statistics, read_statistics=not statistics_given)

    return config_from_namespace(TrainConfig, parse_with_recipe(build_parser(), argv, defaults_for))


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Parses flags and trains; bad input ends with one line and exit code 2."""
    tune_glibc_malloc()
    from spinseg.runtime.distributed import shutdown_distributed
    from spinseg.training.trainer import train

    config = parse_train_config(argv)
    try:
        train(config)
    finally:
        shutdown_distributed()  # under torchrun: leave the process group cleanly, also after an error
    return 0


if __name__ == "__main__":
    sys.exit(main())

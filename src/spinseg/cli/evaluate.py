"""Command line: ``python -m spinseg.evaluate`` prints Table 2/3 rows and writes the report.

The model, its config, the stacked slices, the normalisation and the threshold come from the
checkpoint (or, for the authors' checkpoints, from the recipe of the model); flags override them.
"""
from __future__ import annotations

import argparse
import sys

from spinseg.acceleration.allocator import tune_glibc_malloc
from spinseg.errors import cli_entry
from spinseg.recipes.config import (
    EvaluateConfig,
    add_dataclass_arguments,
    config_from_namespace,
)
from spinseg.recipes.named import evaluate_defaults, parse_with_recipe


def build_parser() -> argparse.ArgumentParser:
    """Flags of the evaluation command (``--recipe`` is the dataclass's ``recipe`` field)."""
    parser = argparse.ArgumentParser(prog="python -m spinseg.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, EvaluateConfig)
    return parser


def parse_evaluate_config(argv: list[str] | None = None) -> EvaluateConfig:
    """The EvaluateConfig that ``python -m spinseg.evaluate <argv>`` runs."""
    namespace = parse_with_recipe(build_parser(), argv, lambda name, known: evaluate_defaults(name))
    return config_from_namespace(EvaluateConfig, namespace)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Parses flags and evaluates; bad input ends with one line and exit code 2."""
    tune_glibc_malloc()
    from spinseg.evaluation.evaluator import evaluate

    evaluate(parse_evaluate_config(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m spinseg.evaluate`` prints Table 2/3 rows and writes the report."""
from __future__ import annotations

import argparse
import sys

from spinseg.recipes.config import EvaluateConfig, add_dataclass_arguments, config_from_namespace
from spinseg.acceleration.allocator import tune_glibc_malloc
from spinseg.errors import cli_entry
from spinseg.recipes.named import evaluate_defaults, parse_with_recipe


def build_parser() -> argparse.ArgumentParser:
    """Flags of the evaluation command."""
    parser = argparse.ArgumentParser(prog="python -m spinseg.evaluate", description=__doc__)
    parser.add_argument("--recipe", default="", help="start from this model's recipe (spinseg.recipes); explicit flags win")
    add_dataclass_arguments(parser, EvaluateConfig)
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Parses flags and evaluates; bad input ends with one line and exit code 2."""
    tune_glibc_malloc()
    from spinseg.evaluation.evaluator import evaluate

    evaluate(config_from_namespace(EvaluateConfig, parse_with_recipe(build_parser(), argv, evaluate_defaults)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

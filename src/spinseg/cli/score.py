"""`python -m spinseg.score` / `spinseg score`: flags, then one call into `spinseg.evaluation.scoring`."""
from __future__ import annotations

import argparse
import sys

from spinseg.errors import cli_entry
from spinseg.evaluation import scoring as scoring_module
from spinseg.evaluation.scoring import (
    METRIC_GROUPS,
    ScoreConfig,
    score,
)

DESCRIPTION = scoring_module.__doc__  # the command's description is its module's docstring

def build_parser() -> argparse.ArgumentParser:
    """Flags of the scoring command."""
    parser = argparse.ArgumentParser(prog="python -m spinseg.score", description=DESCRIPTION.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = ScoreConfig()
    parser.add_argument("--pred", default="", help="folder of predicted masks (.nii/.nii.gz, searched recursively)")
    parser.add_argument("--gt", default="", help="folder of ground-truth masks (.nii/.nii.gz, searched recursively)")
    parser.add_argument("--output", default=defaults.output, help="output folder (report.md, results.txt, per_subject.csv/json, plots)")
    parser.add_argument("--pred_suffix", default="", help="end of prediction names to strip for pairing, e.g. _lesion_mask; other files are skipped")
    parser.add_argument("--gt_suffix", default="", help="end of ground-truth names to strip for pairing, e.g. _LesionSmooth_stx; other files are skipped")
    parser.add_argument("--threshold", type=float, default=defaults.threshold, help="probability maps (values in [0, 1]) become value > threshold")
    parser.add_argument("--label", type=int, default=None, help="lesion label of label maps, in both folders: mask = value == N (required for maps with more than two values)")
    parser.add_argument("--tolerance_mm", type=float, default=defaults.tolerance_mm, help="NSD tolerance in mm")
    parser.add_argument("--metrics", nargs="*", default=defaults.metrics, help=f"metric groups shown: any of {', '.join(METRIC_GROUPS)}; boundary metrics are computed only when listed")
    parser.add_argument("--method_name", default="", help="name of the method in the tables; empty: the --pred folder's name")
    parser.add_argument("--benchmark", action="store_true", help="time scoring one synthetic 197x233x189 pair with all metrics, print the figure and exit")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Parses flags and scores; bad input ends with one line and exit code 2."""
    arguments = build_parser().parse_args(argv)
    if arguments.benchmark:
        from spinseg.experiments.score_benchmark import run_score_benchmark

        run_score_benchmark(arguments.tolerance_mm)
        return 0
    options = vars(arguments)
    options.pop("benchmark")
    score(ScoreConfig(**options))
    return 0


if __name__ == "__main__":
    sys.exit(main())

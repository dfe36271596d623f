"""`python -m spinseg.compare` / `spinseg compare`: flags, then one call into `spinseg.experiments.compare`."""
from __future__ import annotations

import argparse
import json
import sys

from spinseg.acceleration.allocator import tune_glibc_malloc
from spinseg.errors import UserInputError, cli_entry
from spinseg.experiments.compare import (
    compare,
)

DESCRIPTION = 'Train and evaluate several models on the same data with the same budget; Tables 2 and 3 side by side.\n\n    python -m spinseg.compare --models spin unet dunet clcinet kiunet xnet \\\n        --train_scans training/atlas/traintest/train_scans.txt --train_ground_truths ... \\\n        --test_scans ... --test_ground_truths ... --max_steps 300 --crop_shape 96 96\n\nWrites ``comparison.md``, ``comparison.json``, ``comparison_bar_chart.png`` and a detection-vs-size\nplot with one curve per model into ``--output_dir``.'

def build_parser() -> argparse.ArgumentParser:
    """Flags of the comparison command."""
    parser = argparse.ArgumentParser(prog="python -m spinseg.compare", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["spin", "unet", "dunet", "clcinet", "kiunet", "xnet"])
    parser.add_argument("--train_scans", default="training/atlas/traintest/train_scans.txt")
    parser.add_argument("--train_ground_truths", default="training/atlas/traintest/train_ground_truths.txt")
    parser.add_argument("--test_scans", default="testing/atlas/traintest/test_scans.txt")
    parser.add_argument("--test_ground_truths", default="testing/atlas/traintest/test_ground_truths.txt")
    parser.add_argument("--output_dir", "--output", dest="output_dir", default="outputs/comparison")
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--crop_shape", type=int, nargs=2, default=[96, 96])
    parser.add_argument("--n_batch", "--batch_size", dest="n_batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n_workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max_test_subjects", type=int, default=0, help="evaluate on the first N test subjects (0 = all)")
    parser.add_argument("--model_overrides", default="", help="JSON {model: {config key: value}}")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Parses flags and runs the comparison."""
    tune_glibc_malloc()
    args = build_parser().parse_args(argv)
    try:
        overrides = json.loads(args.model_overrides) if args.model_overrides else {}
    except json.JSONDecodeError as error:
        raise UserInputError(f"--model_overrides: not JSON ({error})") from None
    compare(args.models, args.train_scans, args.train_ground_truths, args.test_scans, args.test_ground_truths,
            args.output_dir, args.max_steps, args.crop_shape, args.n_batch, args.seed, args.n_workers, overrides,
            args.device, args.max_test_subjects)
    return 0


if __name__ == "__main__":
    sys.exit(main())

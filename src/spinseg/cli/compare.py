"""`python -m spinseg.compare` / `spinseg compare`: flags, then one call into `spinseg.experiments.compare`."""
from __future__ import annotations

import argparse
import json
import sys

from spinseg.acceleration.allocator import tune_glibc_malloc
from spinseg.errors import UserInputError, cli_entry
from spinseg.experiments import compare as compare_module
from spinseg.experiments.compare import (
    compare,
)

DESCRIPTION = compare_module.__doc__  # the command's description is its module's docstring

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
    # the paper's rows from the authors' checkpoints, and spread over seeds.
    parser.add_argument("--from_checkpoints", default="",
                        help="folder of the authors' checkpoints (e.g. pretrained_models/): evaluate each with its release "
                        "preset on the test lists, no training; writes release_tables.md (default: '' = train and compare)")
    parser.add_argument("--small_lesion_slices_path", default="",
                        help="with --from_checkpoints: list of per-subject small-lesion slice files (default: '' = "
                        "derived from each ground truth)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[],
                        help="train and evaluate once per seed and report mean ± sd (default: none = the one --seed)")
    return parser


def check_model_overrides(overrides) -> None:
    """``--model_overrides`` must be {model name: {config key: value}} with keys that model takes."""
    from spinseg.models import model_class
    from spinseg.models.model_config import check_model_config

    if not isinstance(overrides, dict):
        raise UserInputError(f"--model_overrides: expected a JSON object {{model: {{config key: value}}}}, found {type(overrides).__name__}")
    for name, config in overrides.items():
        model_class(name)  # an unknown model name: one line listing the known ones
        if not isinstance(config, dict):
            raise UserInputError(f"--model_overrides {name}: expected a JSON object of config keys, found {type(config).__name__}")
        check_model_config(name, config, f"--model_overrides {name}")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Parses flags and runs the comparison."""
    tune_glibc_malloc()
    args = build_parser().parse_args(argv)
    try:
        overrides = json.loads(args.model_overrides) if args.model_overrides else {}
    except json.JSONDecodeError as error:
        raise UserInputError(f"--model_overrides: not JSON ({error})") from None
    check_model_overrides(overrides)
    if args.from_checkpoints:
        from spinseg.experiments.release_rows import compare_from_checkpoints

        compare_from_checkpoints(args.from_checkpoints, args.test_scans, args.test_ground_truths, args.output_dir,
                                 args.device, overrides, args.small_lesion_slices_path, args.max_test_subjects)
        return 0
    if args.seeds:
        from spinseg.experiments.seeds import compare_over_seeds

        compare_over_seeds(sorted(set(args.seeds)), args.output_dir, models=args.models, train_scans=args.train_scans,
                           train_ground_truths=args.train_ground_truths, test_scans=args.test_scans,
                           test_ground_truths=args.test_ground_truths, max_steps=args.max_steps,
                           crop_shape=args.crop_shape, n_batch=args.n_batch, n_workers=args.n_workers,
                           model_overrides=overrides, device=args.device, max_test_subjects=args.max_test_subjects)
        return 0
    compare(args.models, args.train_scans, args.train_ground_truths, args.test_scans, args.test_ground_truths,
            args.output_dir, args.max_steps, args.crop_shape, args.n_batch, args.seed, args.n_workers, overrides,
            args.device, args.max_test_subjects)
    return 0


if __name__ == "__main__":
    sys.exit(main())

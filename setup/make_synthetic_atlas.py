"""Writes a synthetic ATLAS (R1.2 raw layout by default) from the MNI152 template bundled with nilearn.

    python setup/make_synthetic_atlas.py --output_dir data/atlas/atlas_standard --n_subjects 30
    python setup/make_synthetic_atlas.py --output_dir /tmp/tiny --n_subjects 6 --shape 48 56 45 --n_folds 3

Writes ``<output_dir>/c00NN/c00NNs00MMt01/c00NNs00MMt01_{t1w,LesionSmooth}_stx.nii.gz`` (every 5th subject's
mask split in two files), ``<output_dir>/data_split/traintest/{train,test}_subjects.txt`` (and
``<K>fold/fold_k/`` with --n_folds K) and ``synthetic_summary.json``. With --format bids the ATLAS v2.0
layout ``<output_dir>/Training/R001/sub-r001sNNN/ses-1/anat/...`` instead (no data_split).
See spinseg.datasets.synthetic for how subjects are made.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spinseg.data import synthetic  # noqa: E402
from spinseg.errors import UserInputError, cli_entry  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="data/atlas/atlas_standard")
    parser.add_argument("--n_subjects", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--shape", type=int, nargs=3, metavar=("H", "W", "D"), help="grid size (default 197 233 189)")
    size.add_argument("--downsample", type=float, help="divide the 197x233x189 grid by this factor")
    parser.add_argument("--n_workers", type=int, default=1)
    parser.add_argument("--format", choices=[synthetic.R12, synthetic.BIDS], default=synthetic.R12)
    parser.add_argument("--test_fraction", type=float, default=0.2)
    parser.add_argument("--n_folds", type=int, default=0, help="also write K train/val folds (0 = none)")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    """Generates the data set and prints one line per subject plus a summary."""
    args = build_parser().parse_args(argv)
    if args.n_workers < 1:
        raise UserInputError(f"--n_workers {args.n_workers}: expected at least 1")
    shape = tuple(args.shape) if args.shape else synthetic.default_shape(args.downsample)
    start = time.perf_counter()

    def report(summary: dict) -> None:
        print(f"{summary['subject']}: mean {summary['mean']:.2f} std {summary['std']:.2f} "
              f"lesion voxels {summary['lesion_voxels']} in {summary['lesion_components']} component(s), "
              f"{summary['small_lesion_slices']} small-lesion slices, {summary['mask_files']} mask file(s)",
              flush=True)

    summaries = synthetic.write_synthetic_atlas(
        args.output_dir, n_subjects=args.n_subjects, seed=args.seed, shape=shape, n_workers=args.n_workers,
        data_format=args.format, test_fraction=args.test_fraction, n_folds=args.n_folds, progress=report)
    voxels = [s["lesion_voxels"] for s in summaries]
    print(f"wrote {len(summaries)} subjects of shape {tuple(summaries[0]['shape'])} to {args.output_dir} in "
          f"{time.perf_counter() - start:.1f} s; mean of means {sum(s['mean'] for s in summaries) / len(summaries):.2f}, "
          f"mean of stds {sum(s['std'] for s in summaries) / len(summaries):.2f}; lesion voxels min {min(voxels)} "
          f"median {sorted(voxels)[len(voxels) // 2]} max {max(voxels)}; small-lesion slices "
          f"{sum(s['small_lesion_slices'] for s in summaries)}")


if __name__ == "__main__":
    main()

"""Command line: ``python -m spinseg.cli.native_check --atlas_dir RAW --checkpoint MODEL.pth``.

The main job's last step (bash/run_synthetic_atlas.sh): a held-out synthetic ATLAS subject moved to a
native sagittal 1 mm grid by a seeded random affine, intensities x12, segmented by
``predict --register``; Dice in native space against Dice in MNI space (spinseg.experiments.native_check).
"""
from __future__ import annotations

import argparse
import sys

from spinseg.errors import cli_entry
from spinseg.experiments.native_check import NativeCheckConfig, native_check

DEFAULTS = NativeCheckConfig(atlas_dir="", checkpoint="")


def build_parser() -> argparse.ArgumentParser:
    """Flags of the native-space check; every default is the one NativeCheckConfig holds."""
    parser = argparse.ArgumentParser(prog="python -m spinseg.cli.native_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atlas_dir", required=True,
                        help="raw synthetic ATLAS (R1.2 layout, with data_split/<split>/test_subjects.txt) (required)")
    parser.add_argument("--checkpoint", required=True, help="trained model checkpoint that predict loads (required)")
    parser.add_argument("--output_json", default=DEFAULTS.output_json, help=f"result file (default: {DEFAULTS.output_json})")
    parser.add_argument("--work_dir", default="", help="moved scan, ground truth and predict outputs (default: "
                        "native_check/ next to --output_json)")
    parser.add_argument("--subject", default="", help="held-out subject ID (default: the test subject with the most lesion voxels)")
    parser.add_argument("--split", default=DEFAULTS.split, help=f"split under <atlas_dir>/data_split (default: {DEFAULTS.split})")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help=f"seed of the random affine (default: {DEFAULTS.seed})")
    parser.add_argument("--native_shape", type=int, nargs=3, default=list(DEFAULTS.native_shape), metavar=("I", "J", "K"),
                        help="native sagittal LIA grid size (default: 176 256 256)")
    parser.add_argument("--voxel_mm", type=float, default=DEFAULTS.voxel_mm, help=f"native voxel size in mm (default: {DEFAULTS.voxel_mm})")
    parser.add_argument("--intensity_scale", type=float, default=DEFAULTS.intensity_scale,
                        help=f"factor on the native scan's intensities (default: {DEFAULTS.intensity_scale})")
    parser.add_argument("--rotation_deg", type=float, default=DEFAULTS.rotation_deg,
                        help=f"largest rotation about each axis, degrees (default: {DEFAULTS.rotation_deg})")
    parser.add_argument("--shift_mm", type=float, default=DEFAULTS.shift_mm, help=f"largest shift along each axis, mm (default: {DEFAULTS.shift_mm})")
    parser.add_argument("--scale", type=float, default=DEFAULTS.scale, help=f"largest relative scaling per axis (default: {DEFAULTS.scale})")
    parser.add_argument("--device", default=DEFAULTS.device, help=f"predict's --device: auto, cpu or cuda (default: {DEFAULTS.device})")
    parser.add_argument("--batch_size", type=int, default=DEFAULTS.batch_size, help=f"predict's --batch_size (default: {DEFAULTS.batch_size})")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Runs the check; bad input ends with one line and exit code 2."""
    arguments = vars(build_parser().parse_args(argv))
    arguments["native_shape"] = tuple(arguments["native_shape"])
    native_check(NativeCheckConfig(**arguments))
    return 0


if __name__ == "__main__":
    sys.exit(main())

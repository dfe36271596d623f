"""`python -m spinseg.predict` / `spinseg predict`: flags, then one call into `spinseg.inference.scan`."""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from spinseg.errors import UserInputError, cli_entry, fail, missing
from spinseg.inference import scan as scan_module
from spinseg.inference.intensity import INTENSITY_MODES
from spinseg.inference.native import PredictSettings
from spinseg.inference.scan import load_predict_model
from spinseg.inference.study import ScanPrefetch, collect_jobs, run_study
from spinseg.models.checkpoint import CHECKPOINT_SUFFIXES
from spinseg.recipes.config import check_numeric_flags
from spinseg.recipes.preprocessing import PreprocessingFlags

DESCRIPTION = scan_module.__doc__  # the command's description is its module's docstring

FROM_CHECKPOINT = "default: from the checkpoint, else the model's recipe"


def build_parser() -> argparse.ArgumentParser:
    """Flags of the prediction command (common spellings first, the release's as aliases: docs/cli.md)."""
    parser = argparse.ArgumentParser(prog="python -m spinseg.predict", description=DESCRIPTION.split("\n\n")[0])
    parser.add_argument("--model", "--model_name", dest="model", default=None,
                        help=f"registry name of the network: spin, unet, dunet, ... ({FROM_CHECKPOINT}, else spin)")
    parser.add_argument("--checkpoint", "--restore_path", dest="checkpoint", required=True,
                        help="ours (.pth/.safetensors) or the release's .pth")
    parser.add_argument("--input", nargs="+", required=True,
                        help="T1 NIfTI files (.nii/.nii.gz), folders searched recursively, or BIDS datasets")
    parser.add_argument("--output", "--output_path", dest="output", required=True, help="output folder")
    parser.add_argument("--recipe", default="", help="named recipe for what the checkpoint does not record (default: the model's)")
    parser.add_argument("--model_config", default="", help="JSON object or JSON file of model constructor arguments over the checkpoint's")
    parser.add_argument("--n_chunk", type=int, default=None, help=f"stacked slices ({FROM_CHECKPOINT})")
    parser.add_argument("--dataset_normalization", default=None, choices=("standard", "none"), help=f"intensity normalisation ({FROM_CHECKPOINT})")
    parser.add_argument("--dataset_means", type=float, nargs="+", default=None, help=f"mean per input channel ({FROM_CHECKPOINT})")
    parser.add_argument("--dataset_stddevs", type=float, nargs="+", default=None, help=f"standard deviation per channel ({FROM_CHECKPOINT})")
    parser.add_argument("--threshold", type=float, default=None, help=f"mask = probability > threshold ({FROM_CHECKPOINT}, else 0.5)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--batch_size", "--n_batch", dest="batch_size", type=int, default=8,
                        help="slices per forward pass (default: 8; as fast as 16 with half the memory)")
    parser.add_argument("--test_time_flip", action="store_true", help="average with the left-right flipped slice")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                        help="bfloat16 autocast (GPUs; CPUs with AVX512-BF16 or AMX) (default: off)")
    parser.add_argument("--plain_inference", action="store_true",
                        help="run the model as loaded, not the prepared one (batch norm folded, channels-last)")
    parser.add_argument("--save_probability", action="store_true", help="also write <name>_lesion_prob.nii.gz")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs that already exist (default: refuse before any work; inputs are never overwritten)")
    parser.add_argument("--register", action="store_true",
                        help="affinely register each scan to MNI152 2009 (SimpleITK), segment there, bring the mask back "
                             "to the scan's grid; saves <name>_to_mni.tfm (default: off, the scan is only resampled)")
    parser.add_argument("--intensity", choices=INTENSITY_MODES, default=None,
                        help="check: warn when brain intensities are far from the training data's; standardize: rescale "
                             "them to it (default: standardize with --register, else check)")
    parser.add_argument("--save_mni", action="store_true", help="with --register, also write the MNI-space mask and probabilities")
    parser.add_argument("--pattern", default="*.nii*", help="file-name pattern of scans inside non-BIDS folders (default: *.nii*)")
    parser.add_argument("--qc_lesions", type=int, default=6, help="zoomed crops of the largest lesions in the QC picture (default: 6)")
    return parser


def check_arguments(arguments: argparse.Namespace) -> None:
    """One-line errors for values no run can use (numbers: the one range table every command uses)."""
    check_numeric_flags({"threshold": arguments.threshold, "batch_size": arguments.batch_size, "n_chunk": arguments.n_chunk})
    output_dir = Path(arguments.output)
    if output_dir.exists() and not output_dir.is_dir():
        raise fail(output_dir, "--output exists and is not a folder")
    if arguments.register and importlib.util.find_spec("SimpleITK") is None:
        raise UserInputError("--register needs SimpleITK: pip install 'spinseg[register]' (or pip install SimpleITK)")
    if arguments.save_mni and not arguments.register:
        raise UserInputError("--save_mni needs --register (without it the scan is assumed to be in MNI space already)")


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Segments the scans; bad input ends with one line per problem and exit code 2."""
    arguments = build_parser().parse_args(argv)
    check_arguments(arguments)
    jobs = collect_jobs(arguments.input, Path(arguments.output), arguments.pattern)

    from spinseg.acceleration.allocator import tune_glibc_malloc

    tune_glibc_malloc()
    # The first scan is read while the model loads (ScanPrefetch); the run's end or an error stops it.
    prefetch = ScanPrefetch(jobs)
    try:
        return segment_study(arguments, jobs, prefetch)
    finally:
        prefetch.close()


def segment_study(arguments: argparse.Namespace, jobs: list, prefetch: ScanPrefetch) -> int:
    """Loads and prepares the model, then segments every job (:func:`spinseg.inference.study.run_study`); returns the exit code."""
    from spinseg.models.model_config import parse_model_config
    from spinseg.runtime.devices import configure_cuda_math
    from spinseg.runtime.distributed import select_device

    device = select_device(arguments.device)
    configure_cuda_math(device)  # no TF32: masks as in fp32 (docs/gpu.md)
    if not Path(arguments.checkpoint).is_file():
        raise missing(arguments.checkpoint, "checkpoint", suffixes=CHECKPOINT_SUFFIXES)
    flags = PreprocessingFlags(
        arguments.model, parse_model_config(arguments.model_config), arguments.n_chunk, arguments.dataset_normalization,
        arguments.dataset_means, arguments.dataset_stddevs, arguments.threshold, arguments.recipe,
    )
    model, preprocessing = load_predict_model(arguments.checkpoint, flags)
    from spinseg.inference.predictor import prepare_for_inference

    settings = PredictSettings(
        preprocessing.n_chunk, preprocessing.normalization(), preprocessing.threshold, arguments.batch_size, device,
        arguments.test_time_flip, arguments.amp, arguments.register, arguments.intensity, arguments.save_probability,
        arguments.save_mni, arguments.qc_lesions, prepare=not arguments.plain_inference,
    )
    model = prepare_for_inference(model.to(device), settings.inference_options())
    rows = run_study(model, jobs, Path(arguments.output), settings,
                     report_extra={"model": preprocessing.model_name, "checkpoint": str(arguments.checkpoint),
                                   "preprocessing_from": preprocessing.source}, overwrite=arguments.overwrite,
                     prefetch=prefetch)
    return 2 if any(row["status"] == "failed" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

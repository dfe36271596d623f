"""Evaluation behind ``python -m spinseg.evaluate``: Tables 2 and 3 and the lesion-level report."""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from spinseg.data.images import is_rgb_image_file, load_image, load_mask
from spinseg.data.transforms import Normalization
from spinseg.data.volumes import (
    check_same_shape,
    check_volume_pairs,
    load_volume,
    read_paired_lists,
)
from spinseg.errors import UserInputError, fail
from spinseg.evaluation import reporting
from spinseg.evaluation.boundary_metrics import boundary_metrics, isotropic_spacing_from_voxel_volume
from spinseg.evaluation.metrics import pooled_release_metrics
from spinseg.inference.predictor import InferenceOptions, predict_image, predict_volume, prepare_for_inference
from spinseg.io.budgets import check_npy_file, check_output_folder
from spinseg.io.figures import save_overlay_montage, save_slice_panel
from spinseg.io.files import write_json, write_text
from spinseg.io.progress import progress_bar
from spinseg.recipes.config import EvaluateConfig, validate_evaluate_config
from spinseg.recipes.preprocessing import flags_of, load_with_preprocessing, with_preprocessing
from spinseg.runtime.devices import configure_cuda_math
from spinseg.runtime.distributed import select_device

KNOWN_METRIC_GROUPS = ("release", "challenge", "size", "boundary")
# Montage, report rows and (optional) mask of one subject: a generous estimate of what it writes.
OUTPUT_BYTES_PER_SUBJECT = 2 * 2**20


def subject_id_from_path(path: str) -> str:
    """``.../c0008s0011t01_t1w_stx.npy`` -> ``c0008s0011t01`` (the file's folder name for ATLAS)."""
    path = Path(path)
    return path.parent.name if path.parent.name and path.name.startswith(path.parent.name) else path.stem


def save_prediction_nifti(probabilities_mask: np.ndarray, path: Path, reference: str) -> None:
    """Writes a uint8 mask as NIfTI with the reference image's affine (MNI template when none)."""
    import nibabel

    from spinseg.io.files import atomic_path

    if reference:
        affine = nibabel.load(reference).affine
    else:
        from nilearn.datasets import load_mni152_template

        affine = load_mni152_template(resolution=1).affine
    with atomic_path(path, suffix=".nii.gz") as temporary:
        nibabel.save(nibabel.Nifti1Image(probabilities_mask.astype(np.uint8), affine), str(temporary))


def check_evaluate_flags(config: EvaluateConfig) -> None:
    """Refuses unknown metric groups and a missing checkpoint, before any work."""
    unknown = sorted(set(config.metrics) - set(KNOWN_METRIC_GROUPS))
    if unknown:
        raise UserInputError(f"--metrics: unknown group(s) {', '.join(unknown)}; choose from {', '.join(KNOWN_METRIC_GROUPS)}")
    if not config.restore_path and not config.preset:
        raise UserInputError("--restore_path: give the checkpoint to evaluate")


def evaluate(config: EvaluateConfig) -> dict:
    """Evaluates a checkpoint on a list of volumes; prints and writes Table 2/3 rows and the report.

    Returns {"table2": {...}, "table3": {...} | None, "records": [...], "output_path": str}.
    """
    validate_evaluate_config(config)  # every number in range before any work
    check_evaluate_flags(config)
    if config.preset:  # the release's preparation and scoring of one method
        from spinseg.evaluation.release_evaluation import evaluate_with_preset

        return evaluate_with_preset(config)
    device = select_device(config.device)
    configure_cuda_math(device)  # no TF32: the optimised and plain paths give the same masks (docs/gpu.md)
    if config.n_thread > 0:
        torch.set_num_threads(config.n_thread)
    scan_paths, ground_truth_paths = read_paired_lists(config.multimodal_scan_paths, config.ground_truth_path)
    small_lesion_slices = None
    if config.small_lesion_slices_path:
        small_lesion_slices = read_small_lesion_slices(config.small_lesion_slices_path, len(scan_paths))
    # Model, slices, normalisation and threshold: the flags given, else the checkpoint's, else its recipe's.
    model, preprocessing = load_with_preprocessing(config.restore_path, flags_of(config))
    model = model.to(device)
    config = with_preprocessing(config, preprocessing)
    normalization = preprocessing.normalization()
    options = inference_options(config, normalization, device)
    output = Path(config.output_path)
    method = config.method_name or config.model_name.upper().replace("SPIN", "SPiN")
    if is_rgb_image_file(scan_paths[0]):
        check_output_folder(output, len(scan_paths) * OUTPUT_BYTES_PER_SUBJECT, "--output_path")
        # 2-D images run the model as trained, as before the single inference path (their scores stay bit for bit).
        return evaluate_images(config, model, replace(options, prepare=False), scan_paths, ground_truth_paths, output, method)
    # Every volume is checked before the first output is written.
    check_volume_pairs(scan_paths, ground_truth_paths)
    if small_lesion_slices is not None:
        check_slice_indices(small_lesion_slices, scan_paths, config.small_lesion_slices_path)
    # A read-only or full output folder (or a file in its place) stops the run before the work.
    check_output_folder(output, len(scan_paths) * OUTPUT_BYTES_PER_SUBJECT, "--output_path")
    model = prepare_for_inference(model, options)

    started = time.time()
    outcome = VolumeOutcomes()
    for index, (scan_path, ground_truth_path) in enumerate(progress_bar(list(zip(scan_paths, ground_truth_paths)), desc="evaluate")):
        slices = small_lesion_slices[index] if small_lesion_slices is not None else None
        evaluate_volume(config, model, options, scan_path, ground_truth_path, slices, output, outcome)
    seconds = time.time() - started
    return report_evaluation(config, outcome, small_lesion_slices is not None, seconds, output, method)


@dataclass
class VolumeOutcomes:
    """What the evaluation of each volume leaves for the report."""

    records: list[dict] = field(default_factory=list)  # reporting.subject_record per subject
    montages: dict[str, Path] = field(default_factory=dict)  # {subject: overlay montage}
    small_lesion_truths: list[np.ndarray] = field(default_factory=list)  # (H, W, S) per subject, given slices only
    small_lesion_predictions: list[np.ndarray] = field(default_factory=list)


def evaluate_volume(config: EvaluateConfig, model, options: InferenceOptions, scan_path: str, ground_truth_path: str,
                    small_lesion_slices: np.ndarray | None, output: Path, outcome: VolumeOutcomes) -> None:
    """Predicts one (H, W, D) volume, scores it, draws its figures and adds all that to ``outcome``."""
    scan, ground_truth = load_volume(scan_path), load_volume(ground_truth_path)
    check_same_shape(scan, scan_path, ground_truth, ground_truth_path)
    ground_truth = np.asarray(ground_truth) > 0
    probabilities, _ = predict_volume(model, scan, options)
    prediction = probabilities > options.threshold
    subject = subject_id_from_path(scan_path)
    record = reporting.subject_record(subject, ground_truth, prediction, config.voxel_volume_ml)
    if "boundary" in config.metrics:
        # .npy volumes carry no header: cubic voxels of --voxel_volume_ml (1 mm on ATLAS).
        record.update(boundary_metrics(ground_truth, prediction, isotropic_spacing_from_voxel_volume(config.voxel_volume_ml),
                                       config.boundary_tolerance_mm))
    outcome.records.append(record)
    if small_lesion_slices is not None:
        outcome.small_lesion_truths.append(ground_truth[..., small_lesion_slices])
        outcome.small_lesion_predictions.append(prediction[..., small_lesion_slices])
    if config.do_visualize_predictions:
        scan_array = np.asarray(scan)
        for slice_index in np.flatnonzero((ground_truth | prediction).reshape(-1, scan.shape[-1]).any(axis=0)):
            save_slice_panel(
                scan_array[..., slice_index], ground_truth[..., slice_index], prediction[..., slice_index],
                output / "visualizations" / subject / f"{subject}_slice{slice_index:03d}.png",
                title=f"{subject} slice {slice_index}",
            )
    if config.save_prediction_nifti:
        save_prediction_nifti(prediction, output / "predictions" / f"{subject}_lesion_mask.nii.gz", config.reference_nifti)
    # Montages are drawn for every subject while its volume is at hand; the report links the worst five.
    outcome.montages[subject] = save_overlay_montage(
        np.asarray(scan), prediction, output / "montages" / f"{subject}.png", ground_truth, title=subject
    )


def report_evaluation(config: EvaluateConfig, outcome: VolumeOutcomes, slices_given: bool, seconds: float,
                      output: Path, method: str) -> dict:
    """Table 3 pooled over the given slices (if any), the worst subjects' montages kept, then every
    output written (:func:`spinseg.evaluation.reporting.write_evaluation_outputs`)."""
    records = outcome.records
    table3 = None
    if slices_given and outcome.small_lesion_truths:
        table3 = pooled_release_metrics(outcome.small_lesion_truths, outcome.small_lesion_predictions)
    worst = {record["subject_id"]: outcome.montages[record["subject_id"]] for record in reporting.worst_subjects(records)}
    for subject, path in outcome.montages.items():
        if subject not in worst:
            Path(path).unlink(missing_ok=True)

    heading = [f"{len(records)} subjects, {seconds:.1f} s ({seconds / max(len(records), 1):.1f} s per volume)"]
    # Spread over subjects: the bootstrap interval of the pooled Table 3 DSC.
    interval = small_lesion_dice_interval(records, outcome.small_lesion_truths, outcome.small_lesion_predictions)
    if not np.isnan(interval[0]):
        heading.append(f"Table 3 DSC 95% bootstrap interval over subjects: [{interval[0]:.3f}, {interval[1]:.3f}]")
    written = reporting.write_evaluation_outputs(
        output, records, method, config.metrics, heading, small_lesion_row=table3, montage_paths=worst,
    )
    table2, table3 = written["table2"], written["table3"]
    if table3 is not None:
        table3 = {**table3, "dice_interval_95": interval}
    return {"table2": table2, "table3": table3, "records": records, "output_path": str(output), "seconds": seconds}


def small_lesion_dice_interval(records: list[dict], small_gts: list, small_preds: list) -> list[float]:
    """95% bootstrap interval over subjects of the pooled small-lesion DSC, from listed slices or records."""
    from spinseg.evaluation.metrics import bootstrap_interval, confusion_counts, pooled_dice_of_counts

    if small_gts:
        counts = [confusion_counts(gt, pred)[:3] for gt, pred in zip(small_gts, small_preds)]
    else:
        keys = ("small_lesion_true_positive_voxels", "small_lesion_false_positive_voxels", "small_lesion_false_negative_voxels")
        counts = [tuple(int(record[key]) for key in keys) for record in records]
    columns = [np.array(column) for column in zip(*counts)]
    return list(bootstrap_interval(columns, pooled_dice_of_counts))



def inference_options(config: EvaluateConfig, normalization: Normalization, device) -> InferenceOptions:
    """The evaluation's inference: prepared model and background skipping, or the plain path with ``--plain_inference``."""
    return InferenceOptions(
        normalization=normalization, n_chunk=config.n_chunk, batch_size=config.batch_size, device=device, amp=config.amp,
        test_time_flip=config.test_time_flip, prepare=not config.plain_inference, skip_background=not config.plain_inference,
        threshold=config.threshold,
    )


def read_small_lesion_slices(path: str, n_subjects: int) -> list[np.ndarray]:
    """Reads a list file whose line k names subject k's slice-index file (.npy or .txt)."""
    from spinseg.data.volumes import read_path_list

    entries = read_path_list(path)
    if len(entries) != n_subjects:
        raise fail(path, f"{len(entries)} entries, but the scan list has {n_subjects}")
    slices = []
    for entry in entries:
        try:
            if entry.endswith(".npy"):
                check_npy_file(entry)
                values = np.load(entry, allow_pickle=False)
            else:
                values = np.loadtxt(entry, dtype=np.int64, ndmin=1)
            values = np.asarray(values)
            if values.dtype.kind not in "iu":
                raise ValueError(f"expected whole numbers, found dtype {values.dtype}")
        except UserInputError:
            raise
        except Exception as error:  # noqa: BLE001 - any parse failure is the file's fault
            raise fail(entry, f"unreadable slice-index file ({(str(error).splitlines() or [type(error).__name__])[0][:120]})") from None
        slices.append(values.astype(np.int64).reshape(-1))
    return slices


def check_slice_indices(slices: list[np.ndarray], scan_paths: list[str], list_path: str) -> None:
    """A negative index silently scored another slice, a too large one crashed; both are
    refused (one line naming the list, the line and the index) before any work."""
    for line_number, (indices, scan_path) in enumerate(zip(slices, scan_paths), start=1):
        depth = load_volume(scan_path).shape[-1]
        bad = indices[(indices < 0) | (indices >= depth)]
        if bad.size:
            raise fail(list_path, f"line {line_number}: slice index {int(bad[0])} outside 0..{depth - 1} of {scan_path}")


def evaluate_images(config: EvaluateConfig, model, options: InferenceOptions, image_paths, ground_truth_paths, output: Path,
                    method: str) -> dict:
    """2-D RGB data sets (GLaS, RITE): per-image DSC, IOU, precision, recall, averaged over images.

    Predictions are made on the stored image and resized to the ground truth's size, so scoring
    against the original-size masks works when setup resized the images.
    """
    from spinseg.evaluation.metrics import mean_over_subjects, release_metrics

    records = []
    started = time.time()
    for image_path, ground_truth_path in zip(image_paths, ground_truth_paths):
        image, ground_truth = load_image(image_path), np.asarray(load_mask(ground_truth_path)) > 0
        probabilities = predict_image(model, np.asarray(image), options, output_shape=ground_truth.shape)
        prediction = probabilities > options.threshold
        name = Path(image_path).stem
        records.append({"subject_id": name, **release_metrics(ground_truth, prediction)})
        if config.do_visualize_predictions:
            grey = np.asarray(image, dtype=np.float32).mean(axis=-1)
            if grey.shape != ground_truth.shape:
                from spinseg.data.images import resize_probabilities

                grey = resize_probabilities(grey, ground_truth.shape)
            save_slice_panel(grey, ground_truth, prediction, output / "visualizations" / f"{name}.png", title=name)
    seconds = time.time() - started
    table = mean_over_subjects(records, keys=("dice", "iou", "precision", "recall"))
    text = "\n".join([
        f"{len(records)} images, {seconds:.1f} s", "",
        "Per-image metrics, mean over images:", reporting.format_table2_header(), reporting.format_table2_row(method, table), "",
    ])
    print(text, flush=True)
    write_text(output / "results.txt", text + "\n")
    write_json(output / "per_image.json", records)
    return {"table2": table, "table3": None, "records": records, "output_path": str(output), "seconds": seconds}

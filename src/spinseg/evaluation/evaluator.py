"""Evaluation behind ``python -m spinseg.evaluate``: Tables 2 and 3 and the lesion-level report."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from spinseg.acceleration.inference import predict_volume_fast, prepare_inference_model
from spinseg.data.images import is_rgb_image_file, load_image, load_mask, predict_image
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
from spinseg.inference.predictor import predict_volume
from spinseg.io.figures import save_overlay_montage, save_slice_panel
from spinseg.io.files import write_json, write_text
from spinseg.io.progress import progress_bar
from spinseg.recipes.config import EvaluateConfig
from spinseg.recipes.preprocessing import flags_of, load_with_preprocessing, with_preprocessing
from spinseg.training.runtime import select_device

KNOWN_METRIC_GROUPS = ("release", "challenge", "size", "boundary")


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


def evaluate(config: EvaluateConfig) -> dict:
    """Evaluates a checkpoint on a list of volumes; prints and writes Table 2/3 rows and the report.

    Returns {"table2": {...}, "table3": {...} | None, "records": [...], "output_path": str}.
    """
    unknown = sorted(set(config.metrics) - set(KNOWN_METRIC_GROUPS))
    if unknown:
        raise UserInputError(f"--metrics: unknown group(s) {', '.join(unknown)}; choose from {', '.join(KNOWN_METRIC_GROUPS)}")
    if not config.restore_path:
        raise UserInputError("--restore_path: give the checkpoint to evaluate")
    device = select_device(config.device)
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
    output = Path(config.output_path)
    method = config.method_name or config.model_name.upper().replace("SPIN", "SPiN")
    if is_rgb_image_file(scan_paths[0]):
        return evaluate_images(config, model, normalization, device, scan_paths, ground_truth_paths, output, method)
    # Every volume is checked before the first output is written.
    check_volume_pairs(scan_paths, ground_truth_paths)
    if not config.plain_inference:
        model = prepare_inference_model(model)

    records, montages, small_gts, small_preds = [], {}, [], []
    started = time.time()
    for index, (scan_path, ground_truth_path) in enumerate(progress_bar(list(zip(scan_paths, ground_truth_paths)), desc="evaluate")):
        scan, ground_truth = load_volume(scan_path), load_volume(ground_truth_path)
        check_same_shape(scan, scan_path, ground_truth, ground_truth_path)
        ground_truth = np.asarray(ground_truth) > 0
        probabilities = volume_probabilities(model, scan, config, normalization, device)
        prediction = probabilities > config.threshold
        subject = subject_id_from_path(scan_path)
        record = reporting.subject_record(subject, ground_truth, prediction, config.voxel_volume_ml)
        if "boundary" in config.metrics:
            # .npy volumes carry no header: cubic voxels of --voxel_volume_ml (1 mm on ATLAS).
            record.update(boundary_metrics(ground_truth, prediction, isotropic_spacing_from_voxel_volume(config.voxel_volume_ml),
                                           config.boundary_tolerance_mm))
        records.append(record)
        if small_lesion_slices is not None:
            slices = small_lesion_slices[index]
            small_gts.append(ground_truth[..., slices])
            small_preds.append(prediction[..., slices])
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
        montages[subject] = save_overlay_montage(
            np.asarray(scan), prediction, output / "montages" / f"{subject}.png", ground_truth, title=subject
        )
    seconds = time.time() - started

    table3 = None
    if small_lesion_slices is not None and small_gts:
        table3 = pooled_release_metrics(small_gts, small_preds)
    worst = {record["subject_id"]: montages[record["subject_id"]] for record in reporting.worst_subjects(records)}
    for subject, path in montages.items():
        if subject not in worst:
            Path(path).unlink(missing_ok=True)

    heading = [f"{len(records)} subjects, {seconds:.1f} s ({seconds / max(len(records), 1):.1f} s per volume)"]
    written = reporting.write_evaluation_outputs(
        output, records, method, config.metrics, heading, small_lesion_row=table3, montage_paths=worst,
    )
    table2, table3 = written["table2"], written["table3"]
    return {"table2": table2, "table3": table3, "records": records, "output_path": str(output), "seconds": seconds}


def volume_probabilities(model, scan: np.ndarray, config: EvaluateConfig, normalization, device) -> np.ndarray:
    """Lesion probabilities (H, W, D) of one volume by the optimised path, or the plain one if asked."""
    if config.plain_inference:
        return predict_volume(model, scan, config.n_chunk, normalization, config.batch_size, device,
                              config.test_time_flip, config.amp)
    probabilities, _ = predict_volume_fast(model, scan, config.n_chunk, normalization, config.batch_size, device,
                                           amp=config.amp, test_time_flip=config.test_time_flip)
    return probabilities


def read_small_lesion_slices(path: str, n_subjects: int) -> list[np.ndarray]:
    """Reads a list file whose line k names subject k's slice-index file (.npy or .txt)."""
    from spinseg.data.volumes import read_path_list

    entries = read_path_list(path)
    if len(entries) != n_subjects:
        raise fail(path, f"{len(entries)} entries, but the scan list has {n_subjects}")
    slices = []
    for entry in entries:
        try:
            values = np.load(entry) if entry.endswith(".npy") else np.loadtxt(entry, dtype=np.int64, ndmin=1)
        except (OSError, ValueError) as error:
            raise fail(entry, f"unreadable slice-index file ({error})") from None
        slices.append(np.asarray(values, dtype=np.int64).reshape(-1))
    return slices


def evaluate_images(config: EvaluateConfig, model, normalization, device, image_paths, ground_truth_paths, output: Path, method: str) -> dict:
    """2-D RGB data sets (GLaS, RITE): per-image DSC, IOU, precision, recall, averaged over images.

    Predictions are made on the stored image and resized to the ground truth's size, so scoring
    against the original-size masks works when setup resized the images.
    """
    from spinseg.evaluation.metrics import mean_over_subjects, release_metrics

    records = []
    started = time.time()
    for image_path, ground_truth_path in zip(image_paths, ground_truth_paths):
        image, ground_truth = load_image(image_path), np.asarray(load_mask(ground_truth_path)) > 0
        probabilities = predict_image(model, np.asarray(image), normalization, device, output_shape=ground_truth.shape,
                                      test_time_flip=config.test_time_flip, amp=config.amp)
        prediction = probabilities > config.threshold
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

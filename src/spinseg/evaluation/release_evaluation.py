"""``python -m spinseg.evaluate --preset NAME``: one method scored as the release scored it.

The preset (:mod:`spinseg.recipes.release_presets`) prepares the inputs, picks the scoring grid and the
threshold; Table 2 averages per-subject metrics on that grid; Table 3 takes the small-lesion slices of
the full-resolution ground truth (or of ``--small_lesion_slices_path``), as the release's index file
did, and aggregates them as that method's script did (pooled, or per subject then averaged).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from spinseg.recipes.release_inputs import ground_truth_on_grid, mask_from_probabilities, model_inputs
from spinseg.data.volumes import check_same_shape, check_volume_pairs, load_volume, read_paired_lists
from spinseg.evaluation import reporting
from spinseg.evaluation.metrics import (
    RELEASE_METRIC_KEYS,
    bootstrap_interval,
    confusion_counts,
    metrics_from_counts,
    pooled_dice_of_counts,
    small_lesion_slice_indices,
)
from spinseg.io.files import write_json, write_text
from spinseg.models.checkpoint import load_model
from spinseg.models.model_config import check_model_config, model_input_config, parse_model_config
from spinseg.recipes import release_presets
from spinseg.recipes.config import EvaluateConfig
from spinseg.runtime.distributed import select_device


def load_preset_model(config: EvaluateConfig, preset: release_presets.ReleasePreset, device) -> torch.nn.Module:
    """The checkpoint of ``config.restore_path`` built for the preset's model and input width."""
    given_config = parse_model_config(config.model_config)
    check_model_config(preset.name, given_config)
    model_config = {**preset.model_config, **given_config}
    model_config = model_input_config(preset.name, preset.n_slices, 1, model_config)
    return load_model(config.restore_path, preset.name, **model_config).to(device).eval()


@torch.inference_mode()
def preset_probabilities(model, inputs: np.ndarray, batch_size: int, device) -> np.ndarray:
    """(D, C, h, w) prepared inputs -> (D, h, w) lesion probabilities (sigmoid of the one logit)."""
    outputs = []
    for start in range(0, len(inputs), batch_size):
        batch = torch.from_numpy(inputs[start : start + batch_size]).to(device)
        outputs.append(torch.sigmoid(model(batch).float())[:, 0].cpu().numpy())
    return np.concatenate(outputs)


def small_lesion_row(counts: list[tuple[int, int, int]], aggregation: str) -> dict | None:
    """Table 3 from per-subject small-lesion voxel counts (tp, fp, fn), pooled or averaged over subjects.

    Returns dict(dice, iou, precision, recall, subjects, dice_interval_95) or None without small lesions.
    """
    counts = [one for one in counts if sum(one) > 0]
    if not counts:
        return None
    tp, fp, fn = (np.array(column) for column in zip(*counts))
    if aggregation == release_presets.SUBJECT_MEAN:
        per_subject = [metrics_from_counts(*one) for one in counts]
        row = {key: float(np.mean([values[key] for values in per_subject])) for key in RELEASE_METRIC_KEYS}
        dice = np.array([values["dice"] for values in per_subject])
        interval = bootstrap_interval((dice,), np.mean)
    else:
        row = metrics_from_counts(int(tp.sum()), int(fp.sum()), int(fn.sum()))
        interval = bootstrap_interval((tp, fp, fn), pooled_dice_of_counts)
    return {**row, "subjects": len(counts), "dice_interval_95": list(interval)}


def subject_on_grid(model, preset, scan, ground_truth, small_slices, config: EvaluateConfig, device):
    """(ground truth, prediction) on the preset's grid, and the small-lesion counts (tp, fp, fn)."""
    probabilities = preset_probabilities(model, model_inputs(scan, preset), config.batch_size, device)
    prediction = mask_from_probabilities(probabilities, preset)
    grid_truth = ground_truth_on_grid(ground_truth, preset)
    if small_slices is None:
        small_slices = small_lesion_slice_indices(ground_truth)
    true_positives, false_positives, false_negatives, _ = confusion_counts(
        grid_truth[..., small_slices], prediction[..., small_slices]
    )
    return grid_truth, prediction, (true_positives, false_positives, false_negatives)


def evaluate_with_preset(config: EvaluateConfig) -> dict:
    """Evaluates ``config.restore_path`` with the preset ``config.preset``; prints and writes Tables 2/3."""
    from spinseg.errors import UserInputError
    from spinseg.evaluation.evaluator import read_small_lesion_slices, subject_id_from_path

    preset = release_presets.preset(config.preset)
    if not config.restore_path:
        raise UserInputError("--restore_path: give the checkpoint to evaluate")
    device = select_device(config.device)
    scan_paths, ground_truth_paths = read_paired_lists(config.multimodal_scan_paths, config.ground_truth_path)
    listed = read_small_lesion_slices(config.small_lesion_slices_path, len(scan_paths)) if config.small_lesion_slices_path else None
    check_volume_pairs(scan_paths, ground_truth_paths)
    model = load_preset_model(config, preset, device)
    records, small_counts, started = [], [], time.time()
    for index, (scan_path, ground_truth_path) in enumerate(zip(scan_paths, ground_truth_paths)):
        scan, ground_truth = load_volume(scan_path), load_volume(ground_truth_path)
        check_same_shape(scan, scan_path, ground_truth, ground_truth_path)
        grid_truth, prediction, counts = subject_on_grid(
            model, preset, np.asarray(scan), np.asarray(ground_truth) > 0, None if listed is None else listed[index],
            config, device,
        )
        record = reporting.subject_record(subject_id_from_path(scan_path), grid_truth, prediction, config.voxel_volume_ml)
        record.update(release_small_lesion_true_positive_voxels=counts[0], release_small_lesion_false_positive_voxels=counts[1],
                      release_small_lesion_false_negative_voxels=counts[2])
        records.append(record)
        small_counts.append(counts)
    seconds = time.time() - started
    table2 = reporting.release_row_from_records(records)
    table3 = small_lesion_row(small_counts, preset.small_lesion_aggregation)
    text = preset_report(preset, records, table2, table3, seconds)
    print(text, flush=True)
    output = Path(config.output_path)
    write_text(output / "results.txt", text + "\n")
    write_json(output / "per_subject.json", records)
    write_json(output / "tables.json", {"preset": preset.name, "table2": table2, "table3": table3})
    return {"table2": table2, "table3": table3, "records": records, "output_path": str(output), "seconds": seconds}


def preset_report(preset, records: list[dict], table2: dict, table3: dict | None, seconds: float) -> str:
    """The printed summary: what was done, Table 2 and Table 3 rows, Table 3's bootstrap interval."""
    lines = [f"{len(records)} subjects, {seconds:.1f} s; preset {preset.name}: {preset.intensity}, "
             f"{preset.n_slices} slice(s), scored on {preset.scored_on}, probability "
             f"{'>=' if preset.threshold_inclusive else '>'} {preset.threshold}", "",
             "Table 2 (per-subject 3-D metrics, mean over subjects):", reporting.format_table2_header(),
             reporting.format_table2_row(preset.display_name, table2), ""]
    if table3 is None:
        return "\n".join(lines + ["Table 3: no small-lesion slices in these subjects"])
    low, high = table3["dice_interval_95"]
    lines += [f"Table 3 (small-lesion slices, {preset.small_lesion_aggregation.replace('_', ' ')}):",
              reporting.format_table2_header(), reporting.format_table2_row(preset.display_name, table3),
              f"Table 3 DSC 95% bootstrap interval over {table3['subjects']} subjects: [{low:.3f}, {high:.3f}]"]
    return "\n".join(lines)

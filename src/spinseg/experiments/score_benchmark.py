"""``python -m spinseg.score --benchmark``: seconds to score one ATLAS-sized pair with every metric.

A synthetic 197 x 233 x 189 pair at 1 mm (lesions of 1 to ~30,000 voxels; the prediction misses some,
shifts and grows others and adds false positives) is written as NIfTI to a temporary folder and scored
the way ``spinseg.score`` scores a pair: read and check both files, the release/challenge/size record, the
boundary metrics. The first pair pays the one-off import of MONAI; the figure to quote is the second.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from spinseg.constants import ATLAS_SHAPE


def synthetic_pair(shape=ATLAS_SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth, prediction) uint8 (X, Y, Z) volumes with lesions of many sizes and imperfect overlap."""
    rng = np.random.default_rng(seed)
    ground_truth = np.zeros(shape, np.uint8)
    prediction = np.zeros(shape, np.uint8)
    grid = np.ogrid[tuple(slice(0, size) for size in shape)]
    for radius in (1, 1, 2, 2, 3, 4, 6, 9, 14, 19):
        centre = [int(rng.integers(radius + 2, size - radius - 2)) for size in shape]
        ball = sum((axis - middle) ** 2 for axis, middle in zip(grid, centre)) <= radius**2
        ground_truth[ball] = 1
        if rng.random() < 0.8:  # most lesions are found, shifted by a voxel and a little larger
            shifted = [middle + int(rng.integers(-1, 2)) for middle in centre]
            prediction[sum((axis - middle) ** 2 for axis, middle in zip(grid, shifted)) <= (radius + 1) ** 2] = 1
    for _ in range(5):  # false positives
        centre = [int(rng.integers(5, size - 5)) for size in shape]
        prediction[tuple(slice(middle - 1, middle + 2) for middle in centre)] = 1
    return ground_truth, prediction


def _timed_pair(prediction_path: Path, ground_truth_path: Path, config) -> dict[str, float]:
    """Wall seconds of each stage of scoring one pair (read: open, check, voxels; voxel+lesion metrics;
    boundary), and the process's CPU seconds for all of them (less sensitive to a shared machine)."""
    from spinseg.evaluation import reporting
    from spinseg.evaluation.boundary_metrics import boundary_metrics
    from spinseg.evaluation.scoring import check_same_grid, header_spacing, read_mask
    from spinseg.inference.scan import load_scan

    started, started_cpu = time.perf_counter(), time.process_time()
    prediction_image, ground_truth_image = load_scan(prediction_path), load_scan(ground_truth_path)
    check_same_grid(prediction_path, ground_truth_path, prediction_image, ground_truth_image)
    prediction = read_mask(prediction_path, prediction_image, config.threshold, config.label)
    ground_truth = read_mask(ground_truth_path, ground_truth_image, config.threshold, config.label)
    spacing, voxel_volume_ml = header_spacing(ground_truth_image)
    read = time.perf_counter()
    reporting.subject_record("benchmark", ground_truth, prediction, voxel_volume_ml)
    voxel_and_lesion = time.perf_counter()
    boundary_metrics(ground_truth, prediction, spacing, config.tolerance_mm)
    boundary = time.perf_counter()
    return {"read": read - started, "voxel_and_lesion": voxel_and_lesion - read, "boundary": boundary - voxel_and_lesion,
            "total": boundary - started, "cpu": time.process_time() - started_cpu}


def run_score_benchmark(tolerance_mm: float) -> dict[str, float]:
    """Writes the synthetic pair, scores it twice and prints the stages; returns the second run's seconds."""
    import os

    import nibabel

    from spinseg.evaluation.scoring import ScoreConfig
    from spinseg.inference.scan import TEMPLATE_FALLBACK_AFFINE

    config = ScoreConfig(tolerance_mm=tolerance_mm)
    ground_truth, prediction = synthetic_pair()
    with tempfile.TemporaryDirectory() as scratch:
        paths = {}
        for name, volume in (("prediction", prediction), ("ground_truth", ground_truth)):
            paths[name] = Path(scratch) / f"{name}.nii.gz"
            nibabel.save(nibabel.Nifti1Image(volume, TEMPLATE_FALLBACK_AFFINE), paths[name])
        first = _timed_pair(paths["prediction"], paths["ground_truth"], config)
        second = _timed_pair(paths["prediction"], paths["ground_truth"], config)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"score benchmark: one {'x'.join(map(str, ground_truth.shape))} pair (.nii.gz), all metrics, "
          f"OMP_NUM_THREADS={threads}, {os.cpu_count()} CPUs visible")
    print(f"  {second['total']:.2f} s per pair ({second['cpu']:.2f} s of CPU time): read + check {second['read']:.2f} s, release/challenge/size "
          f"{second['voxel_and_lesion']:.2f} s, HD95/ASSD/NSD {second['boundary']:.2f} s")
    print(f"  first pair of a run {first['total']:.2f} s (includes importing MONAI and torch: boundary {first['boundary']:.2f} s)")
    return second

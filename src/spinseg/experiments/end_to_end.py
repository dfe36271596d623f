"""Predict end to end, as a user runs it, against the release's own slice loop (``benchmark --end_to_end``).

One synthetic ATLAS subject (:func:`spinseg.datasets.synthetic.generate_subject`, seed 3) is
written twice:

* **native**: moved by a seeded random affine (rotations up to 15°, shifts up to 30 mm, scale
  ±10%), sampled on a scanner's sagittal 1 mm grid (176 × 256 × 256, LIA), intensities × 12;
* **MNI**: on the MNI152 2009 grid (197 × 233 × 189) in ATLAS's intensity units, as a registered
  ATLAS scan is.

Three programs, each a fresh process timed by the wall clock from start to exit (Python start,
imports, model load, reading, [registration], segmentation, writing the mask and, for ours, the
report, lesion table and QC picture), run in turn ``repeats`` times (A B C A B C ...) so that a
change of load hits all three alike:

* ``register``: ``python -m spinseg.predict --register`` on the native scan;
* ``plain``: ``python -m spinseg.predict`` on the MNI scan (no registration);
* ``release_loop``: the release's own loop (:mod:`spinseg.experiments.release_loop`) on the same
  MNI scan, with the same checkpoint.

The speed-up is ``release_loop`` over ``plain`` (same volume, same weights); the two masks are
compared voxel by voxel, so a faster path that computes something else cannot pass. predict's
template-head cache (:func:`spinseg.inference.registration.cached_template_images`) is kept in the
run's own folder and built by the first program run, as on a user's first predict.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from spinseg.datasets.native_scans import random_affine, sagittal_scanner_scan
from spinseg.datasets.synthetic import generate_subject

PROGRAMS = ("register", "plain", "release_loop")
NATIVE_SHAPE = (176, 256, 256)
# --quick: a 3 mm native grid of the same head, so that registration and the tests stay short.
QUICK_NATIVE_SHAPE, QUICK_VOXEL_MM = (60, 86, 86), 3.0
INTENSITY_FACTOR = 12.0
# --quick: SPiN at small widths, so that three passes over 189 full slices take seconds.
QUICK_SPIN_WIDTHS = {
    "n_filters_encoder_subpixel_embedding": [4, 4, 4], "output_channels_subpixel_embedding": 4,
    "n_filter_decoder_subpixel_embedding": 4, "n_filters_encoder_segmentation": [8, 8, 12, 12, 16],
    "n_filters_subpixel_guidance": [4, 4], "n_filters_decoder_segmentation": [16, 12, 12, 8, 8, 4],
    "n_filters_learnable_downsampler": [4, 4],
}


def write_checkpoint(directory: Path, quick: bool = False, seed: int = 0) -> str:
    """A SPiN checkpoint with seeded random weights (speed does not depend on the weights): paper size,
    or :data:`QUICK_SPIN_WIDTHS` with ``quick``; returns its path."""
    import torch

    from spinseg.models.checkpoint import save_checkpoint
    from spinseg.models.registry import build_model

    torch.manual_seed(seed)
    path = directory / "spin_random.pth"
    save_checkpoint(path, build_model("spin", **(QUICK_SPIN_WIDTHS if quick else {})))
    return str(path)


def write_inputs(directory: Path, quick: bool = False, seed: int = 3) -> dict[str, Path]:
    """Writes the native and the MNI scan of one synthetic subject; returns their paths."""
    subject = generate_subject(0, seed=seed)
    moving = random_affine(np.random.default_rng(seed))
    shape, voxel_mm = (QUICK_NATIVE_SHAPE, QUICK_VOXEL_MM) if quick else (NATIVE_SHAPE, 1.0)
    native, native_affine = sagittal_scanner_scan(subject["t1"], subject["affine"], moving, shape, voxel_mm)
    paths = {"native": directory / "native_t1.nii.gz", "mni": directory / "mni_t1.nii.gz"}
    nib.save(nib.Nifti1Image(native * np.float32(INTENSITY_FACTOR), native_affine), paths["native"])
    nib.save(nib.Nifti1Image(subject["t1"].astype(np.float32), subject["affine"]), paths["mni"])
    return paths


def program_command(program: str, checkpoint: str, inputs: dict[str, Path], output: Path, model: str, n_chunk: int,
                    device: str) -> list[str]:
    """The command line a user would type for ``program`` (one of :data:`PROGRAMS`)."""
    if program == "release_loop":
        return [sys.executable, "-m", "spinseg.experiments.release_loop", "--checkpoint", checkpoint, "--model", model,
                "--input", str(inputs["mni"]), "--output", str(output / "mni_t1_lesion_mask.nii.gz"),
                "--n_chunk", str(n_chunk), "--device", device]
    scan = inputs["native"] if program == "register" else inputs["mni"]
    command = [sys.executable, "-m", "spinseg.predict", "--model", model, "--checkpoint", checkpoint, "--input", str(scan),
               "--output", str(output), "--device", device, "--overwrite"]
    return command + (["--register"] if program == "register" else [])


def timed_run(command: list[str], environment: dict | None = None) -> float:
    """Wall-clock seconds of one fresh process running ``command``; a failure raises with its output's end."""
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:4])} ... exited {completed.returncode}: "
                           f"{(completed.stdout + completed.stderr)[-1500:]}")
    return seconds


def mask_agreement(ours: Path, release: Path) -> dict:
    """Voxels where two masks differ, and their Dice (1.0 when both are empty)."""
    first = np.asarray(nib.load(ours).dataobj) > 0
    second = np.asarray(nib.load(release).dataobj) > 0
    total = int(first.sum() + second.sum())
    return {"voxels_differing": int((first != second).sum()), "lesion_voxels_ours": int(first.sum()),
            "lesion_voxels_release_loop": int(second.sum()),
            "dice": 1.0 if total == 0 else 2.0 * float((first & second).sum()) / total}


def run_end_to_end(checkpoint: str, directory: Path, repeats: int = 2, quick: bool = False, model: str = "spin",
                   n_chunk: int = 5, device: str = "cpu") -> dict:
    """Times the three programs (module docstring) ``repeats`` times each, interleaved; returns the record."""
    inputs = write_inputs(directory, quick)
    # predict's template-head cache lives in this run's folder: the first program run (register) builds it,
    # as a user's first predict on a machine does, and the user's own cache is neither used nor touched.
    environment = {**os.environ, "SPINSEG_CACHE_DIR": str(directory / "template_cache")}
    seconds: dict[str, list[float]] = {program: [] for program in PROGRAMS}
    outputs = {program: directory / f"out_{program}" for program in PROGRAMS}
    for _ in range(repeats):
        for program in PROGRAMS:
            outputs[program].mkdir(exist_ok=True)
            seconds[program].append(timed_run(program_command(program, checkpoint, inputs, outputs[program], model, n_chunk, device),
                                              environment))
    report = json.loads((outputs["register"] / "native_t1_report.json").read_text())
    record = {
        "native_shape": list(QUICK_NATIVE_SHAPE if quick else NATIVE_SHAPE),
        "native_voxel_mm": QUICK_VOXEL_MM if quick else 1.0,
        "mni_shape": list(nib.load(inputs["mni"]).shape),
        "checkpoint": checkpoint,
        "seconds": {program: {"best": min(times), "median": statistics.median(times), "all": times} for program, times in seconds.items()},
        "registration_seconds": report.get("registration", {}).get("seconds"),
        "agreement_plain_vs_release_loop": mask_agreement(outputs["plain"] / "mni_t1_lesion_mask.nii.gz",
                                                          outputs["release_loop"] / "mni_t1_lesion_mask.nii.gz"),
    }
    record["speedup_plain_vs_release_loop"] = record["seconds"]["release_loop"]["best"] / record["seconds"]["plain"]["best"]
    # Each repeat runs both programs back to back, so a repeat's ratio sees the same machine state twice;
    # on a shared machine these paired ratios spread less than the best times of either program.
    pairs = [loop / ours for loop, ours in zip(seconds["release_loop"], seconds["plain"])]
    record["speedup_per_repeat"] = pairs
    record["speedup_median_of_repeats"] = statistics.median(pairs)
    return record


def format_end_to_end(record: dict) -> list[str]:
    """Lines for the benchmark's table."""
    best = {program: record["seconds"][program]["best"] for program in PROGRAMS}
    median = {program: record["seconds"][program]["median"] for program in PROGRAMS}
    agreement = record["agreement_plain_vs_release_loop"]
    registration = record.get("registration_seconds")
    return [
        "predict end to end (fresh process each, best of the interleaved repeats, median in brackets):",
        f"  --register, native {record['native_voxel_mm']:g} mm scan {tuple(record['native_shape'])}: "
        f"{best['register']:.1f} s ({median['register']:.1f})"
        + (f", of which registration {registration:.1f} s" if registration is not None else ""),
        f"  no registration, MNI scan {tuple(record['mni_shape'])}: {best['plain']:.1f} s ({median['plain']:.1f}); "
        f"the release's slice loop on the same scan: {best['release_loop']:.1f} s ({median['release_loop']:.1f}); "
        f"speed-up {record['speedup_plain_vs_release_loop']:.2f}x (per repeat: "
        f"{', '.join(f'{ratio:.2f}x' for ratio in record['speedup_per_repeat'])}; "
        f"median {record['speedup_median_of_repeats']:.2f}x)",
        f"  masks, ours vs the release loop: {agreement['voxels_differing']} voxels differ, Dice {agreement['dice']:.4f}",
    ]

"""Whole studies: ``--input`` files, folders (recursive, ``--pattern``) or BIDS datasets -> outputs and summary.csv.

* A file: outputs go straight into ``--output``.
* A folder that is not BIDS: every file under it matching ``--pattern`` (default ``*.nii*``; our
  own outputs skipped) is a scan; its outputs go to the same relative sub-folder of ``--output``.
* A BIDS dataset (a folder holding ``dataset_description.json`` or ``sub-*`` folders): the scans are
  ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``; outputs follow BIDS-derivatives naming under
  ``<output>/derivatives/spinseg/sub-*/[ses-*/]anat/`` with a ``dataset_description.json``.

Every run writes one ``summary.csv`` (one row per scan, failed ones included; columns in
``SUMMARY_COLUMNS``, documented in docs/predict.md) next to the outputs, unless every scan failed. A scan that fails prints
one line, writes nothing and does not stop the others; the run then exits with 2.
"""
from __future__ import annotations

import contextlib
import csv
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from spinseg.errors import UserInputError, fail
from spinseg.inference import registration
from spinseg.inference.lesion_report import lesion_crops, write_lesion_csv
from spinseg.inference.native import NativePrediction, PredictSettings, predict_native
from spinseg.inference.scan import (
    OUTPUT_SUFFIXES,
    check_planned_outputs,
    estimated_output_bytes,
    is_nifti_path,
    load_scan,
    make_readable,
    scan_name,
)
from spinseg.io.files import atomic_path

SUMMARY_COLUMNS = ("scan", "input", "status", "lesion_count", "total_ml", "registered", "intensity_ratio", "warnings", "error")
BIDS_T1W = re.compile(r"^sub-[A-Za-z0-9]+(_ses-[A-Za-z0-9]+)?.*_T1w\.nii(\.gz)?$")
MNI_SPACE = "MNI152NLin2009aSym"
DERIVATIVES = Path("derivatives") / "spinseg"
DEFAULT_PATTERN = "*.nii*"
# Our outputs, skipped when a folder is searched for scans (plain and BIDS-derivative names).
OWN_OUTPUT_ENDINGS = OUTPUT_SUFFIXES + ("_mask", "_probseg")


@dataclass(frozen=True)
class ScanJob:
    """One scan to segment: where it is, what its outputs are called and where they go."""

    path: Path
    output_dir: Path
    base: str  # prefix of every output file
    bids_root: Path | None = None  # the BIDS dataset the scan comes from (None: not BIDS)

    @property
    def bids(self) -> bool:
        """True for a scan of a BIDS dataset (BIDS-derivatives output names)."""
        return self.bids_root is not None

    @property
    def name(self) -> str:
        """The scan's name in summary.csv (its file name without .nii/.nii.gz)."""
        return scan_name(self.path)


def is_bids_dataset(folder: Path) -> bool:
    """True for a folder holding ``dataset_description.json`` or ``sub-*`` sub-folders."""
    return (folder / "dataset_description.json").is_file() or any(item.is_dir() for item in folder.glob("sub-*"))


def bids_jobs(folder: Path, output_dir: Path) -> list[ScanJob]:
    """Jobs for the ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` scans of a BIDS dataset (one-line error when there is none)."""
    scans = sorted(path for pattern in ("sub-*/anat/*", "sub-*/ses-*/anat/*") for path in folder.glob(pattern)
                   if path.is_file() and BIDS_T1W.match(path.name))
    if not scans:
        raise fail(folder, "BIDS dataset holds no sub-*/[ses-*/]anat/*_T1w.nii[.gz] scan")
    root = output_dir / DERIVATIVES
    # BIDS derivatives keep the source entities and drop the suffix (_T1w): sub-01_ses-1_label-lesion_mask.nii.gz
    return [ScanJob(path, root / path.parent.relative_to(folder), scan_name(path)[: -len("_T1w")], bids_root=folder) for path in scans]


def folder_jobs(folder: Path, output_dir: Path, pattern: str) -> list[ScanJob]:
    """Jobs for the NIfTI files under ``folder`` (recursive) matching ``pattern``; our own outputs skipped."""
    scans = sorted(path for path in folder.rglob(pattern)
                   if path.is_file() and is_nifti_path(path) and not scan_name(path).endswith(OWN_OUTPUT_ENDINGS)
                   and DERIVATIVES.parts[0] not in path.relative_to(folder).parts)
    if not scans:
        raise fail(folder, "folder holds no .nii or .nii.gz files" + ("" if pattern == DEFAULT_PATTERN else f" matching {pattern!r}"))
    return [ScanJob(path, output_dir / path.parent.relative_to(folder), scan_name(path)) for path in scans]


def collect_jobs(inputs: list[str], output_dir: Path, pattern: str = DEFAULT_PATTERN) -> list[ScanJob]:
    """The scans of every ``--input`` (file, folder or BIDS dataset); one-line errors for missing or clashing inputs."""
    jobs: list[ScanJob] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            jobs.extend(bids_jobs(path, output_dir) if is_bids_dataset(path) else folder_jobs(path, output_dir, pattern))
        elif path.is_file():
            if not is_nifti_path(path):
                raise fail(path, "not a NIfTI file name (expected .nii or .nii.gz)")
            jobs.append(ScanJob(path, output_dir, scan_name(path)))
        else:
            raise fail(path, "input not found")
    unique: dict[Path, ScanJob] = {}
    for job in jobs:
        unique.setdefault(job.path.resolve(), job)
    targets: dict[Path, ScanJob] = {}
    for job in unique.values():
        target = job.output_dir / job.base
        if target in targets:
            raise fail(job.path, f"same output name as {targets[target].path}: their outputs would overwrite each other")
        targets[target] = job
    return list(unique.values())


def job_paths(job: ScanJob, settings: PredictSettings) -> dict[str, Path]:
    """The files written for a job (only those the settings ask for)."""
    wanted = {"mask", "report", "qc", "lesions"}
    wanted |= {"probability"} if settings.save_probability else set()
    wanted |= {"transform"} if settings.register else set()
    wanted |= {"mni_mask", "mni_probability"} if settings.register and settings.save_mni else set()
    return {key: path for key, path in output_names(job).items() if key in wanted}


def output_names(job: ScanJob) -> dict[str, Path]:
    """Every file a job may write, by kind (mask, probability, report, qc, lesions, transform, mni_mask,
    mni_probability): BIDS-derivatives names for BIDS input, ``<name>_...`` otherwise."""
    folder, base = job.output_dir, job.base
    if job.bids:
        names = {"mask": f"{base}_label-lesion_mask.nii.gz", "probability": f"{base}_label-lesion_probseg.nii.gz",
                 "report": f"{base}_desc-spinseg_report.json", "qc": f"{base}_desc-qc_T1w.png",
                 "lesions": f"{base}_desc-lesions_table.csv",
                 "transform": f"{base}_from-T1w_to-{MNI_SPACE}_mode-image_xfm.tfm",
                 "mni_mask": f"{base}_space-{MNI_SPACE}_label-lesion_mask.nii.gz",
                 "mni_probability": f"{base}_space-{MNI_SPACE}_label-lesion_probseg.nii.gz"}
    else:
        names = {"mask": f"{base}_lesion_mask.nii.gz", "probability": f"{base}_lesion_prob.nii.gz",
                 "report": f"{base}_report.json", "qc": f"{base}_qc.png", "lesions": f"{base}_lesions.csv",
                 "transform": f"{base}_to_mni.tfm", "mni_mask": f"{base}_mni_lesion_mask.nii.gz",
                 "mni_probability": f"{base}_mni_lesion_prob.nii.gz"}
    return {key: folder / name for key, name in names.items()}


def write_outputs(image: nib.Nifti1Image, prediction: NativePrediction, paths: dict[str, Path], title: str, qc_lesions: int) -> None:
    """Writes a scan's files all-or-nothing: temporaries first, renamed once all are complete (report last)."""
    order = ["report"] + [key for key in paths if key != "report"]
    suffixes = {"report": ".json", "qc": ".png", "lesions": ".csv", "transform": ".tfm"}
    paths["report"].parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        # ExitStack renames in reverse order of entry: entering the report first renames it last.
        temporaries = {key: stack.enter_context(atomic_path(paths[key], suffix=suffixes.get(key, ".nii.gz"))) for key in order}
        nib.save(prediction.mask_image, temporaries["mask"])
        if "probability" in paths:
            nib.save(prediction.probability_image, temporaries["probability"])
        for key in ("mni_mask", "mni_probability"):
            if key in paths:
                nib.save(prediction.template_images[key], temporaries[key])
        if "transform" in paths:
            registration.write_transform(prediction.registration, temporaries["transform"])
        write_lesion_csv(prediction.lesions, temporaries["lesions"])
        save_qc(image, prediction, temporaries["qc"], title, qc_lesions)
        temporaries["report"].write_text(json.dumps(prediction.report, indent=2) + "\n")
        for temporary in temporaries.values():
            make_readable(temporary)


def save_qc(image: nib.Nifti1Image, prediction: NativePrediction, path: Path, title: str, qc_lesions: int) -> None:
    """QC PNG: axial slices of the scan's grid (closest RAS) with the mask in red, then a zoomed crop per lesion."""
    from spinseg.io.figures import save_overlay_montage

    affine = np.asarray(image.affine, dtype=float)
    shape = tuple(int(n) for n in image.shape[:3])
    scan = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape), affine))
    mask = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(prediction.mask_image.dataobj, np.uint8).reshape(shape), affine))
    to_ras = np.linalg.inv(scan.affine) @ affine
    crops = lesion_crops(np.asarray(scan.dataobj), np.asarray(mask.dataobj), scan.affine, prediction.lesions,
                         lambda voxel: to_ras[:3, :3] @ voxel + to_ras[:3, 3], qc_lesions)
    save_overlay_montage(np.asarray(scan.dataobj), np.asarray(mask.dataobj), path, count=12, title=title, crops=crops)


def write_dataset_description(root: Path, sources: list[str]) -> None:
    """``dataset_description.json`` of the BIDS-derivatives folder (written once, atomically)."""
    from importlib import metadata

    try:
        version = metadata.version("spinseg")
    except metadata.PackageNotFoundError:
        version = "unknown"
    description = {"Name": "spinseg lesion segmentation", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                   "GeneratedBy": [{"Name": "spinseg", "Version": version}], "SourceDatasets": [{"URL": source} for source in sources]}
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(root / "dataset_description.json", suffix=".json") as temporary:
        temporary.write_text(json.dumps(description, indent=2) + "\n")
        make_readable(temporary)


class ScanPrefetch:
    """Reads the scans of a run one ahead, in a background thread: ``image(index)`` -> the opened scan, voxels read.

    Reading a 1 mm scan is mostly gzip decompression (~0.3 s), which runs outside Python's lock;
    started before the model is loaded, the first read overlaps the model load and preparation
    (single-threaded) instead of adding to them; each later read runs while the previous scan is
    segmented. A scan that cannot be read raises its one-line error when its turn comes.
    """

    def __init__(self, jobs: list[ScanJob]):
        from concurrent.futures import ThreadPoolExecutor

        self.paths = [job.path for job in jobs]
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spinseg-read")
        self.futures = {}
        self._submit(0)

    def _submit(self, index: int) -> None:
        if index < len(self.paths) and index not in self.futures:
            self.futures[index] = self.executor.submit(read_scan, self.paths[index])

    def image(self, index: int) -> nib.Nifti1Image:
        """The scan ``index`` (of the jobs given), opened and with its voxels read; starts reading the next one."""
        self._submit(index)
        future = self.futures.pop(index)
        self._submit(index + 1)
        return future.result()

    def close(self) -> None:
        """Stops reading ahead (a read in progress finishes; its result is dropped)."""
        for future in self.futures.values():
            future.cancel()
        self.executor.shutdown(wait=True)


def read_scan(path: Path) -> nib.Nifti1Image:
    """:func:`spinseg.inference.scan.load_scan` plus reading its voxels as float32 (kept in nibabel's cache,
    where :func:`spinseg.inference.scan.scan_data` finds them); a file that cannot be decoded is left to
    ``scan_data``, which names the problem."""
    image = load_scan(path)
    with contextlib.suppress(Exception):
        image.get_fdata(dtype=np.float32)
    return image


def run_study(model, jobs: list[ScanJob], output_dir: Path, settings: PredictSettings, report_extra: dict | None = None,
              warn_line=None, overwrite: bool = False, prefetch: ScanPrefetch | None = None) -> list[dict]:
    """Segments every job, writes its outputs and one ``summary.csv``; returns the summary rows.

    Before any work: no output may be one of the inputs, an existing output is refused unless
    ``overwrite``, and the folder must be writable with room (:func:`spinseg.inference.scan.check_planned_outputs`).

    A failing scan (unreadable, 2-D/4-D, failed registration, ...) prints its one-line error,
    writes nothing and does not stop the others (its row says ``failed``). Scans are read one
    ahead (``prefetch``: one made for ``jobs`` earlier, e.g. before the model was loaded; else one is made here).
    """
    from spinseg.errors import warn as default_warn
    from spinseg.io.progress import progress_bar

    warn_line = warn_line or default_warn
    summary_root = output_dir / DERIVATIVES if jobs and all(job.bids for job in jobs) else output_dir
    planned = [target for job in jobs for target in job_paths(job, settings).values()] + [summary_root / "summary.csv"]
    bytes_needed = sum(estimated_output_bytes(job.path, settings.save_probability or settings.save_mni) for job in jobs)
    check_planned_outputs([job.path for job in jobs], planned, output_dir, overwrite, bytes_needed)
    if any(job.bids for job in jobs):
        write_dataset_description(output_dir / DERIVATIVES, sorted({str(job.bids_root) for job in jobs if job.bids}))
    rows = []
    prefetch = prefetch or ScanPrefetch(jobs)
    try:
        for index, job in enumerate(progress_bar(jobs, desc="predict", unit="scan")):
            rows.append(segment_job(model, job, prefetch, index, settings, report_extra, warn_line))
    finally:
        prefetch.close()
    # A run in which every scan failed leaves nothing behind (its errors were printed), as a failed scan does.
    if any(row["status"] == "ok" for row in rows):
        write_summary(rows, summary_root / "summary.csv")
    return rows


def segment_job(model, job: ScanJob, prefetch: ScanPrefetch, index: int, settings: PredictSettings,
                report_extra: dict | None, warn_line) -> dict:
    """Segments one scan of :func:`run_study` and writes its outputs; returns its summary row (``failed`` on a one-line error)."""
    warnings: list[str] = []

    def record(message: str, warnings: list[str] = warnings) -> None:
        warnings.append(message)
        warn_line(message)

    row = {"scan": job.name, "input": str(job.path), "registered": settings.register}
    try:
        image = prefetch.image(index)
        prediction = predict_native(model, image, settings, name=job.path, warn=record)
        paths = job_paths(job, settings)
        prediction.report = {"name": job.name, "input": str(job.path), **(report_extra or {}), **prediction.report,
                             "warnings": warnings,
                             "normalization": {"kind": settings.normalization.kind, "means": list(settings.normalization.means),
                                               "stddevs": list(settings.normalization.stddevs)},
                             "outputs": {key: str(value) for key, value in paths.items()}}
        title = f"{job.name}: {prediction.report['lesion_volume_ml']:.2f} ml, {prediction.report['n_lesions']} lesion(s)"
        write_outputs(image, prediction, paths, title, settings.qc_lesions)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return {**row, "status": "failed", "warnings": " | ".join(warnings), "error": str(error)}
    ratio = prediction.report["intensity"]["ratio_to_training"]
    print(f"{job.name}: {prediction.report['lesion_volume_ml']:.3f} ml in {prediction.report['n_lesions']} lesion(s) "
          f"-> {paths['mask']}", flush=True)
    return {**row, "status": "ok", "lesion_count": prediction.report["n_lesions"],
            "total_ml": prediction.report["lesion_volume_ml"], "intensity_ratio": "" if ratio is None else ratio,
            "warnings": " | ".join(warnings), "error": ""}


def write_summary(rows: list[dict], path: Path) -> None:
    """Writes ``summary.csv`` (one row per scan, ``SUMMARY_COLUMNS``) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".csv") as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=SUMMARY_COLUMNS, restval="")
            writer.writeheader()
            writer.writerows(rows)
        make_readable(temporary)

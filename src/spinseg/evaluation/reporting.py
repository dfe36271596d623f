"""Evaluation reports: per-subject records, paper-style tables, CSV, plots and a report.md tying them together.

The flow is: call :func:`subject_record` once per subject while its volumes are in memory (it keeps only
numbers and per-lesion volumes), then hand the list of records to the table, CSV, plot and report
functions. Records are plain JSON-serialisable dicts, so they can also be saved and reloaded.

Plots use matplotlib's object-oriented API on an Agg canvas (no pyplot), so nothing here changes the
global backend or leaks figures in long runs.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from spinseg.evaluation import boundary_metrics, metrics
from spinseg.io.files import atomic_path, write_json, write_text

# Scalar columns of the per-subject CSV, in order. "lesions" (per-lesion list) is left out of the CSV.
PER_SUBJECT_COLUMNS = (
    "subject_id",
    "dice",
    "iou",
    "precision",
    "recall",
    "dice_challenge",
    "lesion_f1",
    "lesion_true_positives",
    "lesion_false_positives",
    "lesion_false_negatives",
    "gt_lesion_count",
    "pred_lesion_count",
    "absolute_volume_difference_ml",
    "absolute_lesion_count_difference",
    # Boundary metrics (spinseg.metrics), present when they were asked for.
    "hd95_mm",
    "assd_mm",
    "nsd",
    "nsd_tolerance_mm",
    "boundary_one_empty",
    "gt_volume_ml",
    "pred_volume_ml",
    "true_positive_voxels",
    "false_positive_voxels",
    "false_negative_voxels",
    "small_lesion_slices",
    "small_lesion_true_positive_voxels",
    "small_lesion_false_positive_voxels",
    "small_lesion_false_negative_voxels",
    "small_lesions_2d",
    "small_lesions_2d_detected",
    "voxel_volume_ml",
    "connectivity",
)

# (record key, display name) of the challenge-style table, in the order of the ATLAS v2.0 leaderboard.
CHALLENGE_METRICS = (
    ("dice_challenge", "Dice (empty vs empty = 1)"),
    ("lesion_f1", "Lesion-wise F1"),
    ("absolute_volume_difference_ml", "Absolute volume difference (ml)"),
    ("absolute_lesion_count_difference", "Absolute lesion count difference"),
)

TABLE2_COLUMNS = ("Method", "DSC", "IOU", "Precision", "Recall")

# File names write_report produces inside its output directory.
REPORT_NAME = "report.md"
PER_SUBJECT_CSV_NAME = "per_subject.csv"
DETECTION_PLOT_NAME = "detection_vs_size.png"
VOLUME_PLOT_NAME = "volume_scatter.png"
DICE_PLOT_NAME = "dice_per_subject.png"
WORST_SUBJECT_COUNT = 5


# --------------------------------------------------------------------------------------------------
# Per-subject records
# --------------------------------------------------------------------------------------------------


def subject_record(
    subject_id: str,
    gt,
    pred,
    voxel_volume_ml: float = metrics.DEFAULT_VOXEL_VOLUME_ML,
    connectivity: int = 26,
    small_lesion_max_pixels: int = metrics.SMALL_LESION_MAX_PIXELS,
) -> dict:
    """Every metric of one subject as a JSON-serialisable dict, so the volumes can be dropped afterwards.

    ``gt``/``pred``: binary (H, W, D) volumes, axial = last axis. Holds the release metrics (dice, iou,
    precision, recall; empty denominators score 0), dice_challenge (empty vs empty = 1), lesion counts and
    lesion_f1, absolute volume (ml) and lesion-count differences, voxel counts for pooling, the Table 3
    small-lesion-slice counts, the 2-D small-lesion detection counts and ``lesions``: one
    {volume_voxels, volume_ml, detected} per gt lesion.
    """
    gt, pred = metrics.check_binary_pair(gt, pred)
    voxel_volume_ml = float(voxel_volume_ml)
    tp, fp, fn, _ = metrics.confusion_counts(gt, pred)
    record: dict = {"subject_id": str(subject_id)}
    record.update(metrics.metrics_from_counts(tp, fp, fn, metrics.RELEASE_EMPTY_SCORE))
    record["dice_challenge"] = metrics.metrics_from_counts(tp, fp, fn, metrics.CHALLENGE_EMPTY_SCORE)["dice"]

    # Labels each volume once for counts and per-lesion volumes alike.
    counts, lesions = metrics.lesion_summary(gt, pred, connectivity, voxel_volume_ml)
    record.update(
        lesion_f1=metrics.lesion_f1_from_counts(counts),
        lesion_true_positives=counts.true_positives,
        lesion_false_positives=counts.false_positives,
        lesion_false_negatives=counts.false_negatives,
        gt_lesion_count=counts.gt_lesions,
        pred_lesion_count=counts.pred_lesions,
        absolute_volume_difference_ml=abs(fp - fn) * voxel_volume_ml,
        absolute_lesion_count_difference=abs(counts.pred_lesions - counts.gt_lesions),
        gt_volume_ml=(tp + fn) * voxel_volume_ml,
        pred_volume_ml=(tp + fp) * voxel_volume_ml,
        true_positive_voxels=tp,
        false_positive_voxels=fp,
        false_negative_voxels=fn,
    )
    if gt.ndim == 3:
        small = metrics.small_lesion_counts(gt, pred, small_lesion_max_pixels)
        small_2d = metrics.detection_by_size_2d(gt, pred, small_lesion_max_pixels)
        record.update(
            small_lesion_slices=small.slices,
            small_lesion_true_positive_voxels=small.true_positives,
            small_lesion_false_positive_voxels=small.false_positives,
            small_lesion_false_negative_voxels=small.false_negatives,
            small_lesions_2d=small_2d["lesions"],
            small_lesions_2d_detected=small_2d["detected"],
        )
    record.update(voxel_volume_ml=voxel_volume_ml, connectivity=int(connectivity), lesions=lesions)
    return record


def _check_records(records: Sequence[Mapping]) -> list[Mapping]:
    """Materialises ``records`` and rejects an empty list, for which no table or plot means anything."""
    records = list(records)
    if not records:
        raise ValueError("no subject records given")
    return records


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def release_row_from_records(records: Sequence[Mapping]) -> dict[str, float]:
    """Table 2 values: release metrics averaged over subjects, dict(dice, iou, precision, recall)."""
    return metrics.mean_over_subjects(_check_records(records), keys=metrics.RELEASE_METRIC_KEYS)


def small_lesion_row_from_records(records: Sequence[Mapping]) -> dict[str, float] | None:
    """Table 3 values: voxel counts pooled over every subject's small-lesion slices, metrics computed once.

    Returns dict(dice, iou, precision, recall, slices), or None when the records carry no slice counts.
    """
    records = _check_records(records)
    if not all("small_lesion_slices" in record for record in records):
        return None
    totals = {
        key: sum(int(record[f"small_lesion_{key}_voxels"]) for record in records)
        for key in ("true_positive", "false_positive", "false_negative")
    }
    row: dict[str, float] = metrics.metrics_from_counts(
        totals["true_positive"], totals["false_positive"], totals["false_negative"]
    )
    row["slices"] = sum(int(record["small_lesion_slices"]) for record in records)
    return row


def challenge_table(records: Sequence[Mapping]) -> list[dict]:
    """Mean ± std over subjects of the challenge metrics (Dice challenge, lesion F1, AVD ml, ALCD).

    Returns one dict per metric: key, metric (display name), mean, std (population, ddof=0), subjects.
    """
    records = _check_records(records)
    rows = []
    for key, name in CHALLENGE_METRICS:
        values = np.array([float(record[key]) for record in records], dtype=np.float64)
        rows.append(
            {"key": key, "metric": name, "mean": float(values.mean()), "std": float(values.std()), "subjects": len(values)}
        )
    return rows


def size_table(records: Sequence[Mapping], bins: Sequence[int] = metrics.DEFAULT_SIZE_BINS) -> list[dict]:
    """Lesion detection by gt lesion size, pooled over subjects.

    Returns one dict per bin: label, lower_voxels, upper_voxels, lesions, detected, recall (NaN if empty).
    """
    records = _check_records(records)
    lesions = [lesion for record in records for lesion in record["lesions"]]
    return metrics.bin_detection_records(lesions, bins)


def format_markdown_table(header: Sequence, rows: Sequence[Sequence]) -> str:
    """A GitHub-flavoured markdown table (no trailing newline); cells are str()-ed and '|' escaped."""

    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = [cell(value) for value in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        row = [cell(value) for value in row]
        if len(row) != len(header):
            raise ValueError(f"row has {len(row)} cells but the header has {len(header)}: {row}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _format_value(value: float, decimals: int = 3) -> str:
    """A number with fixed decimals; NaN shows as 'n/a' rather than 'nan' in tables."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{decimals}f}"


def format_table2_header(markdown: bool = False) -> str:
    """Header of the paper's Table 2/3 layout: 'Method | DSC | IOU | Precision | Recall'.

    With ``markdown`` it is two lines (header and separator) to be followed by :func:`format_table2_row`.
    """
    if markdown:
        return format_markdown_table(TABLE2_COLUMNS, [])
    return " | ".join(TABLE2_COLUMNS)


def format_table2_row(name: str, metrics_dict: Mapping[str, float], markdown: bool = False) -> str:
    """One Table 2/3 row, e.g. 'SPiN | 0.703 | 0.555 | 0.714 | 0.680' (markdown: '| SPiN | ... |').

    ``metrics_dict`` needs dice, iou, precision and recall.
    """
    missing = [key for key in metrics.RELEASE_METRIC_KEYS if key not in metrics_dict]
    if missing:
        raise ValueError(f"metrics for {name!r} lack {missing}")
    cells = [str(name)] + [_format_value(float(metrics_dict[key])) for key in metrics.RELEASE_METRIC_KEYS]
    if markdown:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
    return " | ".join(cells)


def format_challenge_table(rows: Sequence[Mapping]) -> str:
    """Markdown of :func:`challenge_table` rows: Metric | Mean ± std | Subjects."""
    return format_markdown_table(
        ("Metric", "Mean ± std", "Subjects"),
        [(row["metric"], f"{_format_value(row['mean'])} ± {_format_value(row['std'])}", row["subjects"]) for row in rows],
    )


def format_size_table(rows: Sequence[Mapping]) -> str:
    """Markdown of :func:`size_table` rows: Lesion size (voxels) | Lesions | Detected | Recall."""
    return format_markdown_table(
        ("Lesion size (voxels)", "Lesions", "Detected", "Recall"),
        [(row["label"], row["lesions"], row["detected"], _format_value(row["recall"])) for row in rows],
    )


def format_boundary_table(rows: Sequence[Mapping]) -> str:
    """Markdown of :func:`spinseg.metrics.boundary_summary` rows: Metric | Mean ± std | Subjects | One mask empty."""
    return format_markdown_table(
        ("Metric", "Mean ± std", "Subjects", "One mask empty (excluded)"),
        [(row["metric"], f"{_format_value(row['mean'])} ± {_format_value(row['std'])}", row["subjects"], row["one_empty"])
         for row in rows],
    )


def has_boundary_metrics(records: Sequence[Mapping]) -> bool:
    """True when every record carries the boundary metrics (hd95_mm, assd_mm, nsd)."""
    return all(key in record for record in records for key in boundary_metrics.BOUNDARY_METRIC_KEYS)


def boundary_section_title(records: Sequence[Mapping]) -> str:
    """'Boundary metrics (NSD at 2 mm; ...)' naming the tolerance(s) the records were scored with."""
    tolerances = sorted({float(record.get("nsd_tolerance_mm", boundary_metrics.DEFAULT_TOLERANCE_MM)) for record in records})
    return (f"Boundary metrics (MONAI; HD95 = max of the two directed 95th percentiles; NSD at "
            f"{', '.join(f'{value:g}' for value in tolerances)} mm; mean ± std over subjects where defined)")


# --------------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------------


def write_per_subject_csv(records: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Writes one row per subject with the scalar columns of :data:`PER_SUBJECT_COLUMNS` (those present
    in every record, in that order) and returns the path. Missing values are written empty."""
    records = _check_records(records)
    columns = [column for column in PER_SUBJECT_COLUMNS if any(column in record for record in records)]
    path = Path(path)
    with atomic_path(path) as temporary:
        with open(temporary, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore", restval="")
            writer.writeheader()
            for record in records:
                writer.writerow({column: record.get(column, "") for column in columns})
    return path


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _save_figure(figure: Figure, path: str | os.PathLike) -> Path:
    """Renders ``figure`` through an Agg canvas into ``path`` atomically (format from the extension)."""
    path = Path(path)
    FigureCanvasAgg(figure)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120)
    return path


def plot_detection_vs_size(
    records_by_model: Sequence[Mapping] | Mapping[str, Sequence[Mapping]],
    path: str | os.PathLike,
    bins: Sequence[int] = metrics.DEFAULT_SIZE_BINS,
) -> Path:
    """Lesion detection rate per size bin, one curve per model; returns the path.

    ``records_by_model``: a list of subject records (one curve) or {model_name: records} to overlay models.
    Empty bins are gaps in the curve; the lesion count of each point is written beside it.
    """
    if isinstance(records_by_model, Mapping):
        models = dict(records_by_model)
    else:
        models = {"model": records_by_model}
    if not models:
        raise ValueError("no models given")
    labels = metrics.size_bin_labels(bins)
    positions = np.arange(len(labels))
    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.add_subplot()
    for name, records in models.items():
        rows = size_table(records, bins)
        recalls = np.array([row["recall"] for row in rows], dtype=np.float64)
        (line,) = axes.plot(positions, recalls, marker="o", label=str(name))
        for position, row in zip(positions, rows):
            if row["lesions"]:
                axes.annotate(
                    f"n={row['lesions']}", (position, row["recall"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7, color=line.get_color(),
                )
    axes.set_xticks(positions, labels)
    axes.set_xlabel("Ground-truth lesion volume (voxels)")
    axes.set_ylabel("Detection rate (lesion recall)")
    axes.set_ylim(-0.02, 1.08)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return _save_figure(figure, path)


def plot_volume_scatter(records: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Predicted vs true total lesion volume per subject (ml), log axes with the identity line.

    A zero volume cannot sit on a log axis, so it is drawn at half a voxel's volume with a hollow marker.
    """
    records = _check_records(records)
    true_volumes = np.array([float(record["gt_volume_ml"]) for record in records])
    predicted_volumes = np.array([float(record["pred_volume_ml"]) for record in records])
    voxel_volume = min(float(record.get("voxel_volume_ml", metrics.DEFAULT_VOXEL_VOLUME_ML)) for record in records)
    floor = voxel_volume / 2
    has_zero = (true_volumes <= 0) | (predicted_volumes <= 0)
    shown_true = np.maximum(true_volumes, floor)
    shown_predicted = np.maximum(predicted_volumes, floor)
    figure = Figure(figsize=(5, 5))
    axes = figure.add_subplot()
    axes.scatter(shown_true[~has_zero], shown_predicted[~has_zero], s=18, label="subject")
    if has_zero.any():
        axes.scatter(
            shown_true[has_zero], shown_predicted[has_zero], s=18, facecolors="none", edgecolors="tab:red",
            label=f"a volume is 0 (drawn at {floor:g} ml)",
        )
    low = float(min(shown_true.min(), shown_predicted.min())) / 1.5
    high = float(max(shown_true.max(), shown_predicted.max())) * 1.5
    axes.plot([low, high], [low, high], color="gray", linestyle="--", linewidth=1, label="identity")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_aspect("equal")
    axes.set_xlabel("True lesion volume (ml)")
    axes.set_ylabel("Predicted lesion volume (ml)")
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="upper left", fontsize=8)
    return _save_figure(figure, path)


def plot_dice_per_subject(records: Sequence[Mapping], path: str | os.PathLike) -> Path:
    """Bar chart of each subject's Dice (release convention), sorted ascending, with the mean as a line."""
    records = sorted(_check_records(records), key=lambda record: float(record["dice"]))
    dice = np.array([float(record["dice"]) for record in records])
    positions = np.arange(len(records))
    figure = Figure(figsize=(max(6.4, 0.18 * len(records) + 2), 4))
    axes = figure.add_subplot()
    axes.bar(positions, dice, color="tab:blue")
    axes.axhline(float(dice.mean()), color="tab:orange", linestyle="--", label=f"mean {dice.mean():.3f}")
    # Tick labels become unreadable beyond a few dozen subjects; the CSV has them all.
    if len(records) <= 60:
        axes.set_xticks(positions, [str(record["subject_id"]) for record in records], rotation=90, fontsize=7)
    axes.set_xlabel("Subject (sorted by Dice)")
    axes.set_ylabel("Dice")
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left")
    return _save_figure(figure, path)


# --------------------------------------------------------------------------------------------------
# report.md
# --------------------------------------------------------------------------------------------------


def _metrics_row(name: str, row: Mapping | str) -> str:
    """A markdown Table 2/3 row from a metrics mapping, or a caller's preformatted row as it is."""
    if isinstance(row, str):
        return row
    return format_table2_row(name, row, markdown=True)


def _relative_link(target: str | os.PathLike, output_dir: Path) -> str:
    """A link from report.md to ``target``: relative when possible, with '/' separators."""
    target = Path(target)
    try:
        return Path(os.path.relpath(target.resolve(), output_dir.resolve())).as_posix()
    except ValueError:
        # Different drives on Windows: no relative path exists.
        return target.resolve().as_posix()


def worst_subjects(records: Sequence[Mapping], count: int = WORST_SUBJECT_COUNT) -> list[Mapping]:
    """The ``count`` records with the lowest release Dice (ties keep input order)."""
    return sorted(_check_records(records), key=lambda record: float(record["dice"]))[:count]


def write_report(
    output_dir: str | os.PathLike,
    records: Sequence[Mapping],
    title: str,
    release_row: Mapping[str, float] | str | None = None,
    small_lesion_row: Mapping[str, float] | str | None = None,
    montage_paths: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike] = (),
    method_name: str = "SPiN",
    bins: Sequence[int] = metrics.DEFAULT_SIZE_BINS,
    notes: Sequence[str] = (),
) -> Path:
    """Writes report.md (plus per_subject.csv and three PNG plots) into ``output_dir``; returns its path.

    ``release_row``: the Table 2 metrics (dice, iou, precision, recall) or a preformatted markdown row;
    None computes it from ``records`` (mean over subjects). ``small_lesion_row``: the Table 3 metrics
    likewise; None pools the records' small-lesion-slice counts when they have them. ``montage_paths``:
    overlay images of the worst subjects, a sequence (shown in order) or {subject_id: path}; linked
    relative to ``output_dir``. ``notes``: lines shown under the subject count (e.g. unmatched subjects).
    """
    records = _check_records(records)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if release_row is None:
        release_row = release_row_from_records(records)
    if small_lesion_row is None:
        small_lesion_row = small_lesion_row_from_records(records)

    csv_path = write_per_subject_csv(records, output_dir / PER_SUBJECT_CSV_NAME)
    plots = {
        "Detection rate by lesion size": plot_detection_vs_size({method_name: records}, output_dir / DETECTION_PLOT_NAME, bins),
        "Predicted vs true lesion volume": plot_volume_scatter(records, output_dir / VOLUME_PLOT_NAME),
        "Dice per subject": plot_dice_per_subject(records, output_dir / DICE_PLOT_NAME),
    }

    lines = [f"# {title}", "", f"Subjects: {len(records)}.", ""]
    lines += [line for note in notes for line in (note, "")]
    lines += [
        "## Table 2: release metrics (3-D, per subject, mean over subjects)",
        "",
        "A metric whose denominator is zero scores 0 (the release's convention).",
        "",
        format_table2_header(markdown=True),
        _metrics_row(method_name, release_row),
        "",
    ]
    if small_lesion_row is not None:
        slices = small_lesion_row.get("slices") if isinstance(small_lesion_row, Mapping) else None
        detail = f" ({slices} slices)" if slices is not None else ""
        lines += [
            "## Table 3: small lesions (voxels pooled over small-lesion slices, metrics computed once)",
            "",
            f"Axial slices with at least one lesion and no 8-connected lesion above "
            f"{metrics.SMALL_LESION_MAX_PIXELS} pixels{detail}.",
            "",
            format_table2_header(markdown=True),
            _metrics_row(method_name, small_lesion_row),
            "",
        ]
    connectivities = sorted({int(record.get("connectivity", 26)) for record in records})
    lines += [
        "## Challenge metrics (ATLAS v2.0 / ISLES'22 style, mean ± std over subjects)",
        "",
        f"Dice scores 1 when both masks are empty; lesions are {', '.join(map(str, connectivities))}-connected "
        "components, detected when one voxel overlaps.",
        "",
        format_challenge_table(challenge_table(records)),
        "",
        "## Detection by lesion size (pooled over subjects)",
        "",
        format_size_table(size_table(records, bins)),
        "",
    ]
    if has_boundary_metrics(records):
        lines += [
            f"## {boundary_section_title(records)}",
            "",
            "Both masks empty: distances 0 and NSD 1; exactly one mask empty: no distance exists, so the subject",
            "is left out of these means and counted in the last column.",
            "",
            format_boundary_table(boundary_metrics.boundary_summary(records)),
            "",
        ]
    if all("small_lesions_2d" in record for record in records):
        small_total = sum(int(record["small_lesions_2d"]) for record in records)
        small_hits = sum(int(record["small_lesions_2d_detected"]) for record in records)
        rate = _format_value(small_hits / small_total if small_total else float("nan"))
        lines += [
            f"2-D view (per axial slice, 8-connected, ≤{metrics.SMALL_LESION_MAX_PIXELS} pixels): "
            f"{small_hits} of {small_total} small lesions detected (recall {rate}).",
            "",
        ]
    lines += ["## Plots", ""]
    for caption, plot_path in plots.items():
        lines += [f"![{caption}]({_relative_link(plot_path, output_dir)})", ""]
    lines += [f"Per-subject values: [{PER_SUBJECT_CSV_NAME}]({_relative_link(csv_path, output_dir)})", ""]

    worst = worst_subjects(records)
    lines += [
        f"## Worst {len(worst)} subjects by Dice",
        "",
        format_markdown_table(
            ("Subject", "Dice", "Lesion F1", "True volume (ml)", "Predicted volume (ml)"),
            [
                (
                    record["subject_id"],
                    _format_value(float(record["dice"])),
                    _format_value(float(record["lesion_f1"])),
                    _format_value(float(record["gt_volume_ml"]), 2),
                    _format_value(float(record["pred_volume_ml"]), 2),
                )
                for record in worst
            ],
        ),
        "",
    ]
    if isinstance(montage_paths, Mapping):
        montages = [(str(subject), montage) for subject, montage in montage_paths.items()]
    else:
        montages = [(Path(montage).stem, montage) for montage in montage_paths]
    for caption, montage in montages:
        lines += [f"![{caption}]({_relative_link(montage, output_dir)})", ""]

    report_path = output_dir / REPORT_NAME
    write_text(report_path, "\n".join(lines).rstrip("\n") + "\n")
    return report_path


# --------------------------------------------------------------------------------------------------
# Everything an evaluation writes (shared by spinseg.evaluate and spinseg.score)
# --------------------------------------------------------------------------------------------------

RESULTS_TEXT_NAME = "results.txt"
PER_SUBJECT_JSON_NAME = "per_subject.json"


def summary_lines(
    records: Sequence[Mapping],
    method_name: str,
    metric_groups: Sequence[str],
    release_row: Mapping[str, float],
    small_lesion_row: Mapping[str, float] | None,
) -> list[str]:
    """The printed summary: Table 2 and 3 rows, then the challenge, size and boundary tables asked for
    in ``metric_groups`` (any of "challenge", "size", "boundary"; the release rows are always shown)."""
    lines = ["Table 2 (per-subject 3-D metrics, mean over subjects):", format_table2_header(),
             format_table2_row(method_name, release_row), ""]
    if small_lesion_row is not None:
        lines += ["Table 3 (small-lesion slices, pooled):", format_table2_header(),
                  format_table2_row(method_name, small_lesion_row), ""]
    else:
        lines += ["Table 3: no small-lesion slices in these subjects", ""]
    if "challenge" in metric_groups:
        lines += ["Lesion-wise (ATLAS v2.0 / ISLES'22 conventions, mean ± std over subjects):",
                  format_challenge_table(challenge_table(records)), ""]
    if "size" in metric_groups:
        lines += ["Detection by lesion size (3-D lesions, 26-connected, pooled):",
                  format_size_table(size_table(records)), ""]
    if "boundary" in metric_groups and has_boundary_metrics(records):
        lines += [f"{boundary_section_title(records)}:",
                  format_boundary_table(boundary_metrics.boundary_summary(records)), ""]
    return lines


def write_evaluation_outputs(
    output_dir: str | os.PathLike,
    records: Sequence[Mapping],
    method_name: str,
    metric_groups: Sequence[str],
    heading: Sequence[str],
    small_lesion_row: Mapping[str, float] | None = None,
    montage_paths: Mapping[str, str | os.PathLike] | Sequence = (),
    title: str | None = None,
) -> dict:
    """Prints the summary and writes results.txt, per_subject.json, per_subject.csv, the plots and report.md.

    ``heading``: lines printed above the tables (and shown in report.md under the subject count).
    ``small_lesion_row``: the Table 3 row when the caller pooled it itself; None pools the records'
    small-lesion-slice counts. Returns dict(table2, table3, report_path, text).
    """
    records = _check_records(records)
    output_dir = Path(output_dir)
    release_row = release_row_from_records(records)
    shown_small_lesion_row = small_lesion_row if small_lesion_row is not None else small_lesion_row_from_records(records)
    text = "\n".join([*heading, "", *summary_lines(records, method_name, metric_groups, release_row, shown_small_lesion_row)])
    print(text, flush=True)
    write_text(output_dir / RESULTS_TEXT_NAME, text + "\n")
    write_json(output_dir / PER_SUBJECT_JSON_NAME, list(records))
    report_path = write_report(
        output_dir, records, title or f"{method_name} evaluation", release_row=release_row,
        small_lesion_row=small_lesion_row, montage_paths=montage_paths, method_name=method_name, notes=heading[1:],
    )
    print(f"wrote {output_dir / RESULTS_TEXT_NAME}, {report_path}, per-subject CSV/JSON and plots in {output_dir}", flush=True)
    return {"table2": release_row, "table3": shown_small_lesion_row, "report_path": report_path, "text": text}

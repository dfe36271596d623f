"""``python -m spinseg.compare --from_checkpoints pretrained_models/``: the paper's six rows, no training.

Finds the authors' checkpoint of each method under the folder (names as the release's bash scripts
give them), evaluates each with its release preset on the same test subjects, and writes Tables 2 and 3
with the paper's published numbers and the difference beside ours.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from spinseg.errors import UserInputError
from spinseg.evaluation import reporting
from spinseg.evaluation.reporting import format_value
from spinseg.io.files import write_json, write_lines, write_text
from spinseg.recipes.config import EvaluateConfig
from spinseg.recipes.published import PAPER_ROW_ORDER, PAPER_TABLE2, PAPER_TABLE3
from spinseg.recipes.release_presets import PRESETS

METRICS = ("dice", "iou", "precision", "recall")
METRIC_NAMES = ("DSC", "IOU", "Precision", "Recall")


def find_release_checkpoints(folder: str | Path) -> dict[str, Path]:
    """{model name: path} of every authors' checkpoint present under ``folder``, in the paper's row order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: --from_checkpoints needs a folder (e.g. pretrained_models/)")
    found = {name: folder / PRESETS[name].release_checkpoint for name in PAPER_ROW_ORDER}
    found = {name: path for name, path in found.items() if path.is_file()}
    if not found:
        expected = ", ".join(PRESETS[name].release_checkpoint for name in PAPER_ROW_ORDER)
        raise UserInputError(f"{folder}: no authors' checkpoint found (looked for {expected})")
    return found


def with_published(name: str, ours: dict | None, published: dict) -> list[str]:
    """Cells 'ours | paper | difference' for each metric of one row (n/a where ours is missing)."""
    cells = []
    for key in METRICS:
        value = None if ours is None else ours.get(key)
        paper = published[name][key]
        cells += [format_value(value), f"{paper:.3f}",
                  f"{value - paper:+.3f}" if value is not None else "n/a"]
    return cells


def tables_markdown(rows: list[dict]) -> str:
    """Tables 2 and 3 in markdown: each metric as ours, the paper's, and ours minus the paper's."""
    header = ["Method"] + [f"{name} {part}" for name in METRIC_NAMES for part in ("ours", "paper", "diff")]
    table2 = reporting.format_markdown_table(
        header, [[row["display_name"], *with_published(row["model"], row["table2"], PAPER_TABLE2)] for row in rows])
    table3_rows = []
    for row in rows:
        interval = (row["table3"] or {}).get("dice_interval_95", [float("nan")] * 2)
        spread = "n/a" if np.isnan(interval[0]) else f"[{interval[0]:.3f}, {interval[1]:.3f}]"
        table3_rows.append([row["display_name"], *with_published(row["model"], row["table3"], PAPER_TABLE3), spread])
    table3 = reporting.format_markdown_table(header + ["DSC 95% interval"], table3_rows)
    return f"## Table 2 (ATLAS test subjects)\n\n{table2}\n\n## Table 3 (small-lesion slices)\n\n{table3}\n"


def limited_lists(test_scans: str, test_ground_truths: str, output: Path, max_test_subjects: int) -> tuple[str, str]:
    """The test lists, or copies holding their first ``max_test_subjects`` entries (> 0)."""
    if max_test_subjects <= 0:
        return test_scans, test_ground_truths
    from spinseg.data.volumes import read_paired_lists

    scans, ground_truths = read_paired_lists(test_scans, test_ground_truths)
    limited = str(output / "test_scans.txt"), str(output / "test_ground_truths.txt")
    write_lines(limited[0], scans[:max_test_subjects])
    write_lines(limited[1], ground_truths[:max_test_subjects])
    return limited


def compare_from_checkpoints(
    checkpoint_folder: str,
    test_scans: str,
    test_ground_truths: str,
    output_dir: str,
    device: str = "auto",
    model_overrides: dict | None = None,
    small_lesion_slices_path: str = "",
    max_test_subjects: int = 0,
) -> list[dict]:
    """Evaluates every authors' checkpoint found with its preset; writes release_tables.md/.json.

    ``model_overrides`` {model: config} describes a release-format ``.pth`` of other widths than the
    paper's (the Keras files and KiU-Net's state dict describe themselves). Returns one row per model.
    """
    from spinseg.evaluation.evaluator import evaluate

    output = Path(output_dir)
    checkpoints = find_release_checkpoints(checkpoint_folder)
    test_scans, test_ground_truths = limited_lists(test_scans, test_ground_truths, output, max_test_subjects)
    rows = []
    for name, path in checkpoints.items():
        preset = PRESETS[name]
        print(f"== {preset.display_name}: {path} (preset {name})", flush=True)
        overrides = (model_overrides or {}).get(name, {})
        result = evaluate(EvaluateConfig(
            multimodal_scan_paths=test_scans, ground_truth_path=test_ground_truths, restore_path=str(path),
            preset=name, model_config=json.dumps(overrides) if overrides else "", device=device,
            small_lesion_slices_path=small_lesion_slices_path, output_path=str(output / "evaluations" / name),
        ))
        rows.append({"model": name, "display_name": preset.display_name, "checkpoint": str(path),
                     "table2": result["table2"], "table3": result["table3"], "subjects": len(result["records"]),
                     "paper_table2": PAPER_TABLE2[name], "paper_table3": PAPER_TABLE3[name]})
    missing = [PRESETS[name].display_name for name in PAPER_ROW_ORDER if name not in checkpoints]
    text = (f"# The paper's rows from the authors' checkpoints\n\nCheckpoints: {checkpoint_folder}; "
            f"{rows[0]['subjects']} test subjects; each method prepared, thresholded and scored as the release did "
            f"(docs/release_presets.md).{' Not found: ' + ', '.join(missing) + '.' if missing else ''}\n\n"
            + tables_markdown(rows))
    write_text(output / "release_tables.md", text)
    write_json(output / "release_tables.json", rows)
    print("\n" + text + f"\nwrote {output / 'release_tables.md'}", flush=True)
    return rows

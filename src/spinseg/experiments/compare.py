"""Train and evaluate several models on the same data with the same budget; Tables 2 and 3 side by side.

    python -m spinseg.compare --models spin unet dunet clcinet kiunet xnet \\
        --train_scans training/atlas/traintest/train_scans.txt --train_ground_truths ... \\
        --test_scans ... --test_ground_truths ... --max_steps 300 --crop_shape 96 96

Writes ``comparison.md``, ``comparison.json``, ``comparison_bar_chart.png`` and a detection-vs-size
plot with one curve per model into ``--output_dir``.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from spinseg.evaluation import reporting
from spinseg.io.figures import save_figure
from spinseg.io.files import write_json, write_text
from spinseg.recipes.config import EvaluateConfig, TrainConfig
from spinseg.recipes.named import recipe

METRICS = ("dice", "iou", "precision", "recall")


def comparison_markdown(rows: list[dict]) -> str:
    """Markdown with Table 2 and Table 3 side by side, plus parameters and timing."""
    header = ["Method", "DSC", "IOU", "Precision", "Recall", "Small DSC", "Small IOU", "Small Precision",
              "Small Recall", "Parameters", "s / volume", "Train steps", "Train s"]
    body = []
    for row in rows:
        table3 = row["table3"] or {}
        body.append(
            [row["display_name"]]
            + [reporting.format_value(row["table2"][m]) for m in METRICS]
            + [reporting.format_value(table3.get(m)) for m in METRICS]
            + [f"{row['parameters']:,}", f"{row['seconds_per_volume']:.1f}", str(row["train_steps"]), f"{row['train_seconds']:.0f}"]
        )
    return reporting.format_markdown_table(header, body)


def plot_bar_chart(rows: list[dict], path: Path) -> Path:
    """Grouped bars of the four Table 2 metrics per model (and Table 3 DSC)."""
    figure = Figure(figsize=(9, 4))
    axis = figure.add_subplot(1, 1, 1)
    labels = [*METRICS, "small-lesion dice"]
    width = 0.8 / max(len(rows), 1)
    for position, row in enumerate(rows):
        values = [row["table2"][m] for m in METRICS] + [(row["table3"] or {}).get("dice", np.nan)]
        axis.bar(np.arange(len(labels)) + position * width, values, width, label=row["display_name"])
    axis.set_xticks(np.arange(len(labels)) + 0.4 - width / 2)
    axis.set_xticklabels(["DSC", "IOU", "Precision", "Recall", "Small DSC"])
    axis.set_ylim(0, 1)
    axis.set_ylabel("score")
    axis.legend(fontsize=8, ncol=3)
    axis.set_title("Models compared on the same data and budget")
    return save_figure(figure, path, dpi=110)


def limit_test_lists(test_scans: str, test_ground_truths: str, output: Path, max_test_subjects: int) -> tuple[str, str]:
    """The test lists, or (``max_test_subjects`` > 0) copies of their first that many lines in ``output``."""
    from spinseg.data.volumes import read_paired_lists
    from spinseg.io.files import write_lines

    if max_test_subjects <= 0:
        return test_scans, test_ground_truths
    scans, ground_truths = read_paired_lists(test_scans, test_ground_truths)
    test_scans, test_ground_truths = str(output / "test_scans.txt"), str(output / "test_ground_truths.txt")
    write_lines(test_scans, scans[:max_test_subjects])
    write_lines(test_ground_truths, ground_truths[:max_test_subjects])
    return test_scans, test_ground_truths


def comparison_train_config(name: str, model_config: dict, train_scans: str, train_ground_truths: str, output: Path,
                            max_steps: int, crop_shape: list[int], n_batch: int, seed: int, n_workers: int,
                            device: str) -> TrainConfig:
    """Model ``name``'s recipe with the comparison's shared data, budget and seed (no validation,
    one checkpoint at the end)."""
    model_recipe = recipe(name)
    # The comparison's shared settings win over the recipe's (e.g. KiU-Net's own crops).
    recipe_settings = {key: value for key, value in model_recipe.train.items() if key != "crop_shape"}
    return replace(
        TrainConfig(),
        **recipe_settings,
        train_multimodal_scan_paths=train_scans,
        train_ground_truth_path=train_ground_truths,
        model_name=name,
        model_config=json.dumps(model_config) if model_config else "",
        n_chunk=model_recipe.n_chunk,
        n_batch=n_batch,
        crop_shape=list(crop_shape),
        max_steps=max_steps,
        n_summary=max(1, max_steps // 10),
        n_checkpoint=max_steps,
        n_validation=0,
        checkpoint_path=str(output / "models" / name),
        n_workers=n_workers,
        seed=seed,
        device=device,
    )


def train_and_evaluate(name: str, model_config: dict, train_config: TrainConfig, test_scans: str,
                       test_ground_truths: str, output: Path, device: str) -> tuple[dict, list[dict]]:
    """Trains one model, evaluates its last checkpoint; returns (its comparison row, its per-subject records)."""
    from spinseg.evaluation.evaluator import evaluate
    from spinseg.models import build_model
    from spinseg.training.trainer import train

    model_recipe = recipe(name)
    print(f"== {model_recipe.display_name}: {model_recipe.note}", flush=True)
    started = time.time()
    summary = train(train_config)
    train_seconds = time.time() - started
    result = evaluate(
        EvaluateConfig(
            multimodal_scan_paths=test_scans,
            ground_truth_path=test_ground_truths,
            model_name=name,
            model_config=train_config.model_config,
            restore_path=summary["checkpoint"],
            n_chunk=model_recipe.n_chunk,
            output_path=str(output / "evaluations" / name),
            method_name=model_recipe.display_name,
            device=device,
            **model_recipe.normalization(),
        )
    )
    parameters = sum(p.numel() for p in build_model(name, input_channels=model_recipe.n_chunk, **model_config).parameters())
    row = {
        "model": name,
        "display_name": model_recipe.display_name,
        "recipe_note": model_recipe.note,
        "table2": result["table2"],
        "table3": result["table3"],
        "parameters": parameters,
        "seconds_per_volume": result["seconds"] / max(len(result["records"]), 1),
        "train_steps": summary["steps"],
        "train_seconds": train_seconds,
    }
    return row, result["records"]


def write_comparison(rows: list[dict], records_by_model: dict[str, list[dict]], output: Path, max_steps: int,
                     n_batch: int, crop_shape: list[int]) -> str:
    """Writes comparison.md / .json, the bar chart and the detection-vs-size plot; returns the markdown table."""
    table = comparison_markdown(rows)
    notes = "\n".join(f"- {row['display_name']}: {row['recipe_note']}" for row in rows)
    text = (
        f"# Model comparison\n\nSame training lists, {max_steps} steps of batch {n_batch} on {crop_shape} crops each, "
        f"same test lists. Table 2 columns: per-subject 3-D metrics averaged over subjects; 'Small' columns: "
        f"Table 3, pooled over small-lesion slices.\n\n{table}\n\nRecipes:\n{notes}\n\n"
        f"![bar chart](comparison_bar_chart.png)\n\n![detection vs size](detection_vs_size.png)\n"
    )
    write_text(output / "comparison.md", text)
    write_json(output / "comparison.json", rows)
    plot_bar_chart(rows, output / "comparison_bar_chart.png")
    reporting.plot_detection_vs_size(records_by_model, output / "detection_vs_size.png")
    return table


def compare(
    models: list[str],
    train_scans: str,
    train_ground_truths: str,
    test_scans: str,
    test_ground_truths: str,
    output_dir: str,
    max_steps: int,
    crop_shape: list[int],
    n_batch: int = 8,
    seed: int = 1,
    n_workers: int = 1,
    model_overrides: dict | None = None,
    device: str = "auto",
    max_test_subjects: int = 0,
) -> list[dict]:
    """Trains each model for ``max_steps`` with its recipe and evaluates it on the test lists.

    ``max_test_subjects`` > 0 evaluates on the first that many test subjects only (CPU budgets).
    """
    output = Path(output_dir)
    test_scans, test_ground_truths = limit_test_lists(test_scans, test_ground_truths, output, max_test_subjects)
    rows, records_by_model = [], {}
    for name in models:
        model_config = {**recipe(name).model_config, **(model_overrides or {}).get(name, {})}
        train_config = comparison_train_config(name, model_config, train_scans, train_ground_truths, output, max_steps,
                                               crop_shape, n_batch, seed, n_workers, device)
        row, records = train_and_evaluate(name, model_config, train_config, test_scans, test_ground_truths, output, device)
        rows.append(row)
        records_by_model[row["display_name"]] = records
    table = write_comparison(rows, records_by_model, output, max_steps, n_batch, crop_shape)
    print("\n" + table + f"\n\nwrote {output / 'comparison.md'}", flush=True)
    return rows

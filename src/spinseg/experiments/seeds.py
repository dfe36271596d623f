"""``python -m spinseg.compare --seeds 1 2 3``: the same comparison once per seed, rows as mean ± sd.

``python -m spinseg.experiments.seeds DIR ...`` summarises evaluations made already (one
``evaluate --output_path DIR`` per seed, e.g. by ``bash/spin/seed_spread_synthetic_cpu.sh``).

One training run says little on its own (oneDNN's kernels differ by CPU and hundreds of steps amplify
rounding), so each model's Table 2 and Table 3 values are reported over seeds: mean, sample standard
deviation and the range.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from spinseg.evaluation import reporting
from spinseg.io.files import write_json, write_text

METRICS = ("dice", "iou", "precision", "recall")


def summarise_over_seeds(runs: dict[int, list[dict]]) -> list[dict]:
    """{seed: compare() rows} -> one row per model: table2/table3 {metric: {mean, sd, min, max, values}}."""
    seeds = sorted(runs)
    summary = []
    for position, row in enumerate(runs[seeds[0]]):
        entry = {"model": row["model"], "display_name": row["display_name"], "seeds": seeds}
        for table in ("table2", "table3"):
            entry[table] = {}
            for key in METRICS:
                values = [(runs[seed][position][table] or {}).get(key, float("nan")) for seed in seeds]
                values = np.array(values, dtype=np.float64)
                entry[table][key] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                                     "min": float(values.min()), "max": float(values.max()), "values": values.tolist()}
        summary.append(entry)
    return summary


def seeds_markdown(summary: list[dict]) -> str:
    """Markdown: Method | DSC | IOU | Precision | Recall | Small DSC | Small range, each 'mean ± sd'."""
    header = ["Method", "DSC", "IOU", "Precision", "Recall", "Small DSC", "Small DSC range"]
    body = []
    for row in summary:
        cells = [f"{row['table2'][key]['mean']:.3f} ± {row['table2'][key]['sd']:.3f}" for key in METRICS]
        small = row["table3"]["dice"]
        body.append([row["display_name"], *cells, f"{small['mean']:.3f} ± {small['sd']:.3f}",
                     f"{small['min']:.3f}–{small['max']:.3f}"])
    return reporting.format_markdown_table(header, body)


def compare_over_seeds(seeds: list[int], output_dir: str, **compare_arguments) -> list[dict]:
    """Runs :func:`spinseg.experiments.compare.compare` once per seed (``output_dir/seed_N``) and summarises."""
    from spinseg.experiments.compare import compare

    output = Path(output_dir)
    runs = {seed: compare(output_dir=str(output / f"seed_{seed}"), seed=seed, **compare_arguments) for seed in seeds}
    summary = summarise_over_seeds(runs)
    table = seeds_markdown(summary)
    write_text(output / "comparison_seeds.md",
               f"# Model comparison over seeds {', '.join(map(str, sorted(runs)))}\n\nmean ± sample sd over seeds; "
               f"per-seed tables in seed_N/comparison.md.\n\n{table}\n")
    write_json(output / "comparison_seeds.json", summary)
    print("\n" + table + f"\n\nwrote {output / 'comparison_seeds.md'}", flush=True)
    return summary


def rows_from_evaluation(output_dir: str | Path, model: str = "spin", display_name: str = "SPiN") -> list[dict]:
    """One evaluation's Table 2 / Table 3 row, from the ``per_subject.json`` evaluate wrote, as compare's rows."""
    records = json.loads((Path(output_dir) / "per_subject.json").read_text())
    return [{"model": model, "display_name": display_name, "table2": reporting.release_row_from_records(records),
             "table3": reporting.small_lesion_row_from_records(records)}]


def main(argv: list[str] | None = None) -> int:
    """Prints (and writes to ``--output``) the mean ± sd table over the given evaluation folders."""
    parser = argparse.ArgumentParser(prog="python -m spinseg.experiments.seeds",
                                     description="Table 2 / Table 3 of one model as mean ± sd over seeds, from evaluate's folders")
    parser.add_argument("evaluations", nargs="+", help="evaluate output folders, one per seed (each holds per_subject.json)")
    parser.add_argument("--output", default="", help="markdown file to write the table to (default: print only)")
    args = parser.parse_args(argv)
    summary = summarise_over_seeds({index: rows_from_evaluation(folder) for index, folder in enumerate(args.evaluations)})
    table = seeds_markdown(summary)
    print(f"over {len(args.evaluations)} runs: {', '.join(args.evaluations)}\n\n{table}")
    if args.output:
        write_text(args.output, f"# SPiN over seeds\n\nmean ± sample sd; runs: {', '.join(args.evaluations)}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One spelling per concept across the commands (the release's kept as aliases), ``--version``,
and progress bars that stay out of logs."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import spinseg
from spinseg.cli import benchmark, compare, download, evaluate, export, main, predict, train
from spinseg.io.progress import progress_bar

REPO = Path(__file__).resolve().parents[1]
# command parser, required arguments, {concept: (common spelling, old spelling, value, dest)}
ALIASES = {
    "train": (train.build_parser, [], {
        "model": ("--model", "--model_name", "unet", "model_name"),
        "checkpoint": ("--checkpoint", "--restore_path", "a.pth", "restore_path"),
        "output": ("--output", "--checkpoint_path", "run", "checkpoint_path"),
        "batch size": ("--batch_size", "--n_batch", "3", "n_batch")}),
    "evaluate": (evaluate.build_parser, [], {
        "model": ("--model", "--model_name", "unet", "model_name"),
        "checkpoint": ("--checkpoint", "--restore_path", "a.pth", "restore_path"),
        "output": ("--output", "--output_path", "out", "output_path"),
        "batch size": ("--batch_size", "--n_batch", "3", "batch_size")}),
    "predict": (predict.build_parser, ["--input", "x.nii"], {
        "model": ("--model", "--model_name", "unet", "model"),
        "checkpoint": ("--checkpoint", "--restore_path", "a.pth", "checkpoint"),
        "output": ("--output", "--output_path", "out", "output"),
        "batch size": ("--batch_size", "--n_batch", "3", "batch_size")}),
    "compare": (compare.build_parser, [], {
        "output": ("--output", "--output_dir", "out", "output_dir"),
        "batch size": ("--batch_size", "--n_batch", "3", "n_batch")}),
    "benchmark": (benchmark.build_parser, [], {"output": ("--output", "--output_json", "b.json", "output_json")}),
    "export": (export.build_parser, [], {
        "checkpoint": ("--checkpoint", "--restore_path", "a.pth", "checkpoint"),
        "output": ("--output", "--output_path", "a.safetensors", "output")}),
    "download": (download.build_parser, [], {"output": ("--output", "--output_dir", "models", "output_dir")}),
}
REQUIRED = {"predict": ["--checkpoint", "c.pth", "--output", "o"], "export": ["--checkpoint", "c.pth"]}


@pytest.mark.parametrize("command", sorted(ALIASES))
def test_common_and_old_spellings_set_the_same_value(command):
    build_parser, extra, concepts = ALIASES[command]
    for concept, (common, old, value, dest) in concepts.items():
        base = [item for item in REQUIRED.get(command, []) + extra]
        parsed = [vars(build_parser().parse_args(base + [flag, value])) for flag in (common, old)]
        expected = int(value) if value.isdigit() else value
        assert parsed[0][dest] == parsed[1][dest] == expected, (command, concept)


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "benchmark"])
def test_amp_switches_both_ways(command):
    build_parser, extra, _ = ALIASES[command]
    base = REQUIRED.get(command, []) + extra
    assert vars(build_parser().parse_args(base + ["--amp"]))["amp"] is True
    assert vars(build_parser().parse_args(base + ["--no-amp"]))["amp"] is False


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"spinseg {spinseg.__version__}"
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run([sys.executable, "-m", "spinseg.cli", "--version"], capture_output=True, text=True,
                            env=environment, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"spinseg {spinseg.__version__}"


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_progress_bars_only_on_a_terminal():
    assert progress_bar(range(3), file=io.StringIO()).disable  # a log file or pipe: no bar
    shown = Terminal()
    assert list(progress_bar(range(3), file=shown)) == [0, 1, 2] and "3/3" in shown.getvalue()
    assert progress_bar(range(3), file=Terminal(), enabled=False).disable
    # Every command uses this one helper: no other module builds a tqdm bar itself.
    users = [path for path in (REPO / "src" / "spinseg").rglob("*.py") if "tqdm" in path.read_text()]
    assert [path.name for path in users] == ["progress.py"]

"""Recipes in one place: every train/evaluate bash script is ``--recipe NAME`` plus paths, every
recipe parses into a valid configuration, and the scripts resolve to the settings the former
scripts spelled out flag by flag."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from spinseg.cli.evaluate import parse_evaluate_config
from spinseg.cli.train import build_parser, parse_train_config
from spinseg.recipes.config import TrainConfig, validate_train_config
from spinseg.recipes.named import NAMED_RECIPES, RECIPES, recipe
from spinseg.recipes.preprocessing import (
    flags_of,
    preprocessing_record,
    resolve_preprocessing,
)
from spinseg.recipes.release_presets import PRESETS

REPO = Path(__file__).resolve().parents[1]
# The scripts that pin one training or evaluation run (the GPU smoke test runs many and pins none).
SCRIPTS = sorted(path for path in (REPO / "bash").rglob("*.sh")
                 if ("spinseg.train" in path.read_text() or "spinseg.evaluate" in path.read_text()) and path.name != "gpu_smoke.sh")
GLAS_MEANS, GLAS_STDDEVS = ["0.7", "0.5", "0.75"], ["0.16", "0.2", "0.12"]

# What the scripts passed before the recipes were named (their flags, verbatim; $LISTS = L).
OLD_TRAIN_FLAGS = {
    "train_spin_synthetic_cpu.sh": """
  --train_multimodal_scan_paths L/training/atlas/traintest/train_scans.txt
  --train_ground_truth_path L/training/atlas/traintest/train_ground_truths.txt
  --model_name spin --n_batch 8 --n_chunk 5 --crop_shape 96 96 --dataset_normalization standard
  --dataset_means 30.20063 --dataset_stddevs 35.221165 --learning_rates 1e-3 3e-4 --learning_schedule 120 200
  --positive_class_sample_rates 0.70 --positive_class_sample_schedule -1 --augmentation_probabilities 1.00 0.50
  --augmentation_schedule 160 200 --augmentation_flip_type horizontal vertical --augmentation_rotate 30
  --augmentation_noise_type gaussian --augmentation_noise_spread 1e-2 --augmentation_resize_and_pad 1.00 1.10
  --w_positive_class 1.5 --n_summary 50 --n_checkpoint 200 --n_validation 0
  --checkpoint_path trained_spin/synthetic_atlas/spin_cpu --device cpu --n_workers 0 --seed 1""",
    "train_spin_traintest.sh": """
  --train_multimodal_scan_paths training/atlas/traintest/train_scans.txt
  --train_ground_truth_path training/atlas/traintest/train_ground_truths.txt
  --val_multimodal_scan_paths testing/atlas/traintest/test_scans.txt
  --val_ground_truth_path testing/atlas/traintest/test_ground_truths.txt
  --model_name spin --n_batch 8 --n_chunk 5 --dataset_normalization standard --dataset_means 30.20063
  --dataset_stddevs 35.221165 --learning_rates 3e-4 1e-4 5e-5 --learning_schedule 400 1400 1600
  --positive_class_sample_rates 0.95 --positive_class_sample_schedule -1 --augmentation_probabilities 1.00 0.50
  --augmentation_schedule 1400 1600 --augmentation_flip_type horizontal vertical --augmentation_rotate 30
  --augmentation_noise_type gaussian --augmentation_noise_spread 1e-2 --augmentation_resize_and_pad 1.00 1.10
  --loss_func_segmentation cross_entropy --w_positive_class 1.5 --n_summary 1000 --n_checkpoint 1000
  --n_validation 1000 --checkpoint_path trained_spin/atlas/spin_traintest --device auto --n_workers 8""",
}
for dataset in ("warwick", "rite"):
    OLD_TRAIN_FLAGS[f"train_spin_{dataset}_traintest.sh"] = f"""
  --train_multimodal_scan_paths training/{dataset}/traintest/train_images.txt
  --train_ground_truth_path training/{dataset}/traintest/train_ground_truths.txt
  --val_multimodal_scan_paths testing/{dataset}/traintest/test_images.txt
  --val_ground_truth_path testing/{dataset}/traintest/test_ground_truths.txt
  --model_name spin --model_config '{{"input_channels": 3}}' --n_batch 8 --n_chunk 1 --crop_shape 128 128
  --dataset_normalization standard --dataset_means {' '.join(GLAS_MEANS)} --dataset_stddevs {' '.join(GLAS_STDDEVS)}
  --learning_rates 3e-4 1e-4 5e-5 --learning_schedule 100 200 300 --positive_class_sample_rates 0.0
  --positive_class_sample_schedule -1 --augmentation_probabilities 1.00 0.50 --augmentation_schedule 150 300
  --augmentation_flip_type horizontal vertical --augmentation_rotate 30 --augmentation_noise_type gaussian
  --augmentation_noise_spread 1e-2 --augmentation_resize_and_pad 1.00 1.10 --loss_func_segmentation cross_entropy
  --w_positive_class 1.5 --n_summary 1000 --n_checkpoint 500 --n_validation 500
  --checkpoint_path trained_spin/{dataset}/spin_traintest --device auto --n_workers 8"""


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A folder holding the GLaS and RITE statistics.json, as current directory."""
    for dataset in ("warwick", "rite"):
        (tmp_path / "data" / f"{dataset}_spin").mkdir(parents=True)
        (tmp_path / "data" / f"{dataset}_spin" / "statistics.json").write_text(
            json.dumps({"means": [float(v) for v in GLAS_MEANS], "stddevs": [float(v) for v in GLAS_STDDEVS]}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def script_arguments(script: Path, workspace: Path) -> list[str]:
    """The arguments the script gives ``python`` (run with a stand-in python that records them)."""
    bin_dir = workspace / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$ARGUMENTS_FILE"\n')
    (bin_dir / "python").chmod(0o755)
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ARGUMENTS_FILE": str(workspace / "args"),
                   "LISTS": "L"}
    environment.pop("STATISTICS", None)
    subprocess.run(["bash", str(script)], check=True, env=environment, cwd=workspace, timeout=60)
    return (workspace / "args").read_text().split("\0")[:-1]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_every_script_names_an_existing_recipe_that_parses(script, workspace):
    arguments = script_arguments(script, workspace)
    assert arguments[:2] in (["-m", "spinseg.train"], ["-m", "spinseg.evaluate"])
    if "--preset" in arguments:  # the authors' checkpoint scored as the release scored it
        assert arguments[1] == "spinseg.evaluate" and arguments[arguments.index("--preset") + 1] in PRESETS
        assert "--recipe" not in arguments
        config = parse_evaluate_config(arguments[2:])
        assert config.restore_path.startswith("pretrained_models/")
    else:
        assert "--recipe" in arguments and arguments[arguments.index("--recipe") + 1] in NAMED_RECIPES
    # Only the recipe (or preset), paths and the pass-through remain in the scripts.
    flags = {item for item in arguments[2:] if item.startswith("--")}
    assert flags <= {"--recipe", "--preset", "--train_multimodal_scan_paths", "--train_ground_truth_path", "--val_multimodal_scan_paths",
                     "--val_ground_truth_path", "--checkpoint_path", "--multimodal_scan_paths", "--ground_truth_path",
                     "--small_lesion_slices_path", "--restore_path", "--output_path"}, flags
    if arguments[1] == "spinseg.train":
        validate_train_config(parse_train_config(arguments[2:]))
    elif "--recipe" in arguments:
        config = parse_evaluate_config(arguments[2:])
        named = recipe(config.recipe)
        # The authors' checkpoints record nothing: the recipe gives model, slices and normalisation.
        resolved = resolve_preprocessing({}, flags_of(config))
        assert (resolved.model_name, resolved.n_chunk) == (named.model, named.n_chunk)
        assert [resolved.dataset_means, resolved.dataset_stddevs] == [named.normalization()["dataset_means"],
                                                                      named.normalization()["dataset_stddevs"]]


@pytest.mark.parametrize("name", sorted(OLD_TRAIN_FLAGS))
def test_spin_scripts_resolve_to_the_settings_the_old_scripts_passed(name, workspace):
    (script,) = [path for path in SCRIPTS if path.name == name]
    old = parse_train_config(shlex.split(OLD_TRAIN_FLAGS[name]))
    assert asdict(parse_train_config(script_arguments(script, workspace)[2:])) == asdict(old)


def test_the_synthetic_evaluation_gets_the_old_scripts_values_from_the_checkpoint(workspace):
    (train_script,) = [path for path in SCRIPTS if path.name == "train_spin_synthetic_cpu.sh"]
    (evaluate_script,) = [path for path in SCRIPTS if path.name == "evaluate_spin_synthetic_cpu.sh"]
    train_config = parse_train_config(script_arguments(train_script, workspace)[2:])
    checkpoint = {"format": "spinseg-checkpoint-v1", "model_name": "spin", "model_config": {"input_channels": 5},
                  "preprocessing": preprocessing_record(train_config)}
    config = parse_evaluate_config(script_arguments(evaluate_script, workspace)[2:])
    resolved = resolve_preprocessing(checkpoint, flags_of(config))
    # The former script: --model_name spin --n_chunk 5 --dataset_normalization standard
    # --dataset_means 30.20063 --dataset_stddevs 35.221165 --device cpu (threshold 0.5 was fixed).
    assert (resolved.model_name, resolved.n_chunk, resolved.dataset_normalization) == ("spin", 5, "standard")
    assert (resolved.dataset_means, resolved.dataset_stddevs, resolved.threshold) == ([30.20063], [35.221165], 0.5)
    assert config.device == "cpu" and config.output_path == "outputs/spin/synthetic_atlas"


@pytest.mark.parametrize("name", sorted(NAMED_RECIPES))
def test_every_recipe_parses_and_is_valid(name, workspace):
    config = parse_train_config(["--recipe", name])
    validate_train_config(config)
    assert config.model_name == NAMED_RECIPES[name].model and config.n_chunk == NAMED_RECIPES[name].n_chunk
    assert set(RECIPES) <= set(NAMED_RECIPES)


def test_explicit_flags_win_over_the_recipe_and_statistics_come_from_the_file(workspace):
    config = parse_train_config(["--recipe", "spin_glas", "--n_batch", "4"])
    assert config.n_batch == 4 and config.crop_shape == [128, 128]
    assert config.dataset_means == [float(v) for v in GLAS_MEANS]
    given = parse_train_config(["--recipe", "spin_rite", "--dataset_means", "1", "--dataset_stddevs", "2"])
    assert (given.dataset_means, given.dataset_stddevs) == ([1.0], [2.0])
    (workspace / "data" / "rite_spin" / "statistics.json").unlink()
    with pytest.raises(Exception, match="statistics.json: not found"):
        parse_train_config(["--recipe", "spin_rite"])


def test_help_shows_meaning_and_default_of_every_flag():
    text = " ".join(build_parser().format_help().split())
    assert "slices per optimiser step (all processes together) (default: 8)" in text
    assert "Adam learning rate per schedule segment (default: 0.0003 0.0001 5e-05)" in text
    from spinseg.cli.evaluate import build_parser as build_evaluate_parser

    for parser in (build_parser(), build_evaluate_parser()):
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and "default" in action.help, action.option_strings
    evaluate_help = " ".join(build_evaluate_parser().format_help().split())
    assert "stacked slices (default: from the checkpoint's preprocessing record, else the model's recipe)" in evaluate_help
    assert TrainConfig().n_batch == 8

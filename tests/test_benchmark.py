"""The benchmark command runs end to end (tiny sizes), checks the optimised path and writes its JSON."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_python, subprocess_environment
from spinseg.acceleration.allocator import tune_glibc_malloc
from spinseg.experiments.benchmark import TOLERANCE_AMP, importable_models, matmul_gflops, write_synthetic_volumes
from spinseg.recipes.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``python -m spinseg.benchmark --quick --models spin --isolate yes --bf16 yes`` once for the module: (process, JSON).

    Isolated phases (one process each, as in a full CPU run) include the default-heap plain variant;
    ``--bf16 yes`` adds the bf16-autocast variants on any CPU (emulated where it has no bf16 units).
    """
    output = tmp_path_factory.mktemp("benchmark") / "benchmark.json"
    completed = run_python(["-m", "spinseg.benchmark", "--quick", "--models", "spin", "--isolate", "yes", "--bf16", "yes",
                            "--end_to_end", "no", "--output_json", str(output)], cwd=ROOT, timeout=600)
    return completed, json.loads(output.read_text()) if output.is_file() else None


def test_quick_benchmark_passes_and_reports_every_figure(quick_run):
    completed, results = quick_run
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "PASS" in completed.stdout and "spin" in completed.stdout
    assert results["passed"] is True and results["partial"] is False
    assert results["tf32"] is False  # fp32 phases run without TF32 unless --allow_tf32 (issue 17)
    assert results["matmul_gflops"] > 0 and results["machine"]["cpu_cores"] >= 1
    (record,) = results["models"]
    assert record["model"] == "spin" and record["parameters"] == 5_263_808
    assert record["gflop_per_slice"] > 0
    for variant in ("plain", "fast"):
        inference = record["inference"][variant]
        assert inference["seconds_per_volume"]["min"] > 0 and inference["achieved_gflops"] > 0
        assert inference["peak_memory_mb"] is not None
    check = record["inference"]["fast"]["check"]
    assert check["passed"] and check["max_abs_difference"] <= check["allowed_difference"]
    assert (check["mask_dice"] == 1.0) == (check["mask_voxels_different"] == 0)
    for variant in ("plain", "channels_last"):
        assert record["training"][variant]["slices_per_second"] > 0
    assert record["training"]["channels_last"]["check"]["passed"]
    # The default-heap reference ran in processes that left glibc's malloc alone; the others tuned it
    # (where this libc can be tuned at all: the same call answers that here).
    heap_can_be_tuned = tune_glibc_malloc()
    for group, optimised in (("inference", "fast"), ("training", "channels_last")):
        assert record[group]["plain_default_heap"]["glibc_heap_tuned"] is False
        assert record[group]["plain"]["glibc_heap_tuned"] is heap_can_be_tuned
        assert record[group][optimised]["speedup_over_plain_default_heap"] > 0
    assert {entry["n_workers"] for entry in results["data_loading"]} == {0, 2}
    assert all(entry["slices_per_second"] > 0 for entry in results["data_loading"])


def test_quick_benchmark_bf16_variants_are_checked_against_the_fp32_plain_path(quick_run):
    completed, results = quick_run
    (record,) = results["models"]
    assert "optimised + bf16 autocast" in completed.stdout
    assert results["bf16_variants"] is True and results["matmul_gflops_bf16"] > 0
    inference, training = record["inference"]["fast_bf16"], record["training"]["channels_last_bf16"]
    assert inference["precision"] == "bf16" and record["inference"]["fast"]["precision"] == "fp32"
    assert training["precision"] == "bf16" and record["training"]["plain"]["precision"] == "fp32"
    # Held to the bf16 tolerance, not the fp32 one, and compared with the fp32 plain path's outputs.
    assert inference["check"]["tolerance"] == TOLERANCE_AMP["probability"] and inference["check"]["passed"]
    assert training["check"]["tolerance"] == TOLERANCE_AMP["loss"] and training["check"]["passed"]
    # bf16 rounding is visible: the outputs are not bit-identical to fp32 ones.
    assert inference["check"]["max_abs_difference"] > record["inference"]["fast"]["check"]["max_abs_difference"]
    assert training["first_step_loss"] != record["training"]["plain"]["first_step_loss"]
    # Its GFLOP/s are set against the bf16 matmul rate.
    reference = record["matmul_gflops_reference_by_precision"]["bf16"]
    assert reference >= results["matmul_gflops_bf16"]
    assert inference["fraction_of_matmul"] == pytest.approx(inference["achieved_gflops"] / reference)


def test_gpu_script_parses_and_its_python_path_runs_on_cpu(tmp_path):
    for script in ("bash/benchmark.sh", "bash/benchmark_gpu.sh"):
        assert subprocess.run(["bash", "-n", script], cwd=ROOT).returncode == 0, script
    completed = subprocess.run(
        ["bash", "bash/benchmark_gpu.sh", "--device", "cpu", "--quick", "--models", "spin"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=subprocess_environment(OUT=str(tmp_path)),
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    results = json.loads((tmp_path / "benchmark_gpu.json").read_text())
    assert results["amp"] is True and results["passed"] is True and results["device"] == "cpu"


def test_unknown_model_is_skipped_with_a_note():
    usable, skipped = importable_models(["spin", "no_such_model"])
    assert usable == ["spin"] and "no_such_model" in skipped


def test_peak_memory_sees_a_large_allocation():
    # In a fresh interpreter: where an earlier test ran a command in this process, its heap tuning keeps
    # freed pages, and a new block may reuse them without the resident size rising at all.
    code = ("import numpy as np, torch\n"
            "from spinseg.experiments.benchmark import PeakMemory\n"
            "with PeakMemory(torch.device('cpu')) as memory:\n"
            "    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched\n"
            "    del block\n"
            "print(memory.megabytes)\n")
    completed = run_python(["-c", code])
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert float(completed.stdout.strip().splitlines()[-1]) >= 48


def test_matmul_rate_is_positive():
    assert matmul_gflops(torch.device("cpu"), size=256, repeats=2) > 0


def test_synthetic_volumes_have_empty_end_slices(tmp_path):
    scans, masks = write_synthetic_volumes(tmp_path, 1, (20, 24, 30))
    scan, mask = np.load(scans[0]), np.load(masks[0])
    per_slice = np.abs(scan).reshape(-1, 30).max(axis=0)
    assert per_slice[0] == 0 and per_slice[-1] == 0 and per_slice[15] > 0
    assert mask.sum() > 0 and mask.dtype == np.uint8


def test_inference_comparison_counts_mask_differences_and_dice(tmp_path):
    from spinseg.experiments.benchmark import compare_inference

    scan = np.full((4, 5, 3), 50.0, dtype=np.float32)  # no background window: every slice counts as run
    plain = np.zeros(scan.shape, dtype=np.float32)
    plain[0, :4, 1] = 0.9  # 4 mask voxels
    fast = plain.copy()
    fast[0, 3, 1] = 0.4  # one lost ...
    fast[2, 2, 2] = 0.7  # ... one gained
    for name, array in (("scan", scan), ("plain", plain), ("fast", fast)):
        np.save(tmp_path / f"{name}.npy", array)
    check = compare_inference(str(tmp_path / "plain.npy"), str(tmp_path / "fast.npy"), str(tmp_path / "scan.npy"),
                              n_chunk=1, pad_value=0.0, tolerance=0.1)
    assert check["mask_voxels_different"] == 2 and check["plain_mask_voxels"] == 4
    assert check["mask_dice"] == pytest.approx(2 * 3 / 8)
    assert check["max_abs_difference"] == pytest.approx(0.7) and not check["passed"]


def test_training_phase_times_the_trainers_own_step_with_the_models_recipe(tmp_path, monkeypatch):
    """The training phase calls ``spinseg.training.trainer.training_step`` with the recipe's optimiser and loss weight.

    KiU-Net's recipe starts at learning rate 1e-3, so a phase with a rate of its own would show here.
    """
    from spinseg.experiments import benchmark
    from spinseg.models import build_model
    from spinseg.training import trainer

    calls = []
    trainer_step = trainer.training_step

    def recording_step(forward_model, optimizer, images, targets, loss_function, amp):
        group = optimizer.param_groups[0]
        # The loss of logit 0 on a lesion pixel is the lesion weight times log 2.
        lesion_weight = float(loss_function(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))) / math.log(2)
        calls.append((group["lr"], group["weight_decay"], round(lesion_weight, 6), amp, images.is_contiguous(memory_format=torch.channels_last)))
        return trainer_step(forward_model, optimizer, images, targets, loss_function, amp)

    monkeypatch.setattr(trainer, "training_step", recording_step)
    scans, masks = write_synthetic_volumes(tmp_path, 1, benchmark.QUICK_SHAPE)
    config, _, _ = benchmark.model_setup("kiunet")
    torch.manual_seed(0)
    torch.save(build_model("kiunet", **config).state_dict(), tmp_path / "weights.pt")
    spec = {"model": "kiunet", "device": "cpu", "state_dict_path": str(tmp_path / "weights.pt"), "scan_paths": scans,
            "mask_paths": masks, "batch_size": 2, "seed": 0, "variant": "channels_last", "amp": False, "repeats": 2}
    result = benchmark.run_training_phase(spec)

    recipe = benchmark.recipe_train_config("kiunet")
    assert recipe.learning_rates[0] != TrainConfig().learning_rates[0]
    assert calls == [(recipe.learning_rates[0], recipe.w_weight_decay, recipe.w_positive_class, False, True)] * 3
    assert len(result["seconds_per_step"]["all"]) == 2 and np.isfinite(result["first_step_loss"])


def test_end_to_end_phase_times_predict_against_the_release_loop(tmp_path):
    """``--end_to_end only --quick``: the three programs ran as fresh processes (registration on the moved
    3 mm native scan, ours and the release loop on the MNI scan) and their masks agree."""
    output = tmp_path / "benchmark.json"
    completed = run_python(["-m", "spinseg.benchmark", "--quick", "--end_to_end", "only", "--end_to_end_repeats", "1",
                            "--output_json", str(output)], cwd=ROOT, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    record = json.loads(output.read_text())["end_to_end"]
    assert set(record["seconds"]) == {"register", "plain", "release_loop"}
    assert all(times["best"] > 0 and len(times["all"]) == 1 for times in record["seconds"].values())
    assert record["registration_seconds"] > 0
    assert record["mni_shape"] == [197, 233, 189] and record["native_voxel_mm"] == 3.0
    assert record["check"]["passed"], record["agreement_plain_vs_release_loop"]
    assert record["speedup_plain_vs_release_loop"] == pytest.approx(
        record["seconds"]["release_loop"]["best"] / record["seconds"]["plain"]["best"])
    assert record["speedup_per_repeat"] == pytest.approx(
        [loop / ours for loop, ours in zip(record["seconds"]["release_loop"]["all"], record["seconds"]["plain"]["all"])])
    assert record["speedup_median_of_repeats"] == pytest.approx(record["speedup_per_repeat"][0])
    assert "predict end to end" in completed.stdout and "speed-up" in completed.stdout


def test_release_loop_gives_the_mask_of_the_one_inference_path():
    """The reference loop (one slice per forward, the model as trained) segments as predict_volume does."""
    from spinseg.data.transforms import Normalization
    from spinseg.experiments.end_to_end import QUICK_SPIN_WIDTHS
    from spinseg.experiments.release_loop import release_slice_loop
    from spinseg.inference.predictor import InferenceOptions, predict_volume
    from spinseg.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("spin", **QUICK_SPIN_WIDTHS).eval()
    volume = np.random.default_rng(0).normal(30.0, 35.0, size=(32, 36, 7)).astype(np.float32)
    normalization = Normalization()
    probabilities, _ = predict_volume(model, volume, InferenceOptions(normalization=normalization, prepare=False, batch_size=3))
    mask = release_slice_loop(model, volume, 5, normalization)
    assert mask.shape == volume.shape and mask.dtype == np.uint8
    assert 0 < mask.sum() < mask.size  # the comparison sees both classes
    np.testing.assert_array_equal(mask, (probabilities > 0.5).astype(np.uint8))

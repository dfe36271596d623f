"""Release presets: each method's inputs, scoring grid and threshold as the release's scripts made them,
and the six-row comparison from checkpoints in the authors' formats (.pth, .h5, .hdf5)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from spinseg.recipes.release_inputs import ground_truth_on_grid, mask_from_probabilities, model_inputs
from spinseg.errors import UserInputError
from spinseg.evaluation.release_evaluation import small_lesion_row
from spinseg.recipes.published import PAPER_ROW_ORDER, PAPER_TABLE2, PAPER_TABLE3
from spinseg.recipes.release_presets import PRESETS, POOLED, SUBJECT_MEAN, preset

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ATLAS_SLICE = (197, 233)


def test_xnet_and_clcinet_inputs_are_the_transposed_crop_of_t1_over_100():
    volume = np.zeros(ATLAS_SLICE + (2,), np.float32)
    volume[40, 100, 1] = 57.0  # our (row 40, column 100) is the release's (row 100, column 40)
    for name, shape, column_start in (("xnet", (224, 192), 2), ("clcinet", (224, 176), 11)):
        inputs = model_inputs(volume, preset(name))
        assert inputs.shape == (2, 1) + shape
        assert inputs[1, 0, 100 - 5, 40 - column_start] == pytest.approx(0.57)
        assert np.count_nonzero(inputs) == 1
        truth = ground_truth_on_grid(volume > 0, preset(name))
        assert truth.shape == shape + (2,) and truth[100 - 5, 40 - column_start, 1] and truth.sum() == 1


def test_dunet_stacks_slices_i_minus_2_to_i_plus_1_with_zeros_outside():
    depth = 5
    volume = np.zeros(ATLAS_SLICE + (depth,), np.float32)
    for index in range(depth):
        volume[..., index] = 10.0 * (index + 1)  # uint8(T1 * 2.55): 25, 51, 76, 102, 127
    inputs = model_inputs(volume, preset("dunet"))
    assert inputs.shape == (depth, 4, 192, 192)
    # Constant slices stay constant through the Lanczos resize; min-max over the patient: (v - 25) / (127 - 25).
    levels = (np.array([25, 51, 76, 102, 127]) - 25) / 102
    for index in range(depth):
        for channel in range(4):
            source = index + channel - 2
            expected = levels[source] if 0 <= source < depth else 0.0
            assert inputs[index, channel] == pytest.approx(np.full((192, 192), expected), abs=1e-6)


def test_kiunet_inputs_are_per_slice_uint8_over_the_maximum_resized_nearest():
    volume = np.zeros(ATLAS_SLICE + (2,), np.float32)
    volume[:, :117, 0] = 50.0  # T1 / 100: min 0.5, max 1.0; (x - min) / max * 255 -> 0 and uint8(127.5) = 127
    volume[:, 117:, 0] = 100.0  # (the release divides by the maximum, not by the range)
    inputs = model_inputs(volume, preset("kiunet"))  # slice 1 is empty: 0 / 0 becomes 0, as the release's cast did
    assert inputs.shape == (2, 1, 128, 128)
    assert np.unique(inputs[0]).tolist() == pytest.approx([0.0, 127 / 255])
    assert not inputs[1].any()
    truth = ground_truth_on_grid(volume > 60, preset("kiunet"))
    assert truth.shape == (128, 128, 2) and truth[..., 0].any() and not truth[..., 1].any()


def test_spin_inputs_are_the_zscore_stack_centred_on_the_slice():
    volume = np.full(ATLAS_SLICE + (3,), 30.20063, np.float32)
    volume[..., 1] += 35.221165  # z = 1 on the middle slice
    inputs = model_inputs(volume, preset("spin"))
    assert inputs.shape == (3, 5, 197, 233)
    assert inputs[1, 2] == pytest.approx(np.ones(ATLAS_SLICE), abs=1e-5)
    assert inputs[0, 3] == pytest.approx(np.ones(ATLAS_SLICE), abs=1e-5)
    assert not inputs[0, :2].any()  # beyond the volume: the dataset mean, 0 after the z-score


def test_threshold_is_inclusive_at_one_half():
    probabilities = np.array([[[0.4999, 0.5]]], np.float32)
    assert mask_from_probabilities(probabilities, preset("xnet"))[..., 0].tolist() == [[False, True]]


def test_table3_pooled_and_subject_mean_by_hand():
    counts = [(1, 1, 0), (0, 0, 2)]
    pooled = small_lesion_row(counts, POOLED)
    assert pooled["dice"] == pytest.approx(2 / (2 + 1 + 2))
    averaged = small_lesion_row(counts, SUBJECT_MEAN)
    assert averaged["dice"] == pytest.approx((2 / 3 + 0) / 2)
    assert small_lesion_row([(0, 0, 0)], POOLED) is None


def test_unknown_preset_is_one_line():
    with pytest.raises(UserInputError, match="unknown preset 'vnet'"):
        preset("vnet")


def test_published_numbers_cover_every_preset():
    assert set(PAPER_ROW_ORDER) == set(PRESETS) == set(PAPER_TABLE2) == set(PAPER_TABLE3)
    assert PAPER_TABLE2["spin"]["dice"] == 0.703 and PAPER_TABLE3["spin"]["dice"] == 0.424


def write_subject(folder: Path, depth: int = 3) -> tuple[Path, Path]:
    """One ATLAS-shaped subject with a small lesion (36 pixels per slice) and its lists."""
    rng = np.random.default_rng(0)
    subject = folder / "c0001" / "c0001s0001t01"
    subject.mkdir(parents=True)
    scan = rng.normal(60.0, 5.0, ATLAS_SLICE + (depth,)).astype(np.float32)
    mask = np.zeros(ATLAS_SLICE + (depth,), np.uint8)
    mask[90:96, 110:116, :] = 1
    scan[mask > 0] = 20.0
    np.save(subject / "c0001s0001t01_t1w_stx.npy", scan)
    np.save(subject / "c0001s0001t01_LesionSmooth_stx.npy", mask)
    scans, masks = folder / "scans.txt", folder / "masks.txt"
    scans.write_text(f"{subject / 'c0001s0001t01_t1w_stx.npy'}\n")
    masks.write_text(f"{subject / 'c0001s0001t01_LesionSmooth_stx.npy'}\n")
    return scans, masks


def authors_checkpoints(folder: Path) -> dict:
    """pretrained_models/ with all six checkpoints in the authors' formats (small widths) and their configs."""
    sources = {"spin": "spin_small_original_format.pth", "unet": "unet_small_original_format.pth",
               "xnet": "xnet_small_weights.h5", "clcinet": "clcinet_small_weights.h5",
               "dunet": "dunet_small_model.hdf5", "kiunet": "kiunet_release_state_dict.pth"}
    for name, source in sources.items():
        target = folder / PRESETS[name].release_checkpoint
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / source, target)
    return {name: json.loads((FIXTURES / f"{name}_small_config.json").read_text())["config"] for name in ("spin", "unet")}


@pytest.mark.slow
def test_six_rows_from_authors_format_checkpoints(tmp_path):
    from spinseg.cli.compare import main

    scans, masks = write_subject(tmp_path / "data")
    overrides = authors_checkpoints(tmp_path / "pretrained_models")
    output = tmp_path / "out"
    assert main(["--from_checkpoints", str(tmp_path / "pretrained_models"), "--test_scans", str(scans),
                 "--test_ground_truths", str(masks), "--output_dir", str(output), "--device", "cpu",
                 "--model_overrides", json.dumps(overrides)]) == 0
    rows = json.loads((output / "release_tables.json").read_text())
    assert [row["model"] for row in rows] == list(PAPER_ROW_ORDER)
    for row in rows:
        assert all(0.0 <= row["table2"][key] <= 1.0 for key in ("dice", "iou", "precision", "recall"))
        assert row["table3"] is not None  # the lesion is small on every slice
        tables = json.loads((output / "evaluations" / row["model"] / "tables.json").read_text())
        assert tables["preset"] == row["model"]
    text = (output / "release_tables.md").read_text()
    for row in rows:
        line = next(line for line in text.splitlines() if line.startswith(f"| {row['display_name']} |"))
        ours, paper = row["table2"]["dice"], PAPER_TABLE2[row["model"]]["dice"]
        assert f"| {ours:.3f} | {paper:.3f} | {ours - paper:+.3f} |" in line

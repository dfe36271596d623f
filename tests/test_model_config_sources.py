"""A model config that a model cannot take, and weights that do not fit the model asked for, end in one
line naming where they came from (the file, the flag, the checkpoint) and the problem in the user's words.

Entry points of a model config: ``--model_config`` (inline or a file: a release-style config file, a run
folder's ``config.json``) of train, evaluate and predict; a checkpoint's recorded ``model_config`` (ours, or
a ``.safetensors`` export's metadata); ``compare --model_overrides``; ``download --check_config``.
Weights that do not fit: another slice count (``--n_chunk``) than the checkpoint was trained with, whether it
records its slices or not (the authors' ``.pth`` and Keras ``.h5`` files record none), another model, other
layer widths.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SMALL_SPIN_CONFIG, SMALL_SPIN_RELEASE_CHECKPOINT, TESTS, write_volume_set
from spinseg.errors import UserInputError
from spinseg.models import build_model
from spinseg.models.checkpoint import export_safetensors, load_model, read_checkpoint, save_checkpoint
from spinseg.models.model_config import check_model_config, parse_model_config
from spinseg.recipes.preprocessing import PreprocessingFlags, load_with_preprocessing

SMALL_SPIN = json.loads(Path(SMALL_SPIN_CONFIG).read_text())["config"]
SMALL_UNET = {"n_filters_encoder_segmentation": [4, 4, 8, 8, 8], "n_filters_decoder_segmentation": [8, 8, 4, 4]}


def one_line_exit_2(main, argv: list[str], capsys) -> str:
    """Runs a CLI ``main`` in-process; asserts exit code 2 and one ``error:`` line on stderr, which it returns."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def write_json(path: Path, value) -> str:
    path.write_text(json.dumps(value))
    return str(path)


def our_checkpoint(path: Path, model_config_change: dict | None = None, record_slices: bool = True) -> str:
    """One of our checkpoints of the small SPiN (5 slices); ``model_config_change`` edits its recorded config."""
    from spinseg.recipes.config import TrainConfig
    from spinseg.recipes.preprocessing import preprocessing_record

    model = build_model("spin", **SMALL_SPIN)
    if record_slices:
        model.preprocessing = preprocessing_record(TrainConfig())
    save_checkpoint(path, model)
    if model_config_change:
        checkpoint = read_checkpoint(path)
        checkpoint["model_config"].update(model_config_change)
        torch.save(checkpoint, path)
    return str(path)


# ---------------------------------------------------------------------------------------------
# The config's own problems, named by its source.


@pytest.mark.parametrize("change, words", [
    ({"n_filterz_encoder_segmentation": [4]}, ["unknown key 'n_filterz_encoder_segmentation'", "did you mean 'n_filters_encoder_segmentation'"]),
    ({"use_batch_norm": "yes"}, ["use_batch_norm must be true or false", '"yes"']),
    ({"n_filters_encoder_segmentation": [8, 8, 12, 12, 16.5]}, ["n_filters_encoder_segmentation must hold whole numbers >= 1 (found 16.5)"]),
    ({"encoder_type_segmentation": "resnet18"}, ["encoder_type_segmentation must be a list of text values (found \"resnet18\")"]),
    ({"n_filters_subpixel_guidance": [4, 0]}, ["n_filters_subpixel_guidance must hold whole numbers >= 1", "found 0"]),
])
def test_a_config_file_is_named_with_the_key(tmp_path, change, words):
    path = write_json(tmp_path / "my_config.json", {**SMALL_SPIN, **change})
    with pytest.raises(UserInputError) as error:
        check_model_config("spin", parse_model_config(path))
    message = str(error.value)
    assert message.startswith(f"--model_config {path}: ") and "\n" not in message
    for word in words:
        assert word in message, message


def test_an_inline_config_is_named_and_another_models_key_is_refused():
    with pytest.raises(UserInputError, match=r"^--model_config '\{\"n_filters\": \[8, 8\]\}': unknown key 'n_filters' for model 'unet'"):
        check_model_config("unet", parse_model_config('{"n_filters": [8, 8]}'))
    with pytest.raises(UserInputError, match=r"dropout_rate must lie in \[0, 1\) \(found 1.5\)"):
        check_model_config("dunet", parse_model_config('{"dropout_rate": 1.5}'))


def test_a_run_folders_config_json_gives_its_model_config_and_names_the_file(tmp_path):
    run_config = {"model_name": "unet", "n_chunk": 5, "learning_rates": [3e-4], "model_config": {"input_channels": 5, **SMALL_UNET}}
    path = write_json(tmp_path / "config.json", run_config)
    config = parse_model_config(path)
    assert dict(config) == run_config["model_config"]
    check_model_config("unet", config)  # the model it was written for takes it
    with pytest.raises(UserInputError, match=rf"^--model_config {path}: a config of model 'unet', not 'spin'$"):
        check_model_config("spin", config)


def test_a_config_file_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "windows.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(SMALL_SPIN).encode())
    assert dict(parse_model_config(str(path))) == SMALL_SPIN


@pytest.mark.parametrize("change, words", [
    ({"n_filterz": 3}, ["unknown key 'n_filterz' for model 'spin'"]),
    ({"activation_func": 7}, ["activation_func must be text (found 7)"]),
    ({"n_filters_encoder_segmentation": [8, 8, -12, 12, 16]}, ["n_filters_encoder_segmentation", "found -12"]),
])
def test_a_checkpoints_recorded_config_is_named_by_the_checkpoint(tmp_path, change, words):
    path = our_checkpoint(tmp_path / "ours.pth", change)
    for load in (lambda: load_model(path, "spin"), lambda: load_with_preprocessing(path, PreprocessingFlags())):
        with pytest.raises(UserInputError) as error:
            load()
        assert str(error.value).startswith(f"{path}: its recorded model_config: "), error.value
        assert all(word in str(error.value) for word in words), error.value


def test_a_safetensors_exports_recorded_config_is_named_by_the_file(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    exported = export_safetensors(our_checkpoint(tmp_path / "ours.pth"), tmp_path / "ours.safetensors")
    with safe_open(str(exported), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}
    metadata["model_config"] = json.dumps({**json.loads(metadata["model_config"]), "n_filterz": 3})
    save_file(tensors, str(exported), metadata=metadata)
    with pytest.raises(UserInputError, match=rf"^{exported}: its recorded model_config: unknown key 'n_filterz'"):
        load_model(exported, "spin")


def test_train_evaluate_and_predict_name_the_config_file(tmp_path, capsys):
    from spinseg.cli import evaluate, predict, train

    scans, masks = write_volume_set(tmp_path / "data", 1, shape=(24, 28, 8))
    bad = write_json(tmp_path / "typo.json", {**SMALL_SPIN, "n_filter_encoder_segmentation": [8]})
    expected = f"error: --model_config {bad}: unknown key 'n_filter_encoder_segmentation' for model 'spin'"
    train_line = one_line_exit_2(train.main, [
        "--train_multimodal_scan_paths", str(scans), "--train_ground_truth_path", str(masks), "--model_config", bad,
        "--max_steps", "1", "--n_workers", "0", "--device", "cpu", "--checkpoint_path", str(tmp_path / "run")], capsys)
    evaluate_line = one_line_exit_2(evaluate.main, [
        "--multimodal_scan_paths", str(scans), "--ground_truth_path", str(masks), "--model_config", bad,
        "--restore_path", SMALL_SPIN_RELEASE_CHECKPOINT, "--device", "cpu", "--output_path", str(tmp_path / "evaluation")], capsys)
    preset_line = one_line_exit_2(evaluate.main, [
        "--multimodal_scan_paths", str(scans), "--ground_truth_path", str(masks), "--model_config", bad, "--preset", "spin",
        "--restore_path", SMALL_SPIN_RELEASE_CHECKPOINT, "--device", "cpu", "--output_path", str(tmp_path / "preset")], capsys)
    import nibabel

    nibabel.save(nibabel.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), tmp_path / "scan.nii.gz")
    predict_line = one_line_exit_2(predict.main, [
        "--checkpoint", SMALL_SPIN_RELEASE_CHECKPOINT, "--model_config", bad, "--input", str(tmp_path / "scan.nii.gz"),
        "--output", str(tmp_path / "masks"), "--device", "cpu"], capsys)
    for line in (train_line, evaluate_line, preset_line, predict_line):
        assert line.startswith(expected), line
    assert not (tmp_path / "run").exists() and not (tmp_path / "evaluation").exists() and not (tmp_path / "masks").exists()


def test_compare_overrides_and_download_check_configs_name_their_flag(tmp_path, capsys):
    from spinseg.cli import compare
    from spinseg.inference.pretrained import parse_check_configs

    line = one_line_exit_2(compare.main, ["--model_overrides", '{"unet": {"n_filters": [4]}}', "--output_dir", str(tmp_path / "c")], capsys)
    assert line.startswith("error: --model_overrides unet: unknown key 'n_filters' for model 'unet'"), line
    line = one_line_exit_2(compare.main, ["--model_overrides", '[1, 2]', "--output_dir", str(tmp_path / "c")], capsys)
    assert "--model_overrides: expected a JSON object" in line
    with pytest.raises(UserInputError, match=r"^--check_config unet='\{\"use_batch_norm\": 1\}': use_batch_norm must be true or false"):
        parse_check_configs(['unet={"use_batch_norm": 1}'])


# ---------------------------------------------------------------------------------------------
# Weights that do not fit the model asked for.


def small_spin_without_width(tmp_path: Path) -> dict:
    """The small SPiN config without ``input_channels``: the slices (--n_chunk) set the input width."""
    return {key: value for key, value in SMALL_SPIN.items() if key != "input_channels"}


def test_n_chunk_other_than_an_authors_checkpoint_names_both_slice_counts(tmp_path):
    # The authors' .pth records no slices: the mismatch shows in the weights, and is said in slices.
    flags = PreprocessingFlags("spin", small_spin_without_width(tmp_path), n_chunk=3)
    with pytest.raises(UserInputError) as error:
        load_with_preprocessing(SMALL_SPIN_RELEASE_CHECKPOINT, flags)
    assert str(error.value) == f"{SMALL_SPIN_RELEASE_CHECKPOINT}: the model was trained on 5 stacked slices, not --n_chunk 3"
    # Loaded the same way with its slice count, it loads.
    model, preprocessing = load_with_preprocessing(SMALL_SPIN_RELEASE_CHECKPOINT, PreprocessingFlags("spin", small_spin_without_width(tmp_path), n_chunk=5))
    assert model.in_channels == preprocessing.n_chunk == 5


def test_n_chunk_other_than_a_recorded_one_and_the_recipes_slices(tmp_path):
    recorded = our_checkpoint(tmp_path / "ours.pth")
    with pytest.raises(UserInputError, match=r"trained on 5 stacked slices, not --n_chunk 3$"):
        load_with_preprocessing(recorded, PreprocessingFlags(n_chunk=3))
    # A bare state dict of a U-Net trained on 5 slices, predicted with the U-Net recipe's 1 slice.
    bare = tmp_path / "unet_5_slices.pth"
    torch.save(build_model("unet", input_channels=5, **SMALL_UNET).state_dict(), bare)
    with pytest.raises(UserInputError) as error:
        load_with_preprocessing(bare, PreprocessingFlags("unet", SMALL_UNET))
    assert str(error.value) == f"{bare}: the model was trained on 5 stacked slices, not the 1 of recipe unet (give --n_chunk 5)"


def test_n_chunk_other_than_a_keras_files_is_an_error(tmp_path):
    keras_file = TESTS / "fixtures" / "xnet_small_weights.h5"
    model, preprocessing = load_with_preprocessing(keras_file, PreprocessingFlags("xnet"))
    width = model.in_channels
    with pytest.raises(UserInputError) as error:
        load_with_preprocessing(keras_file, PreprocessingFlags("xnet", n_chunk=width + 2))
    assert str(error.value) == f"{keras_file}: the model was trained on {width} stacked slices, not --n_chunk {width + 2}"


def test_another_models_weights_are_named_as_that_model(tmp_path):
    with pytest.raises(UserInputError) as error:
        load_model(SMALL_SPIN_RELEASE_CHECKPOINT, "unet", **SMALL_UNET)
    assert str(error.value) == (f"{SMALL_SPIN_RELEASE_CHECKPOINT}: checkpoint does not fit model 'unet': "
                                "its weights are those of a 'spin' network (--model spin)")
    bare = tmp_path / "unet.pth"
    torch.save(build_model("unet", input_channels=5, **SMALL_UNET).state_dict(), bare)
    with pytest.raises(UserInputError, match="its weights are those of a 'unet' network"):
        load_model(bare, "spin", **SMALL_SPIN)


def test_other_layer_widths_are_one_short_line_with_the_advice(tmp_path):
    with pytest.raises(UserInputError) as error:
        load_model(SMALL_SPIN_RELEASE_CHECKPOINT, "spin")  # the paper's widths: 16 filters, not the fixture's 4
    message = str(error.value)
    assert message.startswith(f"{SMALL_SPIN_RELEASE_CHECKPOINT}: checkpoint does not fit model 'spin' as configured (shape ")
    assert "(4, 5, 5, 5) != (16, 5, 5, 5)" in message and message.endswith("give the model config it was trained with (--model_config)")
    assert len(message) < 400 and "\n" not in message


# ---------------------------------------------------------------------------------------------
# Hostile inputs of the third round: what a user gives is named as what it is.


def test_a_folder_where_a_file_is_meant_is_called_a_folder(tmp_path):
    from spinseg.data.volumes import read_path_list
    from spinseg.models.checkpoint import read_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    our_checkpoint(run / "checkpoints" / "best.pth")
    with pytest.raises(UserInputError, match=rf"^{run}: is a folder, not a checkpoint file \(it holds checkpoints/best.pth\)$"):
        read_checkpoint(run)
    with pytest.raises(UserInputError, match=rf"^{run}: is a folder, not a checkpoint file"):
        load_with_preprocessing(run, PreprocessingFlags())
    with pytest.raises(UserInputError, match=rf"^{tmp_path / 'nothing.pth'}: checkpoint not found$"):
        read_checkpoint(tmp_path / "nothing.pth")
    listing = tmp_path / "scans.txt"
    listing.write_text(f"{run}\n")
    with pytest.raises(UserInputError, match=rf"^{listing}: line 1: {run} is a folder, not a file$"):
        read_path_list(listing)
    with pytest.raises(UserInputError, match=rf"^{tmp_path}: is a folder, not a path list file \(it holds scans.txt\)$"):
        read_path_list(tmp_path)


@pytest.mark.parametrize("change, words", [
    ({"model_state_dict": None}, "its model_state_dict is missing or not a dict of tensors (found NoneType)"),
    ({"model_state_dict": [1, 2]}, "its model_state_dict is missing or not a dict of tensors (found list)"),
    ({"preprocessing": {"n_chunk": "five"}}, "its recorded n_chunk must be a whole number >= 1 (found 'five')"),
    ({"preprocessing": {"n_chunk": 5, "threshold": 1.5}}, "its recorded threshold must be a number in (0, 1) (found 1.5)"),
    ({"model_name": 7}, "its recorded model_name must be text (found 7)"),
])
def test_a_damaged_checkpoint_record_is_one_line_not_a_traceback(tmp_path, change, words):
    path = tmp_path / "damaged.pth"
    checkpoint = read_checkpoint(our_checkpoint(tmp_path / "ours.pth"))
    for key, value in change.items():
        if value is None:
            checkpoint.pop(key)
        else:
            checkpoint[key] = value
    torch.save(checkpoint, path)
    with pytest.raises(UserInputError) as error:
        load_with_preprocessing(path, PreprocessingFlags())
    assert str(error.value) == f"{path}: {words}"


def test_a_key_given_twice_is_refused():
    with pytest.raises(UserInputError, match=r"key 'use_batch_norm' is given twice$"):
        parse_model_config('{"use_batch_norm": true, "n_filters": [4], "use_batch_norm": false}')


def test_a_zip_archive_given_as_a_checkpoint_is_called_one(tmp_path):
    import zipfile

    archive_path = tmp_path / "release.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.write(SMALL_SPIN_RELEASE_CHECKPOINT, "spin/spin_atlas_traintest.pth")
    with pytest.raises(UserInputError, match=r"a zip archive of spin/spin_atlas_traintest.pth, not a saved model: unpack it"):
        read_checkpoint(archive_path)


def test_score_refuses_the_same_masks_as_prediction_and_ground_truth(tmp_path):
    import nibabel

    from spinseg.evaluation.scoring import collect_masks, pair_subjects

    mask = np.zeros((6, 6, 6), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    for subject in ("a", "b"):
        nibabel.save(nibabel.Nifti1Image(mask, np.eye(4)), tmp_path / f"{subject}.nii.gz")
    masks = collect_masks(str(tmp_path), "", "--pred")
    with pytest.raises(UserInputError, match=r"a.nii.gz: is both the prediction and the ground truth of subject 'a' \(and of 1 more\)"):
        pair_subjects(masks, collect_masks(str(tmp_path / "." / ""), "", "--gt"))
    other = tmp_path / "ground_truths"
    other.mkdir()
    nibabel.save(nibabel.Nifti1Image(mask, np.eye(4)), other / "a.nii.gz")
    assert [key for key, _, _ in pair_subjects(masks, collect_masks(str(other), "", "--gt")).pairs] == ["a"]


def test_train_refuses_an_input_width_other_than_the_slices_before_making_the_run_folder(tmp_path, capsys):
    from spinseg.cli import train

    scans, masks = write_volume_set(tmp_path / "data", 1, shape=(24, 28, 8))
    config = write_json(tmp_path / "width.json", {**SMALL_SPIN, "input_channels": 3})
    line = one_line_exit_2(train.main, [
        "--train_multimodal_scan_paths", str(scans), "--train_ground_truth_path", str(masks), "--model_config", config,
        "--n_chunk", "5", "--max_steps", "1", "--n_workers", "0", "--device", "cpu", "--checkpoint_path", str(tmp_path / "run")], capsys)
    assert line == f"error: --model_config {config}: input_channels 3 does not fit --n_chunk 5 (5 slice(s) x 1 channel(s) = 5); leave input_channels out"
    assert not (tmp_path / "run").exists()

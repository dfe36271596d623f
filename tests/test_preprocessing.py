"""Checkpoints carry their preprocessing: evaluate and predict take the model, its config, the
slices, the normalisation and the threshold from the checkpoint (ours), or from the model's
recipe (the authors'), and flags override them (a model or slice conflict is an error)."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import SMALL_SPIN_CONFIG, write_volume_set
from spinseg.checkpoint import save_checkpoint
from spinseg.cli import predict as predict_cli
from spinseg.constants import ATLAS_MEAN, ATLAS_STD
from spinseg.errors import UserInputError
from spinseg.models import build_model
from spinseg.models.checkpoint import export_safetensors, read_checkpoint
from spinseg.models.model_config import parse_model_config
from spinseg.recipes.config import EvaluateConfig, TrainConfig
from spinseg.recipes.preprocessing import PreprocessingFlags, load_with_preprocessing, resolve_preprocessing

# Statistics no recipe uses, so a run that guessed them from the model name would show.
OTHER_MEANS, OTHER_STDDEVS = [12.5], [4.0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small SPiN trained for 2 steps with OTHER_MEANS / OTHER_STDDEVS; (scans, masks, checkpoint)."""
    from spinseg.training.trainer import train

    folder = tmp_path_factory.mktemp("trained")
    scans, masks = write_volume_set(folder / "data", 2, shape=(24, 28, 8), seed=1)
    train(TrainConfig(
        train_multimodal_scan_paths=str(scans), train_ground_truth_path=str(masks), model_config=SMALL_SPIN_CONFIG,
        n_batch=2, crop_shape=[16, 16], dataset_means=OTHER_MEANS, dataset_stddevs=OTHER_STDDEVS, max_steps=2,
        learning_rates=[1e-3], learning_schedule=[10], augmentation_probabilities=[0.0], augmentation_schedule=[10],
        n_summary=1, n_checkpoint=2, n_validation=0, checkpoint_path=str(folder / "run"), n_workers=0, device="cpu",
    ))
    return scans, masks, folder / "run" / "checkpoints" / "model-00000002.pth"


def test_the_trainer_writes_an_explicit_record(trained):
    checkpoint = read_checkpoint(trained[2])
    assert checkpoint["preprocessing"] == {"n_chunk": 5, "dataset_normalization": "standard", "dataset_means": OTHER_MEANS,
                                           "dataset_stddevs": OTHER_STDDEVS, "threshold": 0.5}


def test_evaluate_uses_the_checkpoints_statistics_without_flags(trained, tmp_path, monkeypatch):
    from spinseg.evaluation import evaluator

    seen = []
    original = evaluator.predict_volume
    monkeypatch.setattr(evaluator, "predict_volume",
                        lambda model, scan, options: seen.append((options.normalization, options.n_chunk))
                        or original(model, scan, options))
    scans, masks, checkpoint = trained
    evaluator.evaluate(EvaluateConfig(multimodal_scan_paths=str(scans), ground_truth_path=str(masks),
                                      restore_path=str(checkpoint), output_path=str(tmp_path / "eval"), device="cpu"))
    assert len(seen) == 2
    for normalization, n_chunk in seen:
        assert list(normalization.means) == OTHER_MEANS and list(normalization.stddevs) == OTHER_STDDEVS and n_chunk == 5


def test_predict_uses_the_checkpoints_statistics_without_flags(trained, tmp_path, monkeypatch):
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), tmp_path / "scan.nii.gz")
    calls = []
    monkeypatch.setattr(predict_cli, "run_study", lambda *args, **kwargs: calls.append((args, kwargs)) or [])
    assert predict_cli.main(["--checkpoint", str(trained[2]), "--input", str(tmp_path / "scan.nii.gz"),
                             "--output", str(tmp_path / "out"), "--device", "cpu"]) == 0
    (args, kwargs), = calls
    settings = args[3]  # run_study(model, jobs, output, settings, ...)
    n_chunk, normalization, threshold = settings.n_chunk, settings.normalization, settings.threshold
    assert (n_chunk, list(normalization.means), list(normalization.stddevs), threshold) == (5, OTHER_MEANS, OTHER_STDDEVS, 0.5)
    assert kwargs["report_extra"]["model"] == "spin" and kwargs["report_extra"]["preprocessing_from"] == "checkpoint"


def test_flags_override_with_one_warning_line_and_conflicts_are_errors(trained, capsys):
    checkpoint = read_checkpoint(trained[2])
    resolved = resolve_preprocessing(checkpoint, PreprocessingFlags(dataset_means=[0.0], threshold=0.3), "ckpt")
    assert resolved.dataset_means == [0.0] and resolved.dataset_stddevs == OTHER_STDDEVS and resolved.threshold == 0.3
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: ckpt:") and "--dataset_means [0.0]" in warning[0]
    with pytest.raises(UserInputError, match="checkpoint of model 'spin', not --model 'unet'"):
        resolve_preprocessing(checkpoint, PreprocessingFlags(model_name="unet"), "ckpt")
    with pytest.raises(UserInputError, match="checkpoint of model 'spin', not --recipe dunet 'dunet'"):
        resolve_preprocessing(checkpoint, PreprocessingFlags(recipe="dunet"), "ckpt")
    with pytest.raises(UserInputError, match="trained on 5 stacked slices, not --n_chunk 3"):
        resolve_preprocessing(checkpoint, PreprocessingFlags(n_chunk=3), "ckpt")


def test_older_checkpoints_of_ours_derive_it_from_their_train_config(trained):
    checkpoint = read_checkpoint(trained[2])
    del checkpoint["preprocessing"]
    resolved = resolve_preprocessing(checkpoint, PreprocessingFlags())
    assert (resolved.n_chunk, resolved.dataset_means, resolved.source) == (5, OTHER_MEANS, "train_config")


def test_safetensors_exports_carry_the_record(trained, tmp_path):
    path = export_safetensors(trained[2], tmp_path / "model.safetensors")
    model, resolved = load_with_preprocessing(path, PreprocessingFlags())
    assert (resolved.model_name, resolved.dataset_means, resolved.n_chunk) == ("spin", OTHER_MEANS, 5)
    assert model.in_channels == 5


def test_release_checkpoints_get_the_recipe_of_their_model(tmp_path):
    config = {"n_filters_encoder_segmentation": [4, 4, 8, 8, 8], "n_filters_decoder_segmentation": [8, 8, 4, 4]}
    torch.save(build_model("unet", **config).release_state_dicts(), tmp_path / "unet.pth")
    model, resolved = load_with_preprocessing(tmp_path / "unet.pth", PreprocessingFlags(model_config=config, recipe="unet"))
    assert (resolved.n_chunk, resolved.dataset_means, resolved.dataset_stddevs) == (1, [ATLAS_MEAN], [ATLAS_STD])
    assert model.in_channels == 1 and resolved.source == "recipe unet"
    # X-Net's recipe divides by 100 (the release's h5 export): a different model, a different recipe.
    torch.save(build_model("xnet", n_filters=[4, 8]).state_dict(), tmp_path / "xnet.pth")
    _, resolved = load_with_preprocessing(tmp_path / "xnet.pth", PreprocessingFlags("xnet", {"n_filters": [4, 8]}))
    assert (resolved.dataset_means, resolved.dataset_stddevs) == ([0.0], [100.0])


def test_a_saved_model_without_training_records_its_width_as_slices(tmp_path):
    model = build_model("spin", **{**parse_model_config(SMALL_SPIN_CONFIG), "input_channels": 3})
    save_checkpoint(tmp_path / "plain.pth", model)
    _, resolved = load_with_preprocessing(tmp_path / "plain.pth", PreprocessingFlags())
    assert resolved.n_chunk == 3 and resolved.model_config == json.loads(json.dumps(model.config))


def test_the_authors_keras_files_get_their_recipe_and_their_own_input_width():
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures"
    model, resolved = load_with_preprocessing(fixtures / "xnet_small_weights.h5", PreprocessingFlags("xnet"))
    assert (resolved.dataset_means, resolved.dataset_stddevs, resolved.source) == ([0.0], [100.0], "recipe xnet")
    assert resolved.n_chunk == model.in_channels and resolved.model_config == model.config

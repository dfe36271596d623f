"""The release recipes' training details: plateau schedule and early stopping, fixed windows, release
input scaling, D-UNet's 4-slice stack (docs/release_recipes.md)."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from conftest import SMALL_SPIN_CONFIG, write_volume_set
from spinseg.data.transforms import Normalization
from spinseg.models.checkpoint import read_checkpoint
from spinseg.recipes.config import TrainConfig
from spinseg.recipes.named import train_defaults
from spinseg.training import trainer
from spinseg.training.losses import build_loss
from spinseg.training.plateau import validation_loss


def plateau_config(tmp_path, scans, masks, **extra) -> TrainConfig:
    """Batch 2 on 4 volumes (2 steps an epoch), validation every 2 steps, the Keras plateau settings."""
    settings = dict(
        train_multimodal_scan_paths=str(scans), train_ground_truth_path=str(masks),
        val_multimodal_scan_paths=str(scans), val_ground_truth_path=str(masks),
        model_config=SMALL_SPIN_CONFIG, n_batch=2, learning_rates=[2e-3], learning_schedule=[50],
        augmentation_probabilities=[0.0], augmentation_schedule=[-1], n_summary=100, n_checkpoint=100,
        n_validation=2, checkpoint_path=str(tmp_path / "run"), n_workers=0, seed=5, crop_shape=[16, 16],
        lr_schedule="plateau", plateau_factor=0.2, plateau_patience=3, plateau_min_delta=1e-3,
        early_stopping_patience=5,
    )
    return TrainConfig(**{**settings, **extra})


def test_plateau_lowers_the_rate_after_patience_and_early_stopping_ends_the_run(tmp_path, monkeypatch, capsys):
    scans, masks = write_volume_set(tmp_path / "data", 4, shape=(20, 20, 8), seed=2)
    calls = []

    def flat_validation_loss(model, *arguments, **keywords):
        calls.append(validation_loss(model, *arguments, **keywords))  # the real loss is computed and finite
        return 0.5  # never improves after the first validation

    monkeypatch.setattr(trainer, "validation_loss", flat_validation_loss)
    summary = trainer.train(plateau_config(tmp_path, scans, masks))
    printed = capsys.readouterr().out
    rates = [float(rate) for rate in re.findall(r"validation loss [\d.]+, learning rate ([\d.e-]+)", printed)]
    # Validation 1 sets the best; 2-4 do not improve: Keras (patience 3) multiplies the rate by 0.2 at the
    # 4th and resets its count, so 5 and 6 keep it; EarlyStopping (patience 5) stops at the 6th.
    assert rates == pytest.approx([2e-3, 2e-3, 2e-3, 4e-4, 4e-4, 4e-4])
    assert summary["stopped_early"] and summary["steps"] == 12
    assert len(calls) == 6 and all(math.isfinite(value) and value > 0 for value in calls)
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / "model-00000012.pth")
    assert checkpoint["optimizer_state_dict"]["param_groups"][0]["lr"] == pytest.approx(4e-4)
    assert checkpoint["train_state"]["early_stopping"]["wait"] == 5


def test_a_resumed_run_keeps_the_plateau_count_and_the_reduced_rate(tmp_path, monkeypatch, capsys):
    scans, masks = write_volume_set(tmp_path / "data", 4, shape=(20, 20, 8), seed=2)
    monkeypatch.setattr(trainer, "validation_loss", lambda *arguments, **keywords: 0.5)
    first = trainer.train(plateau_config(tmp_path, scans, masks, max_steps=6, n_checkpoint=2))
    assert first["steps"] == 6 and not first["stopped_early"]  # validations 1-3: best, then 2 without improvement
    capsys.readouterr()
    resumed = trainer.train(plateau_config(tmp_path, scans, masks, n_checkpoint=2, resume=True))
    rates = [float(rate) for rate in re.findall(r"learning rate ([\d.e-]+)", capsys.readouterr().out)]
    # As the uninterrupted run: the 4th validation (step 8) reduces, the 6th (step 12) stops.
    assert rates == pytest.approx([4e-4, 4e-4, 4e-4])
    assert resumed["stopped_early"] and resumed["steps"] == 12


def test_an_improving_validation_loss_keeps_the_rate_and_the_run_goes_to_the_end(tmp_path, monkeypatch, capsys):
    scans, masks = write_volume_set(tmp_path / "data", 4, shape=(20, 20, 8), seed=2)
    losses = iter(np.linspace(1.0, 0.5, 100))
    monkeypatch.setattr(trainer, "validation_loss", lambda *arguments, **keywords: float(next(losses)))
    summary = trainer.train(plateau_config(tmp_path, scans, masks, max_steps=10))
    rates = re.findall(r"learning rate ([\d.e-]+)", capsys.readouterr().out)
    assert not summary["stopped_early"] and summary["steps"] == 10
    assert set(rates) == {"0.002"}


class ConstantLogits(torch.nn.Module):
    """Logit 0 everywhere: probability 1/2, so the weighted cross-entropy is known by hand."""

    def forward(self, images):
        return torch.zeros(images.shape[0], 1, *images.shape[2:])


def test_validation_loss_is_the_recipe_loss_over_every_slice(tmp_path):
    scans, masks = write_volume_set(tmp_path / "data", 2, shape=(18, 17, 7), seed=3)
    scan_paths, mask_paths = scans.read_text().split(), masks.read_text().split()
    config = TrainConfig(n_chunk=3, val_batch_size=2)
    loss = validation_loss(ConstantLogits(), scan_paths, mask_paths, config, Normalization(),
                           build_loss("cross_entropy", 1.5), torch.device("cpu"))
    # BCE of logit 0 is log 2 per pixel, lesion pixels weighted 1.5: batches of 2, 2, 2, 1 slices per volume.
    expected, count = 0.0, 0
    for path in mask_paths:
        mask = np.load(path) > 0
        for start in range(0, 7, 2):
            block = mask[..., start : start + 2]
            expected += math.log(2) * (1 + 0.5 * block.mean()) * block.shape[-1]
            count += block.shape[-1]
    assert loss == pytest.approx(expected / count, rel=1e-6)


def test_keras_plateau_recipes_set_the_release_callbacks():
    for name in ("xnet_release", "clcinet_release"):
        defaults = train_defaults(name)
        assert (defaults["lr_schedule"], defaults["plateau_factor"], defaults["plateau_patience"]) == ("plateau", 0.2, 3)
        assert (defaults["plateau_min_delta"], defaults["early_stopping_patience"]) == (1e-3, 5)
        assert defaults["validation_epochs"] == 189 and defaults["val_batch_size"] == 9
    assert train_defaults("spin").get("lr_schedule", "steps") == "steps"


# ---------------------------------------------------------------------------------------------
# Fixed windows, release input scaling and the 4-slice stack.

ATLAS_SHAPE = (197, 233, 8)  # the release's windows are written for 197 x 233 slices


def release_recipe_config(name: str, scans, masks, **extra) -> TrainConfig:
    """``--recipe name`` on the given lists, CPU, no workers, no validation."""
    defaults = {**train_defaults(name), "train_multimodal_scan_paths": str(scans), "train_ground_truth_path": str(masks),
                "n_workers": 0, "device": "cpu", "n_batch": 3, **extra}
    return TrainConfig(**defaults)


def first_batch(config: TrainConfig):
    """The first training batch the trainer's loader gives for ``config`` ((B, C, h, w), (B, 1, h, w))."""
    from spinseg.runtime.distributed import DistributedContext

    normalization = Normalization(config.dataset_normalization, config.dataset_means, config.dataset_stddevs)
    data = trainer.build_training_data(config, DistributedContext(), torch.device("cpu"),
                                       trainer.read_training_inputs(config), normalization)
    data.dataset.set_epoch(0)
    data.dataset.positive_class_sample_rate = 0.5
    return next(iter(data.loader))


def volumes_of(scans, masks):
    return [(np.load(scan), np.load(mask)) for scan, mask in zip(scans.read_text().split(), masks.read_text().split())]


def matching_slices(image: np.ndarray, target: np.ndarray, volumes, expected_input, expected_target) -> list:
    """(volume, slice) pairs whose expected input and target equal the sample's exactly."""
    return [(number, index) for number, (scan, mask) in enumerate(volumes) for index in range(scan.shape[-1])
            if np.array_equal(image, expected_input(scan, index)) and np.array_equal(target, expected_target(mask, index))]


@pytest.mark.parametrize("name, columns", [("xnet_release", (2, 194)), ("clcinet_release", (11, 187))])
def test_a_keras_release_batch_is_the_fixed_window_of_the_transposed_slice(tmp_path, name, columns):
    scans, masks = write_volume_set(tmp_path / "data", 3, shape=ATLAS_SHAPE, seed=4)
    images, targets = first_batch(release_recipe_config(name, scans, masks))
    assert images.shape == (3, 1, 224, columns[1] - columns[0]) and targets.shape == (3, 1, 224, columns[1] - columns[0])

    def window(array, index):  # the release: slice [5:229, columns] of the (2, 1, 0)-transposed volume, T1 / 100
        return np.asarray(array[..., index], dtype=np.float64).T[5:229, columns[0] : columns[1]]

    volumes = volumes_of(scans, masks)
    for image, target in zip(images.numpy(), targets.numpy()):
        found = matching_slices(image[0], target[0], volumes, lambda scan, index: (window(scan, index) / 100).astype(np.float32),
                                lambda mask, index: (window(mask, index) > 0).astype(np.float32))
        assert len(found) >= 1


@pytest.mark.parametrize("name", ["dunet_release", "kiunet_release"])
def test_release_training_inputs_are_the_evaluation_presets_inputs(tmp_path, name):
    from spinseg.recipes.release_inputs import ground_truth_on_grid, model_inputs
    from spinseg.recipes.release_presets import preset

    scans, masks = write_volume_set(tmp_path / "data", 2, shape=ATLAS_SHAPE, seed=6)
    release = preset(name.removesuffix("_release"))
    config = release_recipe_config(name, scans, masks, n_batch=2, augmentation_probabilities=[0.0])
    images, targets = first_batch(config)
    assert images.shape[1:] == (release.n_slices, *release.input_shape(ATLAS_SHAPE[:2]))
    volumes = volumes_of(scans, masks)
    prepared = [model_inputs(scan, release) for scan, _ in volumes]
    grids = [np.moveaxis(ground_truth_on_grid(mask > 0, release), -1, 0).astype(np.float32) for _, mask in volumes]
    for image, target in zip(images.numpy(), targets.numpy()):
        found = [(number, index) for number in range(len(volumes)) for index in range(ATLAS_SHAPE[2])
                 if np.array_equal(image, prepared[number][index]) and np.array_equal(target[0], grids[number][index])]
        assert found, "a training sample that is no slice's evaluation input"


def test_an_even_stack_is_the_release_window_in_training_and_inference(tmp_path):
    from spinseg.data.slices import SliceTrainingDataset
    from spinseg.inference.predictor import InferenceOptions, predict_volume

    volume = np.arange(1, 4 * 5 * 7 + 1, dtype=np.float32).reshape(4, 5, 7)
    mask = np.zeros(volume.shape, dtype=np.uint8)
    np.save(tmp_path / "scan.npy", volume)
    np.save(tmp_path / "mask.npy", mask)
    normalization = Normalization("none")

    def release_stack(index):  # slices i-2, i-1, i, i+1; zeros (the pad value) beyond the volume
        return np.stack([volume[..., j] if 0 <= j < 7 else np.zeros((4, 5), np.float32) for j in range(index - 2, index + 2)])

    dataset = SliceTrainingDataset([str(tmp_path / "scan.npy")], [str(tmp_path / "mask.npy")], n_chunk=4,
                                   normalization=normalization, positive_class_sample_rate=0.0)
    seen = set()
    for epoch in range(40):
        dataset.set_epoch(epoch)
        image = dataset[0][0].numpy()
        index = int(np.flatnonzero([np.array_equal(image[2], volume[..., i]) for i in range(7)])[0])
        np.testing.assert_array_equal(image, release_stack(index))
        seen.add(index)
    assert {0, 1, 5, 6} & seen  # the edges were drawn, with their padding

    class RecordingModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inputs = []

        def forward(self, images):
            self.inputs.append(images.clone())
            return torch.zeros(images.shape[0], 1, *images.shape[2:])

    model = RecordingModel()
    predict_volume(model, volume, InferenceOptions(normalization=normalization, n_chunk=4, batch_size=7, prepare=False))
    (inputs,) = model.inputs
    for index in range(7):
        np.testing.assert_array_equal(inputs[index].numpy(), release_stack(index))


def test_dunet_release_recipe_stacks_four_slices_and_validates_with_the_preset(tmp_path):
    defaults = train_defaults("dunet_release")
    assert defaults["n_chunk"] == 4 and defaults["release_inputs"] == "dunet"
    from spinseg.errors import UserInputError
    from spinseg.recipes.config import validate_train_config

    with pytest.raises(UserInputError, match="--release_inputs dunet stacks 4 slice"):
        validate_train_config(TrainConfig(**{**defaults, "n_chunk": 5}))
    with pytest.raises(UserInputError, match="fixed window: leave --crop_shape empty"):
        validate_train_config(TrainConfig(**{**defaults, "crop_shape": [64, 64]}))


def test_one_slices_input_is_the_whole_volumes_for_every_preset_and_dunets_is_unchanged():
    from PIL import Image

    from spinseg.recipes.release_inputs import dunet_range, model_inputs, slice_model_input
    from spinseg.recipes.release_presets import PRESETS

    volume = np.random.default_rng(7).uniform(0, 120, (197, 233, 6)).astype(np.float32)  # > 100 wraps in uint8
    for name, release in PRESETS.items():
        whole = model_inputs(volume, release)
        value_range = dunet_range(volume, release) if name == "dunet" else None
        for index in range(volume.shape[-1]):
            np.testing.assert_array_equal(slice_model_input(volume, index, release, value_range), whole[index], err_msg=name)
            np.testing.assert_array_equal(slice_model_input(volume, index, release), whole[index], err_msg=name)

    # D-UNet's preset as the release's eval.py computed it, written out here independently: transpose,
    # uint8(T1 * 2.55), PIL crop (10, 40, 190, 220), Lanczos 192 x 192, min-max over the patient, i-2 .. i+1.
    slices = np.moveaxis(volume, -1, 0).transpose(0, 2, 1)
    resized = np.stack([np.asarray(Image.fromarray(one).crop((10, 40, 190, 220)).resize((192, 192), Image.LANCZOS))
                        for one in (slices.astype(np.float64) * 2.55).astype(np.uint8)]).astype(np.float64)
    scaled = (resized - resized.min()) / (resized.max() - resized.min())
    expected = np.zeros((6, 4, 192, 192), np.float32)
    for index in range(6):
        for channel, source in enumerate(range(index - 2, index + 2)):
            if 0 <= source < 6:
                expected[index, channel] = scaled[source]
    np.testing.assert_array_equal(model_inputs(volume, PRESETS["dunet"]), expected)


def test_a_checkpoint_trained_on_release_inputs_asks_for_its_preset(capsys):
    from spinseg.recipes.preprocessing import PreprocessingFlags, preprocessing_record, resolve_preprocessing

    record = preprocessing_record(TrainConfig(**train_defaults("xnet_release")))
    assert record["release_inputs"] == "xnet"
    assert "release_inputs" not in preprocessing_record(TrainConfig())  # the like-for-like records stay as they were
    resolve_preprocessing({"model_name": "xnet", "model_config": {}, "preprocessing": record}, PreprocessingFlags(), "run.pth")
    assert "run.pth: trained on the release's xnet inputs" in capsys.readouterr().err

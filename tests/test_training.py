"""A short training run learns, and the evaluation of its checkpoint prints the Table 2 row."""
import json

import numpy as np
import torch
import torch.nn.functional as F

from conftest import SMALL_SPIN_CONFIG, write_volume_set
from spinseg.models.checkpoint import load_model
from spinseg.recipes.config import TrainConfig, EvaluateConfig
from spinseg.data.slices import SliceTrainingDataset
from spinseg.evaluation.evaluator import evaluate
from spinseg.runtime.distributed import seed_everything
from spinseg.models.model_config import parse_model_config
from spinseg.training.trainer import train
from spinseg.models import build_model


def fixed_batch(scans, masks):
    dataset = SliceTrainingDataset(
        [line for line in scans.read_text().split()], [line for line in masks.read_text().split()],
        positive_class_sample_rate=1.0, seed=99,
    )
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def mean_loss(model, images, targets):
    model.eval()
    with torch.no_grad():
        return F.binary_cross_entropy_with_logits(model(images), targets, pos_weight=torch.tensor([1.5])).item()


def test_short_training_run_lowers_the_loss_and_evaluates(tmp_path, capsys):
    scans, masks = write_volume_set(tmp_path / "data", 6, seed=1)
    config = TrainConfig(
        train_multimodal_scan_paths=str(scans), train_ground_truth_path=str(masks),
        val_multimodal_scan_paths=str(scans), val_ground_truth_path=str(masks),
        model_config=SMALL_SPIN_CONFIG, n_batch=3, learning_rates=[2e-3], learning_schedule=[20],
        augmentation_probabilities=[0.5], augmentation_schedule=[20], n_summary=5, n_checkpoint=20,
        n_validation=20, checkpoint_path=str(tmp_path / "run"), n_workers=0, seed=5, crop_shape=[24, 24],
    )
    summary = train(config)
    assert summary["steps"] == 40
    assert (tmp_path / "run" / "checkpoints" / "model-00000040.pth").is_file()
    assert (tmp_path / "run" / "best.pth").is_file()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    saved_config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved_config["n_batch"] == 3 and saved_config["model_config"]["input_channels"] == 5

    images, targets = fixed_batch(scans, masks)
    seed_everything(5)
    initial = build_model("spin", **parse_model_config(SMALL_SPIN_CONFIG))
    trained = load_model(tmp_path / "run" / "checkpoints" / "model-00000040.pth", "spin")
    assert mean_loss(trained, images, targets) < 0.6 * mean_loss(initial, images, targets)

    result = evaluate(EvaluateConfig(
        multimodal_scan_paths=str(scans), ground_truth_path=str(masks),
        restore_path=str(tmp_path / "run" / "checkpoints" / "model-00000040.pth"),
        output_path=str(tmp_path / "eval"), do_visualize_predictions=True,
    ))
    printed = capsys.readouterr().out
    assert "Method | DSC | IOU | Precision | Recall" in printed
    assert f"SPiN | {result['table2']['dice']:.3f} |" in printed
    assert len(result["records"]) == 6
    assert 0.0 <= result["table2"]["dice"] <= 1.0
    for name in ("results.txt", "per_subject.json", "per_subject.csv", "report.md", "detection_vs_size.png"):
        assert (tmp_path / "eval" / name).is_file(), name
    assert list((tmp_path / "eval" / "visualizations").rglob("*.png"))


def test_positive_class_sampling_and_crops_hold_lesion(tmp_path):
    scans, masks = write_volume_set(tmp_path, 3, seed=2)
    dataset = SliceTrainingDataset(scans.read_text().split(), masks.read_text().split(),
                                   positive_class_sample_rate=1.0, crop_shape=(16, 16), seed=0)
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            image, target = dataset[index]
            assert image.shape == (5, 16, 16) and target.shape == (1, 16, 16)
            assert target.sum() > 0
    dataset.set_epoch(1)
    first, again = dataset[0], dataset[0]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_edge_slices_are_padded_with_the_dataset_mean(tmp_path):
    from spinseg.data.volumes import stack_slices

    volume = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    chunk = stack_slices(volume, 0, 5, pad_value=30.2)
    assert chunk.shape == (5, 4, 5)
    assert np.all(chunk[:2] == np.float32(30.2))
    np.testing.assert_array_equal(chunk[2], volume[..., 0])
    np.testing.assert_array_equal(chunk[4], volume[..., 2])


def test_bf16_autocast_training_learns_and_keeps_fp32_weights(tmp_path, monkeypatch, capsys):
    """``--amp`` on the CPU: bf16 convolutions, fp32 master weights, and it still learns.

    The machine is made to look as if it had no bf16 units, so the trainer must say bf16 is emulated.
    """
    import spinseg.training.trainer as trainer

    monkeypatch.setattr(trainer, "native_bf16", lambda device: False)
    scans, masks = write_volume_set(tmp_path / "data", 6, seed=1)
    config = TrainConfig(
        train_multimodal_scan_paths=str(scans), train_ground_truth_path=str(masks),
        model_config=SMALL_SPIN_CONFIG, n_batch=3, learning_rates=[2e-3], learning_schedule=[15],
        augmentation_probabilities=[0.5], augmentation_schedule=[15], n_summary=10, n_checkpoint=30,
        n_validation=0, checkpoint_path=str(tmp_path / "run"), n_workers=0, seed=5, crop_shape=[24, 24], amp=True,
    )
    assert train(config)["steps"] == 30
    assert "--amp: cpu has no bf16 arithmetic units" in capsys.readouterr().err
    images, targets = fixed_batch(scans, masks)
    seed_everything(5)
    initial = build_model("spin", **parse_model_config(SMALL_SPIN_CONFIG))
    trained = load_model(tmp_path / "run" / "checkpoints" / "model-00000030.pth", "spin")
    assert all(parameter.dtype == torch.float32 for parameter in trained.parameters())
    assert mean_loss(trained, images, targets) < 0.7 * mean_loss(initial, images, targets)

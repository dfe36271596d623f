"""GLaS and RITE: raw-layout set-up, bad input, the 2-D training dataset and whole-image prediction."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import GLAS_IMAGES, RITE_SHAPE, run_python, write_glas_tree, write_rite_tree
from spinseg.datasets import glas
from spinseg.datasets import rite
from spinseg.data.images import ImageTrainingDataset, is_rgb_image_file
from spinseg.datasets.images_2d import compute_channel_statistics
from spinseg.data.transforms import AugmentationConfig, Normalization
from spinseg.errors import UserInputError
from spinseg.inference.predictor import InferenceOptions, predict_image

REPOSITORY = Path(__file__).resolve().parents[1]
SMALL_SPIN_CONFIG = REPOSITORY / "tests" / "fixtures" / "spin_small_config.json"


def read_list(path: Path) -> list[str]:
    return path.read_text().splitlines()


def run_setup(script: str, *arguments: str) -> subprocess.CompletedProcess:
    """Runs a setup script as the user would, capturing its output."""
    return run_python([str(REPOSITORY / "setup" / script), *arguments], timeout=120)


@pytest.fixture(scope="module")
def glas_prepared(tmp_path_factory):
    """Raw GLaS tree set up once through the CLI (raw sizes kept): (raw dict, output dir, lists dir, stdout)."""
    root = tmp_path_factory.mktemp("glas")
    raw = write_glas_tree(root / "raw")
    result = run_setup(
        "setup_dataset_warwick.py", "--glas_dir", str(root / "raw"), "--output_dir", str(root / "out"), "--lists_dir", str(root / "lists")
    )
    assert result.returncode == 0, result.stderr
    return raw, root / "out", root / "lists", result.stdout


@pytest.fixture(scope="module")
def rite_prepared(tmp_path_factory):
    """Raw RITE tree set up once in-process: (raw dict, output dir, lists dir)."""
    root = tmp_path_factory.mktemp("rite")
    raw = write_rite_tree(root / "raw")
    rite.setup_main(["--rite_dir", str(root / "raw" / "AV_groundTruth"), "--output_dir", str(root / "out"), "--lists_dir", str(root / "lists")])
    return raw, root / "out", root / "lists"


# ---------------------------------------------------------------------------------------------
# GLaS set-up


def test_glas_setup_writes_images_masks_and_lists(glas_prepared):
    raw, output, lists, stdout = glas_prepared
    train_images = read_list(lists / "training/warwick/traintest/train_images.txt")
    train_masks = read_list(lists / "training/warwick/traintest/train_ground_truths.txt")
    test_images = read_list(lists / "testing/warwick/traintest/test_images.txt")
    test_masks = read_list(lists / "testing/warwick/traintest/test_ground_truths.txt")
    test_originals = read_list(lists / "testing/warwick/traintest/test_original_ground_truths.txt")
    assert [Path(path).stem for path in train_images] == ["train_1", "train_2", "train_3"]
    assert [Path(path).stem for path in test_images] == ["testA_1", "testA_2", "testB_1"]
    assert len(train_masks) == 3 and len(test_masks) == 3
    assert test_originals == test_masks  # raw sizes kept: the original-size masks are the masks
    for image_path, mask_path in zip(train_images + test_images, train_masks + test_masks):
        image, mask = np.load(image_path), np.load(mask_path)
        raw_image, raw_labels = raw[Path(image_path).stem]
        assert image.dtype == np.float32 and image.shape == raw_image.shape
        np.testing.assert_array_equal(image, raw_image.astype(np.float32))
        # Instance labels 1..K (palette or grayscale BMP) become one foreground class.
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        np.testing.assert_array_equal(mask, (raw_labels > 0).astype(np.uint8))
        assert is_rgb_image_file(image_path) and not is_rgb_image_file(mask_path)
    assert raw["train_1"][1].max() == 3  # the fixture really is multi-instance

    sizes = json.loads((output / "original_sizes.json").read_text())
    for group, number, shape in GLAS_IMAGES:
        entry = sizes[f"{group}_{number}"]
        assert (entry["height"], entry["width"]) == shape == (entry["stored_height"], entry["stored_width"])

    statistics = json.loads((output / "statistics.json").read_text())
    pixels = np.concatenate([raw[name][0].reshape(-1, 3).astype(np.float64) for name in ("train_1", "train_2", "train_3")])
    np.testing.assert_allclose(statistics["means"], pixels.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(statistics["stddevs"], pixels.std(axis=0), atol=1e-4)
    np.testing.assert_allclose(statistics["pooled_mean"], pixels.mean(), atol=1e-4)
    assert statistics["n_images"] == 3
    assert "--dataset_means " + " ".join(f"{value:.6f}" for value in statistics["means"]) in stdout
    assert "train 3, testA 2, testB 1" in stdout


def test_glas_resize_keeps_original_size_masks(tmp_path):
    raw = write_glas_tree(tmp_path / "raw")
    glas.setup_main(
        ["--glas_dir", str(tmp_path / "raw"), "--output_dir", str(tmp_path / "out"), "--lists_dir", str(tmp_path), "--n_height", "32", "--n_width", "24"]
    )
    images = read_list(tmp_path / "testing/warwick/traintest/test_images.txt")
    masks = read_list(tmp_path / "testing/warwick/traintest/test_ground_truths.txt")
    originals = read_list(tmp_path / "testing/warwick/traintest/test_original_ground_truths.txt")
    for image_path, mask_path, original_path in zip(images, masks, originals):
        raw_image, raw_labels = raw[Path(image_path).stem]
        image, mask, original = np.load(image_path), np.load(mask_path), np.load(original_path)
        assert image.shape == (32, 24, 3) and image.dtype == np.float32
        assert mask.shape == (32, 24) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert mask.any()
        # Bilinear stays within the raw range; nearest keeps the mask binary.
        assert raw_image.min() <= image.min() and image.max() <= raw_image.max()
        assert "ground_truths_original" in original_path
        np.testing.assert_array_equal(original, (raw_labels > 0).astype(np.uint8))
    sizes = json.loads((tmp_path / "out" / "original_sizes.json").read_text())
    assert (sizes["testB_1"]["height"], sizes["testB_1"]["width"]) == (34, 46)
    assert (sizes["testB_1"]["stored_height"], sizes["testB_1"]["stored_width"]) == (32, 24)
    for path in read_list(tmp_path / "training/warwick/traintest/train_images.txt"):
        assert np.load(path).shape == (32, 24, 3)


def test_glas_default_folder_falls_back_to_release_location(tmp_path, monkeypatch):
    write_glas_tree(tmp_path / "data" / "warwick")
    monkeypatch.chdir(tmp_path)
    glas.setup_main([])
    assert len(read_list(tmp_path / "training/warwick/traintest/train_images.txt")) == 3
    assert (tmp_path / "data" / "warwick_spin" / "statistics.json").is_file()


# ---------------------------------------------------------------------------------------------
# RITE set-up


def test_rite_setup_writes_vessel_masks(rite_prepared):
    raw, output, lists = rite_prepared
    train_images = read_list(lists / "training/rite/traintest/train_images.txt")
    test_masks = read_list(lists / "testing/rite/traintest/test_ground_truths.txt")
    assert [Path(path).stem for path in train_images] == ["21_training", "22_training"]
    assert [Path(path).stem for path in test_masks] == ["01_test", "02_test"]
    assert read_list(lists / "testing/rite/traintest/test_original_ground_truths.txt") == test_masks
    for path in train_images:
        image = np.load(path)
        assert image.shape == RITE_SHAPE + (3,) and image.dtype == np.float32
        np.testing.assert_array_equal(image, raw[Path(path).stem][0])
    for path in test_masks:
        mask = np.load(path)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, raw[Path(path).stem][1].astype(np.uint8))
    statistics = json.loads((output / "statistics.json").read_text())
    assert len(statistics["means"]) == 3 and statistics["n_pixels"] == 2 * RITE_SHAPE[0] * RITE_SHAPE[1]


def test_rite_falls_back_to_av_labels(tmp_path, capsys):
    raw = write_rite_tree(tmp_path / "raw")
    (tmp_path / "raw/AV_groundTruth/test/vessel/02_test.png").unlink()
    # The parent of AV_groundTruth is accepted too.
    rite.setup_main(["--rite_dir", str(tmp_path / "raw"), "--output_dir", str(tmp_path / "out"), "--lists_dir", str(tmp_path)])
    fallback_lines = [line for line in capsys.readouterr().out.splitlines() if "av/" in line]
    assert len(fallback_lines) == 1 and "test/02_test" in fallback_lines[0]
    mask = np.load(read_list(tmp_path / "testing/rite/traintest/test_ground_truths.txt")[1])
    # Every non-black AV colour (artery, vein, crossing, uncertain) is vessel.
    np.testing.assert_array_equal(mask, raw["02_test"][2].any(axis=-1).astype(np.uint8))
    np.testing.assert_array_equal(mask, raw["02_test"][1].astype(np.uint8))


def test_rite_resize_on_request(tmp_path):
    write_rite_tree(tmp_path / "raw")
    rite.setup_main(
        ["--rite_dir", str(tmp_path / "raw/AV_groundTruth"), "--output_dir", str(tmp_path / "out"), "--lists_dir", str(tmp_path), "--n_height", "22", "--n_width", "20"]
    )
    image = np.load(read_list(tmp_path / "training/rite/traintest/train_images.txt")[0])
    original = np.load(read_list(tmp_path / "testing/rite/traintest/test_original_ground_truths.txt")[0])
    assert image.shape == (22, 20, 3) and original.shape == RITE_SHAPE


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file, exit code 2, nothing written


def _break_glas(kind: str, raw: Path) -> str:
    """Damages a fresh GLaS tree; returns the text the error line must contain."""
    if kind == "missing annotation":
        (raw / "train_2_anno.bmp").unlink()
        return "train_2_anno.bmp"
    if kind == "undecodable image":
        (raw / "testA_1.bmp").write_text("not a bitmap\n")
        return "testA_1.bmp"
    if kind == "wrong label size":
        Image.fromarray(np.zeros((12, 10), dtype=np.uint8), "L").save(raw / "testB_1_anno.bmp", format="BMP")
        return "testB_1_anno.bmp"
    if kind == "no images":
        for path in raw.iterdir():
            path.unlink()
        return str(raw)
    raise AssertionError(kind)


def _break_rite(kind: str, raw: Path) -> str:
    base = raw / "AV_groundTruth"
    if kind == "undecodable image":
        (base / "training/images/22_training.tif").write_text("not a tiff\n")
        return "22_training.tif"
    if kind == "wrong label size":
        Image.fromarray(np.zeros((10, 12), dtype=np.uint8), "L").save(base / "test/vessel/01_test.png")
        return "01_test.png"
    if kind == "missing labels":
        (base / "test/vessel/02_test.png").unlink()
        (base / "test/av/02_test.png").unlink()
        return "02_test.png"
    if kind == "no images":
        for path in (base / "test/images").iterdir():
            path.unlink()
        return "test/images"
    raise AssertionError(kind)


BAD_INPUTS = [("glas", kind) for kind in ("missing annotation", "undecodable image", "wrong label size", "no images", "missing folder")] + [
    ("rite", kind) for kind in ("undecodable image", "wrong label size", "missing labels", "no images", "missing folder")
]


@pytest.mark.parametrize("dataset, kind", BAD_INPUTS, ids=[f"{dataset}-{kind}" for dataset, kind in BAD_INPUTS])
def test_bad_input_fails_with_one_line_and_writes_nothing(tmp_path, dataset, kind):
    raw = tmp_path / "raw"
    if kind == "missing folder":
        expected = "raw"
    elif dataset == "glas":
        write_glas_tree(raw)
        expected = _break_glas(kind, raw)
    else:
        write_rite_tree(raw)
        expected = _break_rite(kind, raw)
    script, flag = ("setup_dataset_warwick.py", "--glas_dir") if dataset == "glas" else ("setup_dataset_rite.py", "--rite_dir")
    raw_argument = raw if dataset == "glas" or kind == "missing folder" else raw / "AV_groundTruth"
    result = run_setup(script, flag, str(raw_argument), "--output_dir", str(tmp_path / "out"), "--lists_dir", str(tmp_path / "lists"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "lists").exists()


# ---------------------------------------------------------------------------------------------
# Statistics, training dataset and prediction


def test_compute_channel_statistics_pools_pixels_of_different_sizes(tmp_path):
    rng = np.random.default_rng(3)
    arrays = [rng.uniform(0, 255, (5, 7, 3)).astype(np.float32), rng.uniform(0, 255, (9, 4, 3)).astype(np.float32)]
    paths = []
    for index, array in enumerate(arrays):
        paths.append(tmp_path / f"{index}.npy")
        np.save(paths[-1], array)
    statistics = compute_channel_statistics(paths)
    pixels = np.concatenate([array.reshape(-1, 3).astype(np.float64) for array in arrays])
    np.testing.assert_allclose(statistics["means"], pixels.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(statistics["stddevs"], pixels.std(axis=0), atol=1e-4)
    np.testing.assert_allclose(statistics["pooled_stddev"], pixels.std(), atol=1e-4)
    assert statistics["n_pixels"] == 5 * 7 + 9 * 4


def _glas_lists(glas_prepared):
    _, output, lists, _ = glas_prepared
    statistics = json.loads((output / "statistics.json").read_text())
    normalization = Normalization("standard", statistics["means"], statistics["stddevs"])
    return (
        read_list(lists / "training/warwick/traintest/train_images.txt"),
        read_list(lists / "training/warwick/traintest/train_ground_truths.txt"),
        normalization,
    )


def test_image_dataset_items_are_shaped_and_deterministic(glas_prepared):
    images, masks, normalization = _glas_lists(glas_prepared)
    dataset = ImageTrainingDataset(
        images, masks, normalization=normalization, augmentation=AugmentationConfig(), augmentation_probability=1.0, crop_shape=(16, 20), seed=4
    )
    assert len(dataset) == 3
    image, mask = dataset[1]
    assert image.shape == (3, 16, 20) and mask.shape == (1, 16, 20)
    assert image.dtype == torch.float32 and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    again_image, again_mask = dataset[1]
    assert torch.equal(image, again_image) and torch.equal(mask, again_mask)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[1][0], image)
    # Batches of crops stack although the images differ in size.
    batch = torch.utils.data.default_collate([dataset[index] for index in range(3)])
    assert batch[0].shape == (3, 3, 16, 20)


def test_image_dataset_positive_crops_and_padding(glas_prepared):
    images, masks, normalization = _glas_lists(glas_prepared)
    dataset = ImageTrainingDataset(images, masks, normalization=normalization, positive_class_sample_rate=1.0, crop_shape=(8, 8))
    for epoch in range(5):
        dataset.set_epoch(epoch)
        assert all(dataset[index][1].sum() > 0 for index in range(len(dataset)))
    # A window larger than the image is padded: normalised image 0, mask 0 outside the image.
    padded = ImageTrainingDataset(images, masks, normalization=normalization, crop_shape=(48, 56))
    image, mask = padded[1]  # train_2 is 36 x 44
    assert image.shape == (3, 48, 56)
    assert torch.all(image[:, 36:, :] == 0) and torch.all(image[:, :, 44:] == 0) and torch.all(mask[:, 36:] == 0)


def test_image_dataset_whole_images_are_normalised(rite_prepared, glas_prepared):
    raw, output, lists = rite_prepared
    images = read_list(lists / "training/rite/traintest/train_images.txt")
    masks = read_list(lists / "training/rite/traintest/train_ground_truths.txt")
    means, stddevs = [10.0, 20.0, 30.0], [2.0, 4.0, 5.0]
    dataset = ImageTrainingDataset(images, masks, normalization=Normalization("standard", means, stddevs))
    image, mask = dataset[0]
    raw_image, vessels, _ = raw["21_training"]
    expected = (raw_image.astype(np.float32) - np.array(means, dtype=np.float32)) / np.array(stddevs, dtype=np.float32)
    np.testing.assert_allclose(image.numpy(), expected.transpose(2, 0, 1), rtol=1e-6)
    np.testing.assert_array_equal(mask[0].numpy(), vessels.astype(np.float32))
    # Whole GLaS images of different sizes cannot be batched: say so before training.
    glas_images, glas_masks, normalization = _glas_lists(glas_prepared)
    with pytest.raises(UserInputError, match="--crop_shape"):
        ImageTrainingDataset(glas_images, glas_masks, normalization=normalization)
    with pytest.raises(UserInputError, match="--n_chunk"):
        ImageTrainingDataset(images, masks, n_chunk=5)


def test_predict_image_returns_probabilities_at_image_or_requested_size(rite_prepared):
    from spinseg.models import build_model

    _, output, lists = rite_prepared
    image = np.load(read_list(lists / "testing/rite/traintest/test_images.txt")[0])
    config = {**json.loads(SMALL_SPIN_CONFIG.read_text())["config"], "input_channels": 3}
    torch.manual_seed(0)
    model = build_model("spin", **config)
    normalization = Normalization("standard", [80.0, 80.0, 80.0], [30.0, 30.0, 30.0])
    plain = InferenceOptions(normalization=normalization, prepare=False)
    probabilities = predict_image(model, image, plain)
    assert probabilities.shape == RITE_SHAPE and probabilities.dtype == np.float32
    assert 0.0 <= probabilities.min() and probabilities.max() <= 1.0
    flipped = predict_image(model, image, InferenceOptions(normalization=normalization, prepare=False, test_time_flip=True),
                            output_shape=(50, 31))
    assert flipped.shape == (50, 31) and flipped.dtype == np.float32
    # The prepared model (batch norm folded, channels-last) gives the same probabilities within float rounding.
    prepared = predict_image(model, image, InferenceOptions(normalization=normalization, prepare=True))
    assert np.abs(prepared - probabilities).max() <= 1e-4


# ---------------------------------------------------------------------------------------------
# Short SPiN training + evaluation through the shared trainer and evaluator


@pytest.mark.parametrize("dataset", ["warwick", "rite"])
def test_short_spin_training_and_evaluation_on_2d_rgb_data(dataset, glas_prepared, rite_prepared, tmp_path, capsys):
    from spinseg.recipes.config import EvaluateConfig, TrainConfig
    from spinseg.evaluation.evaluator import evaluate
    from spinseg.training.trainer import train

    _, output_dir, lists_dir = (glas_prepared if dataset == "warwick" else rite_prepared)[:3]
    statistics = json.loads((output_dir / "statistics.json").read_text())
    small_config = json.loads(SMALL_SPIN_CONFIG.read_text())["config"]
    model_config = json.dumps({**small_config, "input_channels": 3})
    training = lists_dir / "training" / dataset / "traintest"
    testing = lists_dir / "testing" / dataset / "traintest"
    test_images = read_list(testing / "test_images.txt")
    summary = train(TrainConfig(
        train_multimodal_scan_paths=str(training / "train_images.txt"),
        train_ground_truth_path=str(training / "train_ground_truths.txt"),
        val_multimodal_scan_paths=str(testing / "test_images.txt"),
        val_ground_truth_path=str(testing / "test_ground_truths.txt"),
        model_config=model_config, n_chunk=1, n_batch=2, crop_shape=[32, 32],
        dataset_means=statistics["means"], dataset_stddevs=statistics["stddevs"],
        learning_rates=[1e-3], learning_schedule=[3], augmentation_probabilities=[1.0], augmentation_schedule=[3],
        n_summary=2, n_checkpoint=100, n_validation=0, checkpoint_path=str(tmp_path / "run"), n_workers=0, seed=2,
    ))
    assert summary["steps"] > 0 and np.isfinite(summary["final_loss"])
    assert summary["best"]["step"] == summary["steps"]  # validated at the end on the test images

    result = evaluate(EvaluateConfig(
        multimodal_scan_paths=str(testing / "test_images.txt"),
        ground_truth_path=str(testing / "test_ground_truths.txt"),
        restore_path=summary["checkpoint"], n_chunk=1, model_config=model_config,
        dataset_means=statistics["means"], dataset_stddevs=statistics["stddevs"],
        output_path=str(tmp_path / "evaluation"), do_visualize_predictions=True,
    ))
    assert len(result["records"]) == len(test_images)
    assert all(0.0 <= result["table2"][key] <= 1.0 for key in ("dice", "iou", "precision", "recall"))
    assert f"SPiN | {result['table2']['dice']:.3f} |" in capsys.readouterr().out
    assert len(list((tmp_path / "evaluation" / "visualizations").glob("*.png"))) == len(test_images)

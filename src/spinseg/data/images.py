"""2-D RGB data sets (GLaS, RITE): decoding raw images, the prepared ``.npy`` layout and training samples.

Prepared layout (written by ``setup/setup_dataset_{warwick,rite}.py``, see :func:`write_prepared_dataset`):

- images: ``<output_dir>/images/<name>.npy``, float32 (H, W, 3), raw 0-255 intensities (as the release);
- ground truths: ``<output_dir>/ground_truths/<name>.npy``, uint8 (H, W) in {0, 1};
- when the set-up resized the images, ``<output_dir>/ground_truths_original/<name>.npy`` holds the
  ground truth at the raw image's size (for scoring at the original resolution);
- ``<output_dir>/original_sizes.json`` and ``<output_dir>/statistics.json`` (per-channel means/stds of
  the training images as stored).

The release trains on uniformly random ``n_height`` x ``n_width`` crops (128 x 128 for GLaS and RITE)
of the whole, un-resized image and predicts on whole images; :class:`ImageTrainingDataset` and
:func:`spinseg.inference.predictor.predict_image` do the same.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from spinseg.errors import UserInputError, fail
from spinseg.io.files import save_npy, write_json, write_lines
from spinseg.data.transforms import AugmentationConfig, Normalization, add_noise, augment

IMAGES_FOLDER = "images"
GROUND_TRUTHS_FOLDER = "ground_truths"
ORIGINAL_GROUND_TRUTHS_FOLDER = "ground_truths_original"
STATISTICS_FILE = "statistics.json"
ORIGINAL_SIZES_FILE = "original_sizes.json"


# ---------------------------------------------------------------------------------------------
# Decoding raw files (Pillow reads BMP, TIFF and PNG; nothing else is needed)


def open_image(path: str | os.PathLike):
    """Opens and fully decodes an image file with Pillow; an undecodable file -> one-line UserInputError."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise fail(path, "file not found")
    try:
        image = Image.open(path)
        image.load()  # open() only reads the header; load() catches truncated or corrupt pixel data
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise fail(path, f"cannot decode image ({str(error).splitlines()[0][:120] if str(error) else type(error).__name__})") from None
    return image


def read_rgb_image(path: str | os.PathLike) -> np.ndarray:
    """Decodes an image as RGB: returns uint8 (H, W, 3). Grayscale/palette/RGBA are converted to RGB."""
    image = open_image(path)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def read_label_values(path: str | os.PathLike) -> np.ndarray:
    """Decodes a label image as its stored values: (H, W) for grayscale/palette (palette *indices*,
    i.e. instance ids for GLaS), (H, W, C) for colour images."""
    image = open_image(path)
    if image.mode in ("RGBA", "LA"):
        image = image.convert(image.mode[:-1])  # alpha is not a label
    return np.asarray(image)


def binarise_labels(values: np.ndarray) -> np.ndarray:
    """(H, W) label values or (H, W, C) colours -> uint8 (H, W) in {0, 1}: foreground where any value > 0."""
    foreground = values > 0
    if foreground.ndim == 3:
        foreground = foreground.any(axis=-1)
    return foreground.astype(np.uint8)


def read_colour_foreground(path: str | os.PathLike) -> np.ndarray:
    """Any non-black pixel of a (colour or palette) label image -> uint8 (H, W) in {0, 1}.

    Palette images are mapped through their palette first, so a palette index whose colour is black
    counts as background (RITE's AV labels: red artery, blue vein, green crossing, white uncertain).
    """
    image = open_image(path)
    if image.mode not in ("L", "I", "I;16", "1"):
        image = image.convert("RGB")
    return binarise_labels(np.asarray(image))


def check_label_size(label: np.ndarray, label_path, image_shape: Sequence[int], image_path) -> None:
    """Raises a one-line error naming ``label_path`` when its (H, W) differs from the image's."""
    if tuple(label.shape[:2]) != tuple(image_shape[:2]):
        raise fail(
            label_path,
            f"label size {label.shape[1]}x{label.shape[0]} (WxH) != image size "
            f"{image_shape[1]}x{image_shape[0]} of {image_path}",
        )


def resize_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Bilinear resize of (H, W, 3) to ``shape`` (h, w) -> float32 (h, w, 3); antialiased when shrinking."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(tensor, size=tuple(shape), mode="bilinear", align_corners=False, antialias=True)
    return resized[0].permute(1, 2, 0).contiguous().numpy()


def resize_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 (H, W) mask to ``shape`` (h, w) (keeps it binary)."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None]
    resized = torch.nn.functional.interpolate(tensor, size=tuple(shape), mode="nearest-exact")
    return resized[0, 0].numpy().astype(mask.dtype)


def resize_probabilities(probabilities: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Bilinear resize of float (H, W) probabilities to ``shape`` (h, w), e.g. back to an image's original size."""
    if tuple(probabilities.shape) == tuple(shape):
        return probabilities.astype(np.float32, copy=False)
    tensor = torch.from_numpy(np.ascontiguousarray(probabilities, dtype=np.float32))[None, None]
    resized = torch.nn.functional.interpolate(tensor, size=tuple(shape), mode="bilinear", align_corners=False)
    return resized[0, 0].numpy()


def parse_target_size(n_height: int, n_width: int) -> tuple[int, int] | None:
    """``--n_height/--n_width``: both 0 keeps the raw sizes (None); both positive resizes to (h, w)."""
    if n_height == 0 and n_width == 0:
        return None
    if n_height <= 0 or n_width <= 0:
        raise UserInputError(f"--n_height {n_height} --n_width {n_width}: give both as positive sizes, or both 0 to keep raw sizes")
    return n_height, n_width


# ---------------------------------------------------------------------------------------------
# Setup: validate every raw pair first, then write (each file atomically, lists last)


@dataclass
class RawPair:
    """One raw image and how to read its binary label.

    ``read_label`` returns uint8 (H, W) in {0, 1}; ``label_path`` is the file it reads (named in errors).
    ``split`` is "train" or "test" (which lists the pair goes to); ``group`` is the raw subset
    (GLaS: train/testA/testB; RITE: training/test).
    """

    name: str
    split: str
    group: str
    image_path: Path
    label_path: Path
    read_label: Callable[[], np.ndarray]
    notes: list[str] = field(default_factory=list)


def load_raw_pair(pair: RawPair) -> tuple[np.ndarray, np.ndarray]:
    """Decodes and checks one pair: (image uint8 (H, W, 3), mask uint8 (H, W) in {0, 1})."""
    image = read_rgb_image(pair.image_path)
    mask = pair.read_label()
    check_label_size(mask, pair.label_path, image.shape, pair.image_path)
    return image, mask


def compute_channel_statistics(image_paths: Sequence[str | os.PathLike]) -> dict:
    """Per-channel mean and (population) std over all pixels of all images in ``image_paths``.

    Each path is a prepared (H, W, C) ``.npy``; images may differ in size (pixels are pooled, so a large
    image weighs more, as when the release pools its training set). Returns
    {"means": [C], "stddevs": [C], "pooled_mean", "pooled_stddev" (all channels together, the single
    values the release's recipes pass), "n_images", "n_pixels"}.
    """
    if not image_paths:
        raise UserInputError("no training images to compute dataset statistics from")
    sums = squares = None
    pixels = 0
    for path in image_paths:
        image = np.load(path, mmap_mode="r", allow_pickle=False)
        if image.ndim != 3:
            raise fail(path, f"expected an (H, W, C) image, found shape {image.shape}")
        # float64 sums: 85 GLaS images x 400k pixels x 255^2 stays far inside float64's exact range.
        flat = np.asarray(image, dtype=np.float64).reshape(-1, image.shape[-1])
        if sums is None:
            sums, squares = np.zeros(flat.shape[1]), np.zeros(flat.shape[1])
        elif flat.shape[1] != len(sums):
            raise fail(path, f"{flat.shape[1]} channels, earlier images have {len(sums)}")
        sums += flat.sum(axis=0)
        squares += np.square(flat).sum(axis=0)
        pixels += flat.shape[0]
    means = sums / pixels
    stddevs = np.sqrt(np.maximum(squares / pixels - means**2, 0.0))
    pooled_mean = sums.sum() / (pixels * len(sums))
    pooled_stddev = float(np.sqrt(max(squares.sum() / (pixels * len(sums)) - pooled_mean**2, 0.0)))
    return {
        "means": [round(float(value), 6) for value in means],
        "stddevs": [round(float(value), 6) for value in stddevs],
        "pooled_mean": round(float(pooled_mean), 6),
        "pooled_stddev": round(pooled_stddev, 6),
        "n_images": len(image_paths),
        "n_pixels": int(pixels),
    }


def check_raw_pairs(pairs: Sequence[RawPair], log: Callable[[str], None]) -> dict[str, dict]:
    """Decodes every pair (kept out of memory) so a bad file stops the run before any write; logs
    the pairs' notes; returns {name: original height, width, group and source files}."""
    if not any(pair.split == "train" for pair in pairs):
        raise UserInputError("no training images found")
    if not any(pair.split == "test" for pair in pairs):
        raise UserInputError("no test images found")
    original_sizes = {}
    for pair in pairs:
        image, _ = load_raw_pair(pair)
        original_sizes[pair.name] = {
            "height": int(image.shape[0]),
            "width": int(image.shape[1]),
            "group": pair.group,
            "image": str(pair.image_path),
            "label": str(pair.label_path),
        }
    for line in sorted({note for pair in pairs for note in pair.notes}):
        log(line)
    return original_sizes


def convert_pair(pair: RawPair, output_dir: Path, target_size: tuple[int, int] | None) -> tuple[Path, Path, Path, tuple[int, int]]:
    """Writes one pair as float32 (H, W, 3) image and (H, W) mask .npy files, resized to ``target_size``
    when given (the original-size mask kept apart); returns (image, mask, original-size mask, stored (H, W))."""
    image, mask = load_raw_pair(pair)
    image_path = output_dir / IMAGES_FOLDER / f"{pair.name}.npy"
    mask_path = output_dir / GROUND_TRUTHS_FOLDER / f"{pair.name}.npy"
    original_mask_path = mask_path
    stored = image.astype(np.float32)
    if target_size is not None and tuple(image.shape[:2]) != tuple(target_size):
        stored = resize_image(stored, target_size)
        original_mask_path = output_dir / ORIGINAL_GROUND_TRUTHS_FOLDER / f"{pair.name}.npy"
        save_npy(original_mask_path, mask)
        mask = resize_mask(mask, target_size)
    save_npy(image_path, stored)
    save_npy(mask_path, mask)
    return image_path, mask_path, original_mask_path, tuple(map(int, stored.shape[:2]))


def write_prepared_dataset(
    pairs: Sequence[RawPair],
    output_dir: str | os.PathLike,
    train_lists: tuple[Path, Path],
    test_lists: tuple[Path, Path, Path],
    target_size: tuple[int, int] | None,
    log: Callable[[str], None] = print,
) -> dict:
    """Validates all ``pairs``, then writes the prepared layout (module docstring) and the lists.

    ``train_lists`` = (images, ground truths); ``test_lists`` = (images, ground truths, original-size
    ground truths). Nothing is written until every pair decodes and matches in size; every file is
    written atomically and the lists come last, so an interrupted run never leaves lists pointing at
    missing files. Returns {"counts": {group: n}, "statistics": {...}, "lists": [paths]}.
    """
    original_sizes = check_raw_pairs(pairs, log)
    output_dir = Path(output_dir)
    # List entries are output_dir as given joined with the relative path (as the ATLAS setup does).
    lists: dict[str, list[str]] = {"train_images": [], "train_gts": [], "test_images": [], "test_gts": [], "test_original": []}
    train_image_paths = []
    for pair in pairs:
        image_path, mask_path, original_mask_path, stored_size = convert_pair(pair, output_dir, target_size)
        original_sizes[pair.name]["stored_height"], original_sizes[pair.name]["stored_width"] = stored_size
        if pair.split == "train":
            lists["train_images"].append(str(image_path))
            lists["train_gts"].append(str(mask_path))
            train_image_paths.append(image_path)
        else:
            lists["test_images"].append(str(image_path))
            lists["test_gts"].append(str(mask_path))
            lists["test_original"].append(str(original_mask_path))

    statistics = compute_channel_statistics(train_image_paths)
    write_json(output_dir / STATISTICS_FILE, statistics)
    write_json(output_dir / ORIGINAL_SIZES_FILE, original_sizes)
    list_files = [*train_lists, *test_lists]
    for list_path, key in zip(list_files, ["train_images", "train_gts", "test_images", "test_gts", "test_original"]):
        write_lines(list_path, lists[key])

    counts: dict[str, int] = {}
    for pair in pairs:
        counts[pair.group] = counts.get(pair.group, 0) + 1
    log("images: " + ", ".join(f"{group} {count}" for group, count in counts.items()))
    log(f"wrote {output_dir} ({'resized to %dx%d (HxW)' % target_size if target_size else 'raw sizes kept'})")
    log(f"dataset statistics ({output_dir / STATISTICS_FILE}):")
    log("  --dataset_means " + " ".join(f"{value:.6f}" for value in statistics["means"]))
    log("  --dataset_stddevs " + " ".join(f"{value:.6f}" for value in statistics["stddevs"]))
    log(f"  (pooled over channels: mean {statistics['pooled_mean']:.6f}, std {statistics['pooled_stddev']:.6f})")
    for list_path in list_files:
        log(f"wrote {list_path}")
    return {"counts": counts, "statistics": statistics, "lists": [str(path) for path in list_files]}


def write_traintest_dataset(
    pairs, output_dir, lists_dir, train_list_dir: Path, test_list_dir: Path, target_size
) -> dict:
    """:func:`write_prepared_dataset` with the release's list names under ``lists_dir``.

    Train lists: ``<train_list_dir>/train_{images,ground_truths}.txt``; test lists:
    ``<test_list_dir>/test_{images,ground_truths,original_ground_truths}.txt``.
    """
    train, test = Path(lists_dir) / train_list_dir, Path(lists_dir) / test_list_dir
    return write_prepared_dataset(
        pairs,
        output_dir,
        train_lists=(train / "train_images.txt", train / "train_ground_truths.txt"),
        test_lists=(test / "test_images.txt", test / "test_ground_truths.txt", test / "test_original_ground_truths.txt"),
        target_size=target_size,
    )


def read_statistics(path: str | os.PathLike) -> dict:
    """Reads a ``statistics.json`` written by the setup scripts."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise fail(path, f"cannot read dataset statistics ({error})") from None


# ---------------------------------------------------------------------------------------------
# Prepared files


def is_rgb_image_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a prepared 2-D colour image, i.e. a ``.npy`` of shape (H, W, 3).

    The trainer/evaluator use this on the first listed scan to choose the 2-D RGB pipeline (ATLAS
    volumes are (H, W, D) with D = 189). Reads only the header.
    """
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    return array.ndim == 3 and array.shape[-1] == 3


def load_image(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Opens a prepared image ``.npy`` (H, W, 3), memory-mapped; a bad file -> one-line UserInputError."""
    array = _load_checked(path, mmap)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise fail(path, f"expected an (H, W, 3) RGB image, found shape {array.shape}")
    return array


def load_mask(path: str | os.PathLike, mmap: bool = True) -> np.ndarray:
    """Opens a prepared ground truth ``.npy`` (H, W) (a trailing channel of 1 is dropped), memory-mapped."""
    array = _load_checked(path, mmap)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise fail(path, f"expected an (H, W) mask, found shape {array.shape}")
    return array


def _load_checked(path, mmap: bool) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise fail(path, "file not found")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise fail(path, f"not a readable .npy array ({str(error).splitlines()[0][:120]})") from None
    if array.dtype.kind not in "biuf":
        raise fail(path, f"expected a numeric array, found dtype {array.dtype}")
    return array


# ---------------------------------------------------------------------------------------------
# Training samples


class ImageTrainingDataset(Dataset):
    """Training samples from 2-D RGB images: item i -> (image (3, h, w), mask (1, h, w)), float32.

    Drop-in for :class:`~spinseg.data.slices.SliceTrainingDataset` (same attributes and ``set_epoch``).
    One sample is one image: with ``crop_shape`` (h, w) a window is cut out of it (the release's 128 x 128
    uniformly random crops); with probability ``positive_class_sample_rate`` the window is instead
    placed to contain a random foreground pixel (0 = the release's uniform crops). Windows larger than
    the image are padded with the per-channel means (0 after normalisation; mask 0). Without
    ``crop_shape`` the whole image is used, so all images must have the same size to be batched.
    Randomness comes from ``np.random.default_rng((seed, epoch, index))``: reproducible with any
    number of workers and after a resume.
    """

    def __init__(
        self,
        image_paths: Sequence[str],
        ground_truth_paths: Sequence[str],
        normalization: Normalization | None = None,
        positive_class_sample_rate: float = 0.0,
        augmentation: AugmentationConfig | None = None,
        augmentation_probability: float = 0.0,
        crop_shape: Sequence[int] | None = None,
        seed: int = 0,
        *,
        n_chunk: int = 1,
    ):
        # n_chunk is accepted so the trainer can pass SliceTrainingDataset's arguments unchanged.
        if n_chunk != 1:
            raise UserInputError(f"--n_chunk {n_chunk}: 2-D RGB images take --n_chunk 1 (the 3 colour channels are the input)")
        if len(image_paths) != len(ground_truth_paths):
            raise ValueError("image and ground truth lists differ in length")
        self.image_paths = list(image_paths)
        self.ground_truth_paths = list(ground_truth_paths)
        self.scan_paths = self.image_paths  # the name SliceTrainingDataset uses
        self.normalization = normalization or Normalization("standard", [0.0] * 3, [1.0] * 3)
        if self.normalization.kind == "standard" and len(self.normalization.means) not in (1, 3):
            raise UserInputError(f"--dataset_means: give 1 or 3 values for RGB images, got {len(self.normalization.means)}")
        self.positive_class_sample_rate = positive_class_sample_rate
        self.augmentation = augmentation or AugmentationConfig()
        self.augmentation_probability = augmentation_probability
        self.crop_shape = tuple(crop_shape) if crop_shape else None
        self.seed = seed
        self.n_chunk = 1
        self.epoch = 0
        # Header reads only: validates every pair up front so a bad file fails before training starts.
        self.image_shapes = []
        for image_path, ground_truth_path in zip(self.image_paths, self.ground_truth_paths):
            image, mask = load_image(image_path), load_mask(ground_truth_path)
            check_label_size(mask, ground_truth_path, image.shape, image_path)
            self.image_shapes.append(tuple(image.shape[:2]))
        if self.crop_shape is None and len(set(self.image_shapes)) > 1:
            raise UserInputError(
                f"training images differ in size ({len(set(self.image_shapes))} sizes, e.g. {self.image_shapes[0]} in "
                f"{self.image_paths[0]}): give --crop_shape, or set up with --n_height/--n_width"
            )
        self._foreground: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.image_paths)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose random draws the samples use."""
        self.epoch = epoch

    def pad_values(self) -> np.ndarray:
        """Raw per-channel values (3,) that normalise to 0, used to pad windows beyond the image."""
        if self.normalization.kind != "standard":
            return np.zeros(3, dtype=np.float32)
        return np.broadcast_to(np.asarray(self.normalization.means, dtype=np.float32), (3,)).copy()

    def foreground_pixels(self, index: int, mask: np.ndarray) -> np.ndarray:
        """(K, 2) row/column of the foreground pixels of image ``index``, cached per worker.

        Subsampled to at most 4096 pixels so the cache stays small; any of them serves as a crop centre.
        """
        if index not in self._foreground:
            pixels = np.argwhere(np.asarray(mask) > 0)
            if len(pixels) > 4096:
                pixels = pixels[np.linspace(0, len(pixels) - 1, 4096).astype(int)]
            self._foreground[index] = pixels
        return self._foreground[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image = load_image(self.image_paths[index])
        mask = load_mask(self.ground_truth_paths[index])
        height, width = image.shape[:2]
        if self.crop_shape is None:
            top, left, (crop_height, crop_width) = 0, 0, (height, width)
        else:
            crop_height, crop_width = self.crop_shape
            centre = None
            if self.positive_class_sample_rate > 0 and rng.random() < self.positive_class_sample_rate:
                pixels = self.foreground_pixels(index, mask)
                if len(pixels):
                    centre = pixels[rng.integers(len(pixels))]
            top = _window_start(height, crop_height, rng, None if centre is None else int(centre[0]))
            left = _window_start(width, crop_width, rng, None if centre is None else int(centre[1]))

        # Only the window is read from the memory-mapped file.
        window = np.asarray(image[top : top + crop_height, left : left + crop_width], dtype=np.float32)
        window_mask = np.asarray(mask[top : top + crop_height, left : left + crop_width]) > 0
        sample = np.empty((3, crop_height, crop_width), dtype=np.float32)
        sample[:] = self.pad_values()[:, None, None]
        sample[:, : window.shape[0], : window.shape[1]] = window.transpose(2, 0, 1)
        target = np.zeros((1, crop_height, crop_width), dtype=np.float32)
        target[0, : window_mask.shape[0], : window_mask.shape[1]] = window_mask

        # Augmentation works on raw (C, H, W) arrays, then normalisation and noise (as SliceTrainingDataset).
        augmented = rng.random() < self.augmentation_probability
        if augmented:
            sample, target = augment(sample, target, rng, self.augmentation)
        sample = self.normalization(sample).astype(np.float32, copy=False)
        if augmented:
            sample = add_noise(sample, rng, self.augmentation)
        return torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32)), torch.from_numpy((target > 0.5).astype(np.float32))


def _window_start(size: int, crop: int, rng: np.random.Generator, centre: int | None) -> int:
    """Start of a ``crop``-long window in ``size``: uniform, or containing ``centre``; 0 if it does not fit."""
    if crop >= size:
        return 0
    low, high = 0, size - crop
    if centre is not None:
        low, high = max(low, centre - crop + 1), min(high, centre)
    return int(rng.integers(low, high + 1))

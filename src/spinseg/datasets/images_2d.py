"""2-D RGB data sets (GLaS, RITE), raw side: decoding raw images and writing the prepared ``.npy`` layout.

Prepared layout (written by ``setup/setup_dataset_{warwick,rite}.py``, see :func:`write_prepared_dataset`):

- images: ``<output_dir>/images/<name>.npy``, float32 (H, W, 3), raw 0-255 intensities (as the release);
- ground truths: ``<output_dir>/ground_truths/<name>.npy``, uint8 (H, W) in {0, 1};
- when the set-up resized the images, ``<output_dir>/ground_truths_original/<name>.npy`` holds the
  ground truth at the raw image's size (for scoring at the original resolution);
- ``<output_dir>/original_sizes.json`` and ``<output_dir>/statistics.json`` (per-channel means/stds of
  the training images as stored).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from spinseg.errors import UserInputError, fail
from spinseg.io.files import save_npy, write_json, write_lines

IMAGES_FOLDER = "images"


GROUND_TRUTHS_FOLDER = "ground_truths"


ORIGINAL_GROUND_TRUTHS_FOLDER = "ground_truths_original"


STATISTICS_FILE = "statistics.json"


ORIGINAL_SIZES_FILE = "original_sizes.json"


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


def parse_target_size(n_height: int, n_width: int) -> tuple[int, int] | None:
    """``--n_height/--n_width``: both 0 keeps the raw sizes (None); both positive resizes to (h, w)."""
    if n_height == 0 and n_width == 0:
        return None
    if n_height <= 0 or n_width <= 0:
        raise UserInputError(f"--n_height {n_height} --n_width {n_width}: give both as positive sizes, or both 0 to keep raw sizes")
    return n_height, n_width


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


def add_setup_arguments(parser: argparse.ArgumentParser, default_output_dir: str) -> None:
    """The flags every 2-D set-up script shares: output folder, list folder and optional resize."""
    parser.add_argument("--output_dir", default=default_output_dir, help="where the .npy files go")
    parser.add_argument("--lists_dir", default=".", help="root of training/ and testing/ list folders")
    parser.add_argument("--n_height", type=int, default=0, help="resize to this height (0 with --n_width 0: keep raw sizes)")
    parser.add_argument("--n_width", type=int, default=0, help="resize to this width (0 with --n_height 0: keep raw sizes)")

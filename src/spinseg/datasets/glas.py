"""GLaS (Warwick QU gland segmentation, MICCAI 2015 challenge): raw-layout reader and set-up.

Raw layout ("Warwick QU Dataset (Released 2016_07_08)", one folder): ``train_N.bmp`` + ``train_N_anno.bmp``
(85), ``testA_N.bmp`` + ``testA_N_anno.bmp`` (60), ``testB_N.bmp`` + ``testB_N_anno.bmp`` (20) and
``Grade.csv`` (ignored). Images are RGB BMPs of varying size (775 x 522, 567 x 430, ...); annotations
are 8-bit instance label images (0 background, 1..K glands, palette or grayscale), binarised > 0.

Set-up writes the layout of :mod:`spinseg.data.images` under ``--output_dir`` and the lists

- ``<lists_dir>/training/warwick/traintest/train_images.txt``, ``train_ground_truths.txt`` (all train_N),
- ``<lists_dir>/testing/warwick/traintest/test_images.txt``, ``test_ground_truths.txt`` (testA then testB,
  each in numeric order; the paper validates and tests on them) and ``test_original_ground_truths.txt``
  (the ground truths at the raw size: the same files unless ``--n_height/--n_width`` resized them).

Image size: by default the raw sizes are kept, as the release does (it converts the BMPs as-is, trains on
uniformly random 128 x 128 crops and predicts whole images). ``--n_height H --n_width W`` resizes images
(bilinear) and masks (nearest) to a common size instead; the original-size masks are still written so
scores can be computed at the raw resolution.
"""
from __future__ import annotations

import argparse
import re
from functools import partial
from pathlib import Path

import numpy as np

from spinseg.datasets.images_2d import (
    RawPair,
    add_setup_arguments,
    binarise_labels,
    parse_target_size,
    read_label_values,
    write_traintest_dataset,
)
from spinseg.errors import fail

DEFAULT_GLAS_DIR = "data/glas"
FALLBACK_GLAS_DIR = "data/warwick"  # where the release reads it
RELEASE_FOLDER = "Warwick QU Dataset (Released 2016_07_08)"
DEFAULT_OUTPUT_DIR = "data/warwick_spin"
TRAIN_LIST_DIR = Path("training/warwick/traintest")
TEST_LIST_DIR = Path("testing/warwick/traintest")
GROUPS = {"train": "train", "testA": "test", "testB": "test"}  # raw subset -> list split
IMAGE_PATTERN = re.compile(r"^(train|testA|testB)_(\d+)\.bmp$", re.IGNORECASE)
ANNOTATION_PATTERN = re.compile(r"^(train|testA|testB)_(\d+)_anno\.bmp$", re.IGNORECASE)


def resolve_glas_dir(glas_dir: str | Path, default_requested: bool) -> Path:
    """The folder holding the BMPs: ``glas_dir`` (the release's ``data/warwick`` when the default is
    missing), or its ``Warwick QU Dataset (Released 2016_07_08)`` sub-folder when the zip was unpacked there."""
    directory = Path(glas_dir)
    if default_requested and not directory.is_dir() and Path(FALLBACK_GLAS_DIR).is_dir():
        directory = Path(FALLBACK_GLAS_DIR)
    if not directory.is_dir():
        also = f" (nor {FALLBACK_GLAS_DIR})" if default_requested else ""
        raise fail(directory, f"GLaS folder not found{also}; unzip the Warwick QU data set there or pass --glas_dir")
    nested = directory / RELEASE_FOLDER
    if nested.is_dir() and not any(IMAGE_PATTERN.match(path.name) for path in directory.iterdir()):
        directory = nested
    return directory


def read_glas_label(path: Path) -> np.ndarray:
    """An instance label BMP -> uint8 (H, W) in {0, 1} (gland where the label value > 0)."""
    return binarise_labels(read_label_values(path))


def discover_glas(directory: Path) -> list[RawPair]:
    """Pairs each ``<group>_<N>.bmp`` with ``<group>_<N>_anno.bmp``; order: train, testA, testB, N ascending.

    A missing annotation raises a one-line error naming it; an annotation without an image is skipped
    with a note; counts other than the release's are fine (they are reported).
    """
    found: dict[tuple[str, int], Path] = {}
    annotations: dict[tuple[str, int], Path] = {}
    group_names = {name.lower(): name for name in GROUPS}
    for path in directory.iterdir():
        if match := IMAGE_PATTERN.match(path.name):
            found[(group_names[match.group(1).lower()], int(match.group(2)))] = path
        elif match := ANNOTATION_PATTERN.match(path.name):
            annotations[(group_names[match.group(1).lower()], int(match.group(2)))] = path
    if not found:
        raise fail(directory, "no GLaS images (train_N.bmp, testA_N.bmp, testB_N.bmp) found")
    order = list(GROUPS)
    pairs = []
    for group, number in sorted(found, key=lambda key: (order.index(key[0]), key[1])):
        image_path = found[(group, number)]
        annotation_path = annotations.get((group, number), image_path.with_name(f"{image_path.stem}_anno{image_path.suffix}"))
        if not annotation_path.is_file():
            raise fail(annotation_path, f"annotation of {image_path.name} not found")
        pairs.append(
            RawPair(
                name=f"{group}_{number}",
                split=GROUPS[group],
                group=group,
                image_path=image_path,
                label_path=annotation_path,
                read_label=partial(read_glas_label, annotation_path),
            )
        )
    for split, pattern in (("train", "train_N.bmp"), ("test", "testA_N.bmp / testB_N.bmp")):
        if not any(pair.split == split for pair in pairs):
            raise fail(directory, f"no {'training' if split == 'train' else 'test'} images ({pattern}) found")
    orphans = sorted(path.name for key, path in annotations.items() if key not in found)
    if orphans:
        pairs[0].notes.append(f"skipped {len(orphans)} annotation(s) without an image: {', '.join(orphans[:5])}")
    return pairs


def build_parser() -> argparse.ArgumentParser:
    """Flags of ``setup/setup_dataset_warwick.py``."""
    parser = argparse.ArgumentParser(prog="setup/setup_dataset_warwick.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--glas_dir", default=None, help=f"raw folder (default {DEFAULT_GLAS_DIR}, else {FALLBACK_GLAS_DIR})")
    add_setup_arguments(parser, DEFAULT_OUTPUT_DIR)
    return parser


def setup_main(argv: list[str] | None = None) -> dict:
    """Runs the GLaS set-up; returns the summary of :func:`write_traintest_dataset`."""
    arguments = build_parser().parse_args(argv)
    target_size = parse_target_size(arguments.n_height, arguments.n_width)
    directory = resolve_glas_dir(arguments.glas_dir or DEFAULT_GLAS_DIR, arguments.glas_dir is None)
    pairs = discover_glas(directory)
    print(f"reading GLaS from {directory}", flush=True)
    return write_traintest_dataset(pairs, arguments.output_dir, arguments.lists_dir, TRAIN_LIST_DIR, TEST_LIST_DIR, target_size)

"""RITE (Retinal Images vessel Tree Extraction, DRIVE-based): raw-layout reader and set-up.

Raw layout (``AV_groundTruth.zip`` unzipped): ``AV_groundTruth/{training,test}/{images,av,vessel}/`` with
``NN_training.tif`` / ``NN_test.tif`` RGB images (565 x 584; 21..40 training, 01..20 test),
``av/NN_<split>.png`` artery/vein colour labels (red artery, blue vein, green crossing, white uncertain,
black background) and ``vessel/NN_<split>.png`` binary vessel masks (0/255).

The task is binary vessel segmentation: the vessel masks are read (> 0); where one is missing the
vessel mask is taken as every non-black pixel of the AV label (one line reports which). Set-up writes
the layout of :mod:`spinseg.data.images` under ``--output_dir`` and the lists
``<lists_dir>/training/rite/traintest/train_{images,ground_truths}.txt`` and
``<lists_dir>/testing/rite/traintest/test_{images,ground_truths,original_ground_truths}.txt``.
Raw sizes are kept (as the release does) unless ``--n_height/--n_width`` are given.
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np

from spinseg.datasets.images_2d import (
    RawPair,
    add_setup_arguments,
    parse_target_size,
    read_colour_foreground,
    write_traintest_dataset,
)
from spinseg.errors import fail

DEFAULT_RITE_DIR = "data/AV_groundTruth"
DEFAULT_OUTPUT_DIR = "data/rite_spin"
TRAIN_LIST_DIR = Path("training/rite/traintest")
TEST_LIST_DIR = Path("testing/rite/traintest")
SPLITS = {"training": "train", "test": "test"}  # raw folder -> list split
IMAGE_SUFFIXES = (".tif", ".tiff")


def resolve_rite_dir(rite_dir: str | Path) -> Path:
    """The folder holding ``training/`` and ``test/``: ``rite_dir`` or its ``AV_groundTruth`` sub-folder."""
    directory = Path(rite_dir)
    if not directory.is_dir():
        raise fail(directory, "RITE folder not found; unzip AV_groundTruth.zip there or pass --rite_dir")
    if not (directory / "training").is_dir() and (directory / "AV_groundTruth" / "training").is_dir():
        directory = directory / "AV_groundTruth"
    return directory


def read_vessel_mask(path: Path) -> np.ndarray:
    """A vessel PNG (0/255 grayscale, or any non-black colour) -> uint8 (H, W) in {0, 1}."""
    return read_colour_foreground(path)


def discover_rite(directory: Path) -> list[RawPair]:
    """Pairs every ``<split>/images/<stem>.tif`` with ``<split>/vessel/<stem>.png`` (or ``av/<stem>.png``).

    Order: training then test, by file name. A split folder without ``images/`` or an image without
    either label raises a one-line error naming the missing file.
    """
    pairs, fallbacks = [], []
    for folder, split in SPLITS.items():
        images_dir = directory / folder / "images"
        if not images_dir.is_dir():
            raise fail(images_dir, "folder not found (expected AV_groundTruth/{training,test}/images)")
        image_paths = sorted(path for path in images_dir.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
        if not image_paths:
            raise fail(images_dir, f"no .tif images found (expected NN_{folder}.tif)")
        for image_path in image_paths:
            vessel_path = directory / folder / "vessel" / f"{image_path.stem}.png"
            av_path = directory / folder / "av" / f"{image_path.stem}.png"
            label_path = vessel_path
            if not vessel_path.is_file():
                if not av_path.is_file():
                    raise fail(vessel_path, f"vessel mask of {image_path.name} not found (nor {av_path})")
                label_path = av_path
                fallbacks.append(f"{folder}/{image_path.stem}")
            pairs.append(
                RawPair(
                    name=image_path.stem,
                    split=split,
                    group=folder,
                    image_path=image_path,
                    label_path=label_path,
                    read_label=partial(read_vessel_mask, label_path),
                )
            )
    if fallbacks:
        shown = ", ".join(fallbacks[:5]) + (f" and {len(fallbacks) - 5} more" if len(fallbacks) > 5 else "")
        pairs[0].notes.append(f"{len(fallbacks)} vessel mask(s) missing; used the non-black pixels of av/ for: {shown}")
    return pairs


def build_parser() -> argparse.ArgumentParser:
    """Flags of ``setup/setup_dataset_rite.py``."""
    parser = argparse.ArgumentParser(prog="setup/setup_dataset_rite.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rite_dir", default=DEFAULT_RITE_DIR, help="the unzipped AV_groundTruth folder")
    add_setup_arguments(parser, DEFAULT_OUTPUT_DIR)
    return parser


def setup_main(argv: list[str] | None = None) -> dict:
    """Runs the RITE set-up; returns the summary of :func:`write_traintest_dataset`."""
    arguments = build_parser().parse_args(argv)
    target_size = parse_target_size(arguments.n_height, arguments.n_width)
    directory = resolve_rite_dir(arguments.rite_dir)
    pairs = discover_rite(directory)
    print(f"reading RITE from {directory}", flush=True)
    return write_traintest_dataset(pairs, arguments.output_dir, arguments.lists_dir, TRAIN_LIST_DIR, TEST_LIST_DIR, target_size)

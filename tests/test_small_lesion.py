"""The small-lesion slice definition and the small-lesion setup."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.measure import label as skimage_label

from conftest import run_python
from spinseg.datasets.setup_atlas import read_slice_indices, setup_atlas, setup_small_lesion
from spinseg.datasets.small_lesion import largest_lesion_per_slice, small_lesion_map, small_lesion_slices
from spinseg.datasets.synthetic import write_synthetic_atlas
from spinseg.io.files import read_lines

REPO = Path(__file__).resolve().parents[1]


def _constructed_volume() -> tuple[np.ndarray, list[int]]:
    """(H, W, D) mask whose slices exercise each rule; returns it and the expected slice indices."""
    mask = np.zeros((40, 40, 8), dtype=np.uint8)
    mask[0:10, 0:10, 1] = 1  # one 100-px lesion: counts
    mask[0:10, 0:10, 2] = 1
    mask[10, 0, 2] = 1  # one 101-px lesion: does not count
    mask[0:3, 0:3, 3] = 1  # a small lesion ...
    mask[20:31, 20:31, 3] = 1  # ... and a big one (121 px): does not count
    mask[5, 5, 4] = mask[6, 6, 4] = 1  # two diagonal pixels: one lesion of 2 px, counts
    # Two 60-px blocks touching only at a corner: ONE 120-px lesion under 8-connectivity (two
    # lesions of 60 under 4-connectivity), so the slice does not count.
    mask[0:6, 0:10, 5] = 1
    mask[6:12, 10:20, 5] = 1
    mask[0:6, 0:10, 6] = 1  # two separate 60-px lesions: counts
    mask[20:26, 20:30, 6] = 1
    # slices 0 and 7 are empty: do not count
    return mask, [1, 4, 6]


def test_constructed_slices():
    mask, expected = _constructed_volume()
    np.testing.assert_array_equal(small_lesion_slices(mask), expected)
    counts, largest = largest_lesion_per_slice(mask)
    np.testing.assert_array_equal(counts, [0, 1, 1, 2, 1, 1, 2, 0])
    np.testing.assert_array_equal(largest, [0, 100, 101, 121, 2, 120, 60, 0])
    # max_pixels moves the boundary
    np.testing.assert_array_equal(small_lesion_slices(mask, max_pixels=101), [1, 2, 4, 6])
    assert small_lesion_slices(mask).dtype == np.int64


def test_float_and_empty_masks():
    mask, expected = _constructed_volume()
    np.testing.assert_array_equal(small_lesion_slices(mask.astype(np.float32) * 0.7), expected)
    assert small_lesion_slices(np.zeros((5, 5, 3))).size == 0
    with pytest.raises(ValueError):
        small_lesion_slices(np.zeros((5, 5)))


def test_map_keeps_only_selected_slices():
    mask, expected = _constructed_volume()
    restricted = small_lesion_map(mask, np.array(expected))
    assert restricted.dtype == np.uint8
    for index in range(mask.shape[2]):
        want = mask[:, :, index] if index in expected else 0
        np.testing.assert_array_equal(restricted[:, :, index], want)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.05, 0.6), st.integers(1, 30))
def test_matches_a_per_slice_reference(seed, density, max_pixels):
    """The one-call 3-D labelling equals per-slice 2-D labelling with 8-connectivity."""
    mask = np.random.default_rng(seed).random((12, 13, 6)) < density
    expected = []
    for index in range(mask.shape[2]):
        labels = skimage_label(mask[:, :, index], connectivity=2)
        sizes = np.bincount(labels.ravel())[1:]
        if len(sizes) and sizes.max() <= max_pixels:
            expected.append(index)
    np.testing.assert_array_equal(small_lesion_slices(mask, max_pixels), expected)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("small_lesion")
    write_synthetic_atlas(root / "raw", n_subjects=5, seed=3, shape=(40, 48, 38), test_fraction=0.4)
    setup_atlas(root / "raw", root / "spin", root / "raw" / "data_split", root / "lists", log=lambda _: None)
    return root


def test_small_lesion_setup_writes_what_the_function_gives(tiny_setup):
    root = tiny_setup
    result = setup_small_lesion(data_dir=root / "spin", lists_dir=root / "lists", log=lambda _: None)
    folder = root / "lists/testing/atlas/traintest/small_lesion"
    scans = read_lines(folder / "test_scans.txt")
    truths = read_lines(folder / "test_ground_truths.txt")
    maps = read_lines(folder / "test_small_lesion_maps.txt")
    slice_files = read_lines(folder / "test_small_lesion_slices.txt")
    assert scans == read_lines(root / "lists/testing/atlas/traintest/test_scans.txt")
    assert truths == read_lines(root / "lists/testing/atlas/traintest/test_ground_truths.txt")
    assert len(scans) == len(truths) == len(maps) == len(slice_files) == 2
    total = 0
    for truth_path, map_path, slices_path in zip(truths, maps, slice_files):
        subject = Path(truth_path).name.split("_")[0]
        assert Path(map_path) == root / "spin" / subject[:5] / subject / f"{subject}_small_lesion_map.npy"
        assert Path(slices_path).name == f"{subject}_small_lesion_slices.txt"
        truth = np.load(truth_path)
        expected = small_lesion_slices(truth)
        np.testing.assert_array_equal(read_slice_indices(slices_path), expected)
        np.testing.assert_array_equal(result["slices"][subject], expected)
        np.testing.assert_array_equal(np.load(map_path), small_lesion_map(truth, expected))
        total += len(expected)
    assert total > 0


def test_small_lesion_cli_missing_list_exits_2(tmp_path):
    completed = run_python(
        [str(REPO / "setup/setup_dataset_atlas_small_lesion.py"), "--lists_dir", str(tmp_path),
         "--data_dir", str(tmp_path / "spin")], timeout=60)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "test_ground_truths.txt" in lines[0] and "Traceback" not in completed.stderr
    assert not (tmp_path / "spin").exists()

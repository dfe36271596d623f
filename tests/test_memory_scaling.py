"""Memory-mapped volumes: peak RSS of a training data pass does not grow with the number of subjects.

Each case runs in a fresh process and reports its peak RSS (``VmHWM``). 200 subjects of
64x64x40 (0.66 MB scan + 0.16 MB mask each, ~164 MB in all) must peak within 10% of 20 subjects
(~16 MB) on top of a ~200+ MB torch baseline. A control case loads every volume whole (as a
dataset without memory mapping would keep them) and must break that bound, which shows the
test would catch such a regression.
"""
from __future__ import annotations

import sys

import pytest

from conftest import run_python, write_volume_set

SHAPE = (64, 64, 40)
MARGIN = 0.10

# One training data pass: every subject once, batches of 8, main process only (so the peak RSS of
# this process is the whole story), followed by a few steps of a tiny model on the batches.
PROBE = r"""
import sys
import numpy as np
import torch
from torch.utils.data import DataLoader
import spinseg.data.slices as slices
from spinseg.data.volumes import read_paired_lists

scans_path, masks_path, mode = sys.argv[1:4]
scans, masks = read_paired_lists(scans_path, masks_path)
if mode == "preload":
    # Control: what a dataset that loads volumes whole (no mmap) and keeps them would hold.
    cache = {}
    original = slices.load_volume
    def load_whole(path, *args, **kwargs):
        if path not in cache:
            cache[path] = np.array(original(path, *args, mmap=False, **kwargs))
        return cache[path]
    slices.load_volume = load_whole
torch.manual_seed(0)
model = torch.nn.Conv2d(5, 1, 3, padding=1)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
dataset = slices.SliceTrainingDataset(scans, masks, n_chunk=5, augmentation_probability=0.5)
count = 0
for step, (images, targets) in enumerate(DataLoader(dataset, batch_size=8, shuffle=True, num_workers=0)):
    count += images.shape[0]
    if step < 3:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), targets)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
assert count == len(scans), count
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (the pytest process, already
# large in a full run) across exec, while VmHWM belongs to this process's own address space.
print("PEAK_RSS_KB", next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def peak_rss_kilobytes(scans, masks, mode: str) -> int:
    """Peak RSS (KiB) of one data pass over the listed subjects, measured in a fresh process."""
    completed = run_python(["-c", PROBE, str(scans), str(masks), mode], timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = [line for line in completed.stdout.splitlines() if line.startswith("PEAK_RSS_KB")][-1]
    return int(line.split()[1])


@pytest.fixture(scope="module")
def subject_lists(tmp_path_factory):
    """{20: lists, 200: lists} of synthetic subjects (the 200 include fresh files, not links to the 20)."""
    return {
        count: write_volume_set(tmp_path_factory.mktemp(f"subjects{count}"), n_subjects=count, shape=SHAPE, seed=count)
        for count in (20, 200)
    }


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux)")
def test_peak_memory_does_not_grow_with_the_number_of_subjects(subject_lists):
    few = peak_rss_kilobytes(*subject_lists[20], "mmap")
    many = peak_rss_kilobytes(*subject_lists[200], "mmap")
    assert many <= (1 + MARGIN) * few, f"peak RSS {many / 1024:.0f} MB with 200 subjects vs {few / 1024:.0f} MB with 20"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux)")
def test_control_loading_volumes_whole_breaks_the_bound(subject_lists):
    few = peak_rss_kilobytes(*subject_lists[20], "preload")
    many = peak_rss_kilobytes(*subject_lists[200], "preload")
    assert many > (1 + MARGIN) * few, (
        f"the control should exceed the margin ({many / 1024:.0f} MB vs {few / 1024:.0f} MB); "
        "the volumes are too small for this test to detect whole loading"
    )

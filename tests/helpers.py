"""Small prepared data sets for tests: dark cubic lesions in bright noisy volumes, as .npy + lists."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

SMALL_SPIN_CONFIG = str(Path(__file__).parent / "fixtures" / "spin_small_config.json")


def write_volume_set(directory: Path, n_subjects: int, shape=(32, 36, 12), seed: int = 0, prefix: str = "c0001s"):
    """Writes n_subjects ATLAS-named scan/mask pairs and returns (scans list path, masks list path)."""
    rng = np.random.default_rng(seed)
    scans, masks = [], []
    for index in range(n_subjects):
        subject = f"{prefix}{index:04d}t01"
        folder = directory / subject[:5] / subject
        folder.mkdir(parents=True, exist_ok=True)
        scan = rng.normal(70.0, 6.0, shape).astype(np.float32)
        mask = np.zeros(shape, dtype=np.uint8)
        centre = rng.integers(8, np.array(shape[:2]) - 8)
        depth = rng.integers(3, shape[2] - 3)
        size = rng.integers(3, 6)
        mask[centre[0] - size : centre[0] + size, centre[1] - size : centre[1] + size, depth - 2 : depth + 2] = 1
        scan[mask > 0] = rng.normal(15.0, 4.0, int(mask.sum()))
        scan_path = folder / f"{subject}_t1w_stx.npy"
        mask_path = folder / f"{subject}_LesionSmooth_stx.npy"
        np.save(scan_path, scan)
        np.save(mask_path, mask)
        scans.append(str(scan_path))
        masks.append(str(mask_path))
    scans_list, masks_list = directory / "scans.txt", directory / "masks.txt"
    scans_list.write_text("\n".join(scans) + "\n")
    masks_list.write_text("\n".join(masks) + "\n")
    return scans_list, masks_list


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of ``model`` (trainable or not)."""
    return sum(parameter.numel() for parameter in model.parameters())


def documented_parameter_count(cls: type) -> int:
    """The count a model class states in its docstring ("Parameters at defaults: N")."""
    match = re.search(r"Parameters at defaults: ([\d,]+)", cls.__doc__)
    assert match, f"{cls.__name__} docstring must state its parameter count"
    return int(match.group(1).replace(",", ""))


def assert_finite_gradients(model: torch.nn.Module) -> None:
    """Every trainable parameter got a finite gradient."""
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"

"""The release's own inference loop, the reference a speed claim is measured against.

What a user of the original code runs on a registered scan: the release's evaluation
(``src/eval_utils.py``, ``validateMRI``) takes every axial slice in turn, cuts its window of
``n_chunk`` neighbouring slices out of the scan tensor (slices past the ends filled with the
data set mean), normalises it, runs the model as trained on that one window (batch of 1),
applies the sigmoid, thresholds at 0.5 and copies the slice's mask to the CPU. Rewritten here
from that description, with nothing of ours added: no batching, no background skipping, no
folded batch norm, no channels-last. ``python -m spinseg.experiments.release_loop`` wraps it in
what the user's process does around it (imports, loading the checkpoint, reading the NIfTI,
writing the mask), so that the benchmark can time both programs end to end, each in a fresh
process (:mod:`spinseg.experiments.end_to_end`).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from spinseg.data.transforms import Normalization


@torch.no_grad()
def release_slice_loop(model: torch.nn.Module, volume: np.ndarray, n_chunk: int, normalization: Normalization,
                       threshold: float = 0.5, device: str = "cpu") -> np.ndarray:
    """Mask of a raw volume (H, W, D) -> uint8 (H, W, D), one slice per forward pass as the release does."""
    model = model.eval().to(device)
    half = n_chunk // 2
    # The release pads the scan tensor once with the data set mean and cuts windows from it.
    scan = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).permute(2, 0, 1)  # (D, H, W)
    padding = torch.full((half,) + tuple(scan.shape[1:]), normalization.pad_value())
    padded = torch.cat([padding, scan, padding])
    mask = np.zeros(volume.shape, dtype=np.uint8)
    for index in range(scan.shape[0]):
        window = normalization(padded[index : index + n_chunk][None]).to(device)  # (1, n_chunk, H, W)
        probability = torch.sigmoid(model(window))
        mask[..., index] = (probability[0, 0] > threshold).to(torch.uint8).cpu().numpy()
    return mask


def build_parser() -> argparse.ArgumentParser:
    """Flags of the release-loop program (the benchmark's reference)."""
    parser = argparse.ArgumentParser(prog="python -m spinseg.experiments.release_loop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="model checkpoint (any format load_model reads)")
    parser.add_argument("--model", default="spin", help="registry name of the network (default: spin)")
    parser.add_argument("--input", required=True, help="T1 NIfTI on the grid the model was trained on")
    parser.add_argument("--output", required=True, help="mask NIfTI to write")
    parser.add_argument("--n_chunk", type=int, default=5, help="stacked slices (default: 5, SPiN's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Reads the scan, runs :func:`release_slice_loop` with ATLAS's normalisation, writes the mask."""
    import nibabel as nib

    from spinseg.models.checkpoint import load_model

    args = build_parser().parse_args(argv)
    model = load_model(args.checkpoint, args.model)
    image = nib.load(args.input)
    volume = np.asarray(image.dataobj, dtype=np.float32)
    mask = release_slice_loop(model, volume, args.n_chunk, Normalization(), device=args.device)
    nib.save(nib.Nifti1Image(mask, image.affine), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU memory each model's recipe needs, counted on PyTorch's ``meta`` device (no memory, no GPU).

Every tensor an operation creates is tracked by its storage until Python frees it; the peak of
the live bytes over a training step (forward, backward, Adam) and over one inference batch is
what the GPU's caching allocator must hold at least. Not counted: cuDNN/cuBLAS workspaces, the
CUDA context (~0.5 GiB) and allocator fragmentation, so leave ~20% headroom.
``python -m spinseg.benchmark --memory_estimate`` prints the table.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from spinseg.constants import ATLAS_SHAPE

GIB = 2**30


class LiveTensorBytes(TorchDispatchMode):
    """Dispatch mode that keeps the peak of live storage bytes created inside it (views counted once)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def forget_freed(self) -> None:
        """Drops storages whose last tensor Python has released."""
        for key in [key for key, (reference, _) in self.live.items() if reference.expired()]:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        self.forget_freed()
        for item in tree_flatten(output)[0]:
            if isinstance(item, torch.Tensor):
                storage = item.untyped_storage()
                key = storage._cdata
                if key not in self.live:
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return output


@dataclass
class RecipeMemory:
    """One model recipe's memory on a GPU (GiB)."""

    model: str
    parameters: int
    train_input: tuple[int, int, int, int]
    train_gib: float
    inference_input: tuple[int, int, int, int]
    inference_gib: float


def meta_model(name: str) -> tuple[torch.nn.Module, int]:
    """Model ``name`` as its recipe builds it, on the meta device; returns (model, n_chunk)."""
    from spinseg.experiments.benchmark import model_setup
    from spinseg.models import build_model

    config, n_chunk, _ = model_setup(name)
    with torch.device("meta"):
        model = build_model(name, **config)
    return model, n_chunk


def training_step_bytes(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """Peak bytes of one Adam step at ``input_shape`` (B, C, H, W): weights, Adam's two moments,
    gradients and activations (weights and moments counted from the parameter count)."""
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.train()
    with LiveTensorBytes() as tracker:
        images = torch.zeros(input_shape, device="meta")
        targets = torch.zeros((input_shape[0], 1, *input_shape[2:]), device="meta")
        logits = model(images)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets)
        loss.backward()
        del logits, loss, images, targets
    model.zero_grad(set_to_none=True)
    return 3 * parameter_bytes + tracker.peak


def inference_bytes(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """Peak bytes of one forward pass without gradients at ``input_shape`` (B, C, H, W), weights included."""
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.eval()
    with torch.no_grad(), LiveTensorBytes() as tracker:
        model(torch.zeros(input_shape, device="meta"))
    return parameter_bytes + tracker.peak


def recipe_memory(name: str) -> RecipeMemory:
    """Training (recipe's batch and crop) and validation/evaluation (its batch, whole slices) memory of ``name``."""
    from spinseg.recipes.config import TrainConfig
    from spinseg.recipes.named import recipe

    defaults, settings = TrainConfig(), recipe(name).train
    model, n_chunk = meta_model(name)
    height, width = settings.get("crop_shape") or defaults.crop_shape or ATLAS_SHAPE[:2]
    train_input = (settings.get("n_batch", defaults.n_batch), n_chunk, height, width)
    inference_input = (settings.get("val_batch_size", defaults.val_batch_size), n_chunk, *ATLAS_SHAPE[:2])
    return RecipeMemory(
        name, sum(p.numel() for p in model.parameters()),
        train_input, training_step_bytes(model, train_input) / GIB,
        inference_input, inference_bytes(model, inference_input) / GIB,
    )


def recipe_memory_table(names: list[str] | None = None) -> list[RecipeMemory]:
    """:func:`recipe_memory` of every recipe (or of ``names``)."""
    from spinseg.recipes.named import RECIPES

    return [recipe_memory(name) for name in (names or list(RECIPES))]


def format_memory_table(rows: list[RecipeMemory]) -> str:
    """Markdown table of :func:`recipe_memory_table` rows."""
    lines = [
        "| model | parameters | training input (B, C, H, W) | training GiB | validation input | validation GiB |",
        "|---|---:|---|---:|---|---:|",
    ]
    for row in rows:
        lines.append(f"| {row.model} | {row.parameters:,} | {row.train_input} | {row.train_gib:.1f} | "
                     f"{row.inference_input} | {row.inference_gib:.1f} |")
    lines.append("")
    lines.append("Meta-device count of live tensors (weights, Adam moments, gradients, activations), fp32; "
                 "without cuDNN workspaces, the CUDA context (~0.5 GiB) or allocator fragmentation.")
    return "\n".join(lines)

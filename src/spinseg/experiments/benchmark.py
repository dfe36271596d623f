"""Speed and memory benchmark: ``python -m spinseg.benchmark`` (plain eager path vs the optimised one).

For every model of the registry that imports (or those given with ``--models``), on synthetic
memory-mapped volumes of the ATLAS shape, in one run on one machine:

* parameters and forward GFLOP per slice (``torch.utils.flop_counter.FlopCounterMode``);
* inference seconds per volume: :func:`spinseg.inference.predictor.predict_volume` with the plain
  options against the optimised ones (folded batch norm, channels-last, background slices
  skipped), their achieved GFLOP/s and its fraction of a measured fp32 matmul rate;
* training slices per second: the trainer's own step (:func:`spinseg.training.trainer.training_step`
  with the model's recipe) on the plain eager model against the channels-last one (and
  ``torch.compile`` with ``--compile``);
* with ``--bf16`` (default: where the device computes bf16 in hardware, e.g. CPUs with
  AVX512-BF16), the optimised inference and training paths once more under bf16 autocast
  (``--amp`` of the commands), against the same fp32 plain path, checked with the bf16 tolerance
  and their GFLOP/s set against a bf16 matmul;
* peak memory per phase (CPU: peak RSS above the phase's start, each phase in a fresh process by
  default; GPU: ``torch.cuda.max_memory_allocated``);
* data loading slices per second from a ``SliceTrainingDataset`` (0 workers vs ``--n_workers``).

The optimised outputs are checked against the plain ones (PASS/FAIL with the max abs difference);
any FAIL makes the exit code 1. Results go to a table on stdout and to ``--output_json``.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from spinseg.errors import UserInputError

QUICK_SHAPE = (32, 36, 12)
# Agreement tolerances between the plain and the optimised path (probabilities / relative loss).
# bf16 autocast rounds every convolution to 8 mantissa bits, so its paths agree far more loosely.
TOLERANCE_FP32 = {"probability": 1e-4, "loss": 1e-4}
TOLERANCE_AMP = {"probability": 5e-2, "loss": 2e-2}
PHASE_RESULT_PREFIX = "BENCHMARK_PHASE_RESULT "


# ----------------------------------------------------------------------------------------------
# Measurements shared by the phases.
# ----------------------------------------------------------------------------------------------


def read_status_kilobytes(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (VmRSS, VmHWM); None where /proc is unavailable."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Resets this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); True on success."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a block of work, in MiB: GPU peak allocation, or CPU peak RSS above the start.

    On the CPU the peak is VmHWM (reset at the start when the kernel allows, else the process's
    peak so far, which a fresh phase process keeps close to the start) minus VmRSS at the start.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.megabytes: float | None = None
        self.method = ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.was_reset = reset_peak_rss()
            self.start = read_status_kilobytes("VmRSS") or 0
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.megabytes = (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
            self.method = "torch.cuda.max_memory_allocated above the phase start"
            return
        peak = read_status_kilobytes("VmHWM")
        if peak is None:  # not Linux: ru_maxrss is KiB on Linux, bytes on macOS
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
        self.megabytes = max(peak - self.start, 0) / 1024
        self.method = "VmHWM (reset at start) - VmRSS at start" if self.was_reset else "VmHWM - VmRSS at start"


def synchronize(device: torch.device) -> None:
    """Waits for queued GPU work so that timings are honest; a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, size: int | None = None, repeats: int = 5) -> float:
    """Best-of-``repeats`` rate of one square ``torch.mm`` (2 n^3 FLOP) on ``device``, in GFLOP/s."""
    size = size or (8192 if device.type == "cuda" else 2048)
    left = torch.randn(size, size, device=device, dtype=dtype)
    right = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(left, right)  # warm-up: library initialisation, GPU clocks
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(left, right)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    del left, right
    if device.type == "cuda":
        # The probe's 8192^2 operands must not count towards the phases' peak memory.
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return 2 * size**3 / best / 1e9


def quick_matmul_size(args) -> int | None:
    """The matmul probe's size: small with ``--quick`` (a test of the machinery, whose figures are not
    reported; emulated bf16 on CPUs without bf16 units takes minutes at full size), else the default."""
    return 512 if getattr(args, "quick", False) else None


def summarize_times(seconds: list[float]) -> dict[str, float]:
    """{"min", "median", "all"} of a list of timings."""
    return {"min": min(seconds), "median": statistics.median(seconds), "all": seconds}


# ----------------------------------------------------------------------------------------------
# Synthetic data and models.
# ----------------------------------------------------------------------------------------------


def write_synthetic_volumes(directory: Path, n_volumes: int, shape: tuple[int, int, int], seed: int = 0) -> tuple[list[str], list[str]]:
    """Writes ``n_volumes`` brain-like (H, W, D) float32 scans and uint8 masks as .npy files.

    A noisy ellipsoid "brain" (intensities 1-120) sits in a background of exact zeros and spans the
    middle ~80% of the axial slices, so, as in ATLAS, the end slices are empty and can be skipped.
    Each mask holds one small cubic lesion. Returns (scan paths, mask paths).
    """
    rng = np.random.default_rng(seed)
    height, width, depth = shape
    rows, columns, slices = np.meshgrid(
        np.linspace(-1, 1, height), np.linspace(-1, 1, width), np.linspace(-1, 1, depth), indexing="ij"
    )
    brain = rows**2 / 0.8**2 + columns**2 / 0.8**2 + slices**2 / 0.8**2 <= 1.0
    scans, masks = [], []
    for index in range(n_volumes):
        scan = np.where(brain, np.clip(rng.normal(60.0, 20.0, shape), 1.0, 120.0), 0.0).astype(np.float32)
        mask = np.zeros(shape, dtype=np.uint8)
        centre = (height // 2 + rng.integers(-4, 5), width // 2 + rng.integers(-4, 5), depth // 2 + rng.integers(-2, 3))
        size = max(1, min(shape) // 12)
        region = tuple(slice(max(c - size, 0), c + size) for c in centre)
        mask[region] = 1
        scan[region] = 10.0  # lesions are dark in T1
        scans.append(str(directory / f"scan{index:03d}.npy"))
        masks.append(str(directory / f"mask{index:03d}.npy"))
        np.save(scans[-1], scan)
        np.save(masks[-1], mask)
    return scans, masks


def model_setup(name: str) -> tuple[dict, int, Any]:
    """(model config, n_chunk, normalization) of model ``name`` from its training recipe."""
    from spinseg.data.transforms import Normalization
    from spinseg.models.model_config import model_input_config
    from spinseg.recipes.named import recipe

    model_recipe = recipe(name)
    config = model_input_config(name, model_recipe.n_chunk, 1, dict(model_recipe.model_config))
    normalization_flags = model_recipe.normalization()
    normalization = Normalization(
        normalization_flags["dataset_normalization"], normalization_flags["dataset_means"], normalization_flags["dataset_stddevs"]
    )
    return config, model_recipe.n_chunk, normalization


def importable_models(names: list[str]) -> tuple[list[str], dict[str, str]]:
    """The names whose model class imports, and {name: reason} for the others."""
    from spinseg.models import model_class

    usable, skipped = [], {}
    for name in names:
        try:
            model_class(name)
            usable.append(name)
        except UserInputError as error:
            skipped[name] = str(error)
        except Exception as error:  # a half-written model file must not stop the other models
            skipped[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
    return usable, skipped


def reference_state_dict(name: str, config: dict, n_chunk: int, normalization, scan_path: str, height: int, width: int,
                         seed: int, checkpoint: str = "") -> dict[str, torch.Tensor]:
    """Weights every phase of model ``name`` starts from.

    From ``checkpoint`` when given; otherwise a seeded random initialisation whose batch norms get
    running statistics from a train-mode pass over a few real slices, as a trained model has them
    (with the defaults, mean 0 and variance 1, folding batch norm would be almost a no-op and the
    check of it meaningless).
    """
    from spinseg.data.volumes import load_volume, stack_slices
    from spinseg.models import build_model
    from spinseg.models.checkpoint import load_model

    torch.manual_seed(seed)
    if checkpoint:  # any format load_model reads: ours, the release's .pth, the authors' Keras .h5/.hdf5
        return load_model(checkpoint, name, **config).state_dict()
    model = build_model(name, **config)
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if batch_norms:
        volume = load_volume(scan_path)
        depth = volume.shape[-1]
        slices = np.stack([stack_slices(volume, int(i), n_chunk, normalization.pad_value()) for i in np.linspace(depth * 0.3, depth * 0.7, 4).astype(int)])
        for module in batch_norms:
            module.momentum = None  # cumulative average: the statistics of exactly these slices
            module.reset_running_stats()
        model.train()
        with torch.no_grad():
            model(normalization(torch.from_numpy(slices)))
    return model.state_dict()


def gflop_per_slice(model: torch.nn.Module, in_channels: int, height: int, width: int) -> float:
    """Forward GFLOP of one (1, in_channels, height, width) slice (convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, in_channels, height, width))
    return counter.get_total_flops() / 1e9


# ----------------------------------------------------------------------------------------------
# Phases: each measured alone (in a fresh process on CPU, for a clean peak RSS).
# ----------------------------------------------------------------------------------------------


def build_phase_model(spec: dict) -> tuple[torch.nn.Module, int, Any]:
    """The model of a phase with the reference weights loaded: (model, n_chunk, normalization)."""
    from spinseg.models import build_model

    config, n_chunk, normalization = model_setup(spec["model"])
    model = build_model(spec["model"], **config)
    model.load_state_dict(torch.load(spec["state_dict_path"], map_location="cpu", weights_only=True))
    return model, n_chunk, normalization


def phase_inference_options(spec: dict, n_chunk: int, normalization) -> Any:
    """The :class:`~spinseg.inference.predictor.InferenceOptions` of an inference variant.

    "plain*": the model as trained, every slice; otherwise the prepared model ("*compile": with
    ``torch.compile``), skipping background slices when the spec says so.
    """
    from spinseg.inference.predictor import InferenceOptions

    plain = spec["variant"].startswith("plain")
    return InferenceOptions(
        normalization=normalization, n_chunk=n_chunk, batch_size=spec["batch_size"], device=spec["device"], amp=spec["amp"],
        prepare=not plain, compile=spec["variant"].endswith("compile"), skip_background=not plain and spec["skip_background"],
    )


def run_inference_phase(spec: dict) -> dict:
    """Times whole-volume inference by :func:`spinseg.inference.predictor.predict_volume` under the variant's options.

    Plain ("plain", "plain_default_heap") or optimised ("fast", "fast_bf16", "fast_compile").
    """
    from spinseg.data.volumes import load_volume, stack_slices
    from spinseg.inference.predictor import predict_batch, predict_volume, prepare_for_inference

    device = torch.device(spec["device"])
    model, n_chunk, normalization = build_phase_model(spec)
    options = phase_inference_options(spec, n_chunk, normalization)
    volume = load_volume(spec["scan_path"])
    result: dict[str, Any] = {"batch_size": options.batch_size}
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        model = prepare_for_inference(model.to(device), options)
        # Warm-up on one batch of middle slices (library set-up, compilation), timed apart.
        middle = volume.shape[-1] // 2
        warm_batch = np.stack([stack_slices(volume, middle, n_chunk, normalization.pad_value())] * options.batch_size)
        predict_batch(model, torch.from_numpy(warm_batch), options)
        synchronize(device)
        result["prepare_and_warmup_seconds"] = time.perf_counter() - start
        # The matmul rate right here, under the same load as the timings (a shared machine's
        # load moves within minutes); the report compares against the best rate seen.
        result["matmul_gflops_in_phase"] = matmul_gflops(device, torch.bfloat16 if options.amp else torch.float32,
                                                         size=spec.get("matmul_size"), repeats=3)
        seconds, info = [], {}
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            probabilities, info = predict_volume(model, volume, options)
            synchronize(device)
            seconds.append(time.perf_counter() - start)
    np.save(spec["output_path"], probabilities)
    result.update(seconds_per_volume=summarize_times(seconds), peak_memory_mb=memory.megabytes, memory_method=memory.method,
                  slices_run=info.get("slices_run", volume.shape[-1]), slices_skipped=info.get("slices_skipped", 0),
                  skip_disabled=info.get("skip_disabled", ""), background_max_probability=info.get("background_max_probability"))
    return result


def training_batch(spec: dict, n_chunk: int, normalization) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed training batch (images (B, n_chunk, H, W), targets (B, 1, H, W)) from the dataset."""
    from spinseg.data.slices import SliceTrainingDataset

    dataset = SliceTrainingDataset(spec["scan_paths"], spec["mask_paths"], n_chunk=n_chunk, normalization=normalization,
                                   augmentation_probability=0.0, seed=spec["seed"])
    samples = [dataset[index % len(dataset)] for index in range(spec["batch_size"])]
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def recipe_train_config(name: str):
    """The ``TrainConfig`` the trainer would use for model ``name`` under its named recipe."""
    from dataclasses import replace

    from spinseg.recipes.config import TrainConfig
    from spinseg.recipes.named import recipe

    return replace(TrainConfig(), **recipe(name).train)


def run_training_phase(spec: dict) -> dict:
    """Times the trainer's own step (:func:`spinseg.training.trainer.training_step`, with the model's
    recipe: loss, optimiser, learning rate, weight decay, lesion weight) on one full-slice batch: plain eager,
    channels-last (fp32 or bf16 autocast), or channels-last + compile.

    The first step (same weights, same batch in every variant, dropout off) gives the loss the
    variants are compared on; it is also the warm-up and is timed apart.
    """
    from dataclasses import replace

    from spinseg.acceleration.training import prepare_training_model
    from spinseg.runtime.distributed import DistributedContext
    from spinseg.training.losses import build_loss, build_optimizer
    from spinseg.training.trainer import batch_to_device, training_step, wrap_for_training

    device = torch.device(spec["device"])
    model, n_chunk, normalization = build_phase_model(spec)
    images, targets = training_batch(spec, n_chunk, normalization)
    channels_last = not spec["variant"].startswith("plain")
    config = replace(recipe_train_config(spec["model"]), channels_last=channels_last, amp=spec["amp"],
                     compile=spec["variant"].endswith("compile"))
    model.to(device).train()
    if channels_last:  # the trainer's optimised path (spinseg.acceleration.training); "plain" is the bare model
        prepare_training_model(model, device, channels_last=True)
    images, targets = batch_to_device(images, targets, device, channels_last)
    forward_model = wrap_for_training(model, config, DistributedContext(), device)
    optimizer = build_optimizer(config.optimizer, [p for p in model.parameters() if p.requires_grad],
                                config.learning_rates[0], config.w_weight_decay)
    loss_function = build_loss(config.loss_func_segmentation, config.w_positive_class)

    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]

    def step(deterministic: bool = False) -> float:
        # The compared first step runs dropout as identity: a random mask drawn in another memory
        # layout would differ between variants for reasons that are no bug.
        for module in dropouts:
            module.train(not deterministic)
        loss, _ = training_step(forward_model, optimizer, images, targets, loss_function, config.amp)
        return loss.item()  # .item() also waits for the GPU

    with PeakMemory(device) as memory:
        start = time.perf_counter()
        first_loss = step(deterministic=True)
        warmup = time.perf_counter() - start
        seconds = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
    times = summarize_times(seconds)
    return {"first_step_loss": first_loss, "warmup_seconds": warmup, "seconds_per_step": times,
            "slices_per_second": spec["batch_size"] / times["min"], "peak_memory_mb": memory.megabytes,
            "memory_method": memory.method, "batch_size": spec["batch_size"]}


def run_data_phase(spec: dict) -> dict:
    """Slices per second drawn by a training DataLoader over the memory-mapped volumes."""
    from torch.utils.data import DataLoader, RandomSampler

    from spinseg.data.slices import SliceTrainingDataset
    from spinseg.data.transforms import Normalization

    device = torch.device(spec["device"])
    dataset = SliceTrainingDataset(spec["scan_paths"], spec["mask_paths"], n_chunk=5, normalization=Normalization(),
                                   augmentation_probability=spec["augmentation_probability"], seed=spec["seed"])
    sampler = RandomSampler(dataset, replacement=True, num_samples=spec["n_samples"], generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=spec["batch_size"], sampler=sampler, num_workers=spec["n_workers"],
                        pin_memory=device.type == "cuda")
    with PeakMemory(torch.device("cpu")) as memory:
        start = time.perf_counter()
        count = 0
        for images, _ in loader:
            count += images.shape[0]
        seconds = time.perf_counter() - start
    return {"slices": count, "seconds": seconds, "slices_per_second": count / seconds, "n_workers": spec["n_workers"],
            "pin_memory": device.type == "cuda", "peak_memory_mb": memory.megabytes,
            "augmentation_probability": spec["augmentation_probability"]}


PHASES = {"inference": run_inference_phase, "training": run_training_phase, "data": run_data_phase}


def run_phase(spec: dict, isolate: bool) -> dict:
    """Runs one phase here or in a fresh ``python -m spinseg.benchmark --phase`` process."""
    if not isolate:
        return PHASES[spec["kind"]](spec)
    # The fresh process follows this one's TF32 choice (configure_cuda_math in the command).
    spec = {**spec, "allow_tf32": bool(torch.backends.cudnn.allow_tf32)}
    command = [sys.executable, "-m", "spinseg.benchmark", "--phase", json.dumps(spec)]
    environment = dict(os.environ)
    if spec.get("default_heap"):  # glibc's own malloc settings, as a script that does not tune them gets
        environment["SPINSEG_DEFAULT_MALLOC"] = "1"
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    for line in completed.stdout.splitlines():
        if line.startswith(PHASE_RESULT_PREFIX):
            return json.loads(line[len(PHASE_RESULT_PREFIX) :])
    raise RuntimeError(f"benchmark phase {spec['kind']}/{spec.get('model')}/{spec.get('variant')} failed "
                       f"(exit {completed.returncode}):\n{completed.stderr[-3000:]}")


# ----------------------------------------------------------------------------------------------
# The whole benchmark.
# ----------------------------------------------------------------------------------------------


def machine_description(device: torch.device) -> dict:
    """CPU model, core count, torch version, GPU name and load average, for the record."""
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    description = {"cpu": cpu_model, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "torch": torch.__version__, "python": platform.python_version(), "load_average": list(os.getloadavg()),
                   "glibc_malloc_tuned": os.environ.get("SPINSEG_DEFAULT_MALLOC") != "1"}
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
    return description


def float_rounding_errors(model: torch.nn.Module, scan_path: str, n_chunk: int, normalization, n_slices: int = 4) -> dict:
    """How far fp32 probabilities of the plain and of the optimised model lie from float64 ones.

    On ``n_slices`` middle slices: max |p_fp32 - p_fp64| for the plain model and for the prepared
    one, both run by :func:`spinseg.inference.predictor.predict_batch`. Some networks (e.g. X-Net with sharp batch norms) amplify
    fp32 rounding far beyond 1e-4 in the plain path already; there the optimised path is held to
    the plain path's own error instead of a fixed tolerance.
    """
    import copy

    from spinseg.data.volumes import load_volume, stack_slices
    from spinseg.inference.predictor import InferenceOptions, predict_batch, prepare_for_inference

    volume = load_volume(scan_path)
    middle = volume.shape[-1] // 2
    indices = range(max(middle - n_slices // 2, 0), min(middle - n_slices // 2 + n_slices, volume.shape[-1]))
    raw = torch.from_numpy(np.stack([stack_slices(volume, i, n_chunk, normalization.pad_value()) for i in indices]))
    plain_options = InferenceOptions(normalization=normalization, n_chunk=n_chunk, prepare=False)
    fast_options = InferenceOptions(normalization=normalization, n_chunk=n_chunk, prepare=True)
    model = prepare_for_inference(model, plain_options)  # eval mode, as it is
    with torch.inference_mode():
        exact = torch.sigmoid(copy.deepcopy(model).double()(normalization(raw).double()))[:, 0].numpy()
    plain = predict_batch(model, raw, plain_options).astype(np.float64)
    fast = predict_batch(prepare_for_inference(model, fast_options), raw, fast_options).astype(np.float64)
    return {"plain_vs_float64": float(np.abs(plain - exact).max()), "optimised_vs_float64": float(np.abs(fast - exact).max()),
            "slices": list(indices)}


def training_loss_rounding(model: torch.nn.Module, spec: dict, n_chunk: int, normalization, positive_weight: float) -> dict:
    """|fp32 - float64| of the first training step's loss (train mode, dropout off) on the phases' batch.

    Batch norm in train mode divides by batch standard deviations, which amplifies rounding in
    nearly constant channels (trained networks have some); the channels-last variant is then
    held to the plain path's own error where that exceeds the fixed tolerance.
    """
    import copy

    images, targets = training_batch(spec, n_chunk, normalization)
    losses = {}
    for dtype in (torch.float32, torch.float64):
        network = copy.deepcopy(model).to(dtype).train()
        for module in network.modules():
            if isinstance(module, torch.nn.modules.dropout._DropoutNd):
                module.eval()
        with torch.no_grad():
            logits = network(images.to(dtype))
            losses[dtype] = float(F.binary_cross_entropy_with_logits(logits, targets.to(dtype), pos_weight=torch.tensor([positive_weight], dtype=dtype)))
    return {"plain_loss": losses[torch.float32], "float64_loss": losses[torch.float64],
            "plain_vs_float64": abs(losses[torch.float32] - losses[torch.float64])}


def compare_inference(plain_path: str, fast_path: str, scan_path: str, n_chunk: int, pad_value: float, tolerance: float,
                      rounding: dict | None = None) -> dict:
    """Agreement of the optimised probabilities with the plain ones.

    The max abs difference is taken over the slices the optimised path ran and must stay within
    ``tolerance``, or within 4x the plain path's own fp32 rounding error (``rounding``, from
    :func:`float_rounding_errors`) where that is larger. On the skipped slices the check is that
    the thresholded masks are identical (the optimised path outputs 0 there).
    """
    from spinseg.data.volumes import load_volume
    from spinseg.inference.predictor import MASK_THRESHOLD, background_windows

    plain, fast = np.load(plain_path), np.load(fast_path)
    skipped = background_windows(load_volume(scan_path), n_chunk, pad_value, 0.0) & ~fast.any(axis=(0, 1))
    ran = ~skipped
    max_difference = float(np.abs(plain[..., ran] - fast[..., ran]).max()) if ran.any() else 0.0
    plain_mask, fast_mask = plain > MASK_THRESHOLD, fast > MASK_THRESHOLD
    mask_differences = int((plain_mask != fast_mask).sum())
    mask_voxels = int(plain_mask.sum() + fast_mask.sum())
    mask_dice = 2 * int((plain_mask & fast_mask).sum()) / mask_voxels if mask_voxels else 1.0
    mask_differences_skipped = int((plain_mask != fast_mask)[..., skipped].sum())
    allowed = max(tolerance, 4 * rounding["plain_vs_float64"]) if rounding else tolerance
    passed = max_difference <= allowed and mask_differences_skipped == 0
    return {"max_abs_difference": max_difference, "tolerance": tolerance, "allowed_difference": allowed,
            "float_rounding": rounding, "mask_voxels_different": mask_differences, "plain_mask_voxels": int(plain_mask.sum()),
            "mask_dice": mask_dice,
            "mask_voxels_different_on_skipped_slices": mask_differences_skipped,
            "skipped_slices_checked": int(skipped.sum()), "passed": passed}


BF16_VARIANTS = {"inference": "fast_bf16", "training": "channels_last_bf16"}


def variant_precision(variant: str, amp: bool) -> str:
    """"bf16" for the ``*_bf16`` variants (every variant under ``--amp``), else "fp32"."""
    return "bf16" if amp or variant.endswith("_bf16") else "fp32"


def variant_tolerance(variant: str, amp: bool) -> dict:
    """The agreement tolerances of a variant's precision."""
    return TOLERANCE_AMP if variant_precision(variant, amp) == "bf16" else TOLERANCE_FP32


def describe_model(name: str, setup: tuple[dict, int, Any], args, data: dict,
                   workdir: Path) -> tuple[dict, Path, dict | None, dict | None]:
    """Writes the reference weights every phase of ``name`` starts from; returns (the model's record
    so far: parameters and GFLOP per slice, the weights' file, fp32 rounding of inference and of the
    first training loss against float64 (None under ``--amp``)). ``setup``: :func:`model_setup`'s."""
    from spinseg.models import build_model

    config, n_chunk, normalization = setup
    state_dict = reference_state_dict(name, config, n_chunk, normalization, data["scan_paths"][0], args.height, args.width,
                                      args.seed, checkpoint=args.checkpoints.get(name, ""))
    state_dict_path = workdir / f"{name}_state_dict.pt"
    torch.save(state_dict, state_dict_path)
    model = build_model(name, **config)
    model.load_state_dict(state_dict)
    record: dict[str, Any] = {
        "model": name, "n_chunk": n_chunk, "config": config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "gflop_per_slice": gflop_per_slice(model, model.in_channels, args.height, args.width),
    }
    rounding = None if args.amp else float_rounding_errors(model, data["scan_paths"][0], n_chunk, normalization)
    loss_rounding = None if args.amp else training_loss_rounding(
        model, {"scan_paths": data["scan_paths"], "mask_paths": data["mask_paths"], "batch_size": args.batch_size, "seed": args.seed},
        n_chunk, normalization, recipe_train_config(name).w_positive_class)
    return record, state_dict_path, rounding, loss_rounding


def inference_specs(name: str, args, common: dict, data: dict, workdir: Path, extra_variants: list[str]) -> dict[str, dict]:
    """The inference phases of one model: plain, fast, and ``extra_variants`` (default heap, bf16, compile)."""
    return {
        variant: {**common, "amp": variant_precision(variant, args.amp) == "bf16", "kind": "inference", "variant": variant,
                  "scan_path": data["scan_paths"][0], "output_path": str(workdir / f"{name}_{variant}.npy"),
                  "skip_background": not args.no_skip_background,
                  "batch_size": args.inference_batch_size if variant.startswith("plain") else args.fast_batch_size,
                  "default_heap": variant.endswith("default_heap")}
        for variant in ["plain", "fast"] + extra_variants
    }


def score_inference(record: dict, specs: dict[str, dict], args, matmul_rates: dict[str, float], rounding: dict | None,
                    pad_value: float) -> None:
    """Adds to each inference result its achieved GFLOP/s, fraction of matmul, speed-ups and agreement check."""
    amp = args.amp
    # The best matmul rate of each precision seen at the start or inside a phase of that precision.
    best_matmul = {key: max([rate] + [r["matmul_gflops_in_phase"] for v, r in record["inference"].items()
                                      if variant_precision(v, amp) == key])
                   for key, rate in matmul_rates.items()}
    record["matmul_gflops_reference"] = best_matmul[variant_precision("fast", amp)]
    record["matmul_gflops_reference_by_precision"] = best_matmul
    inference = record["inference"]
    plain_seconds = inference["plain"]["seconds_per_volume"]
    for variant, result in inference.items():
        best = result["seconds_per_volume"]["min"]
        result["precision"] = variant_precision(variant, amp)
        result["achieved_gflops"] = result["slices_run"] * record["gflop_per_slice"] / best
        result["fraction_of_matmul"] = result["achieved_gflops"] / best_matmul[result["precision"]]
        result["seconds_per_slice"] = best / args.depth
        if variant == "plain_default_heap":
            result["slowdown_against_tuned_heap"] = best / plain_seconds["min"]
        elif variant != "plain":
            result["check"] = compare_inference(specs["plain"]["output_path"], specs[variant]["output_path"],
                                                specs[variant]["scan_path"], record["n_chunk"], pad_value,
                                                variant_tolerance(variant, amp)["probability"], rounding)
            result["speedup_over_plain"] = plain_seconds["min"] / best
            result["median_speedup_over_plain"] = plain_seconds["median"] / result["seconds_per_volume"]["median"]
            if "plain_default_heap" in inference:
                result["speedup_over_plain_default_heap"] = inference["plain_default_heap"]["seconds_per_volume"]["min"] / best


def training_check(result: dict, reference: float, tolerance: float, loss_rounding: dict | None) -> dict:
    """Agreement of a variant's first-step loss with the plain one's (``reference``), relative
    ``tolerance`` or 4x the plain path's own fp32 rounding where that is larger."""
    difference = abs(result["first_step_loss"] - reference)
    allowed = tolerance * max(abs(reference), 1e-12)
    if loss_rounding:
        allowed = max(allowed, 4 * loss_rounding["plain_vs_float64"])
    return {"first_step_loss_relative_difference": difference / max(abs(reference), 1e-12),
            "first_step_loss_difference": difference, "allowed_difference": allowed,
            "tolerance": tolerance, "float_rounding": loss_rounding, "passed": difference <= allowed}


def score_training(record: dict, amp: bool, loss_rounding: dict | None) -> None:
    """Adds to each training result its precision, speed-ups and first-step loss check."""
    training = record["training"]
    plain = training["plain"]
    for variant, result in training.items():
        result["precision"] = variant_precision(variant, amp)
        if variant == "plain_default_heap":
            result["slowdown_against_tuned_heap"] = plain["slices_per_second"] / result["slices_per_second"]
        elif variant != "plain":
            result["check"] = training_check(result, plain["first_step_loss"], variant_tolerance(variant, amp)["loss"], loss_rounding)
            result["speedup_over_plain"] = result["slices_per_second"] / plain["slices_per_second"]
            result["median_speedup_over_plain"] = plain["seconds_per_step"]["median"] / result["seconds_per_step"]["median"]
            if "plain_default_heap" in training:
                result["speedup_over_plain_default_heap"] = (result["slices_per_second"]
                                                             / training["plain_default_heap"]["slices_per_second"])


def benchmark_model(name: str, args, device: torch.device, data: dict, matmul_rates: dict[str, float], isolate: bool,
                    workdir: Path) -> dict:
    """All phases of one model; returns its JSON record.

    ``matmul_rates`` holds "fp32" and, when bf16 is measured, "bf16" GFLOP/s; each variant's
    achieved rate is set against the matmul of its own precision.
    """
    setup = model_setup(name)
    record, state_dict_path, rounding, loss_rounding = describe_model(name, setup, args, data, workdir)
    # Each spec's "amp" follows its variant's precision (inference_specs, below).
    common = {"model": name, "device": str(device), "state_dict_path": str(state_dict_path),
              "batch_size": args.batch_size, "repeats": args.repeats, "seed": args.seed,
              "matmul_size": quick_matmul_size(args)}
    # "plain_default_heap": the plain path in a process that keeps glibc's default malloc settings
    # (what a script that does not call spinseg.allocator gets); only with isolated CPU phases,
    # since the heap is set per process.
    default_heap = ["plain_default_heap"] if isolate and device.type == "cpu" else []

    bf16 = [BF16_VARIANTS["inference"]] if args.bf16_variants else []
    specs = inference_specs(name, args, common, data, workdir, default_heap + bf16 + (["fast_compile"] if args.compile else []))
    record["inference"] = interleaved_phases(specs, "repeats", args.repeats, isolate, f"{name}: inference")
    score_inference(record, specs, args, matmul_rates, rounding, setup[2].pad_value())

    bf16 = [BF16_VARIANTS["training"]] if args.bf16_variants else []
    training_variants = ["plain", "channels_last"] + default_heap + bf16 + (["channels_last_compile"] if args.compile else [])
    training_specs = {variant: {**common, "amp": variant_precision(variant, args.amp) == "bf16", "kind": "training",
                                "variant": variant, "scan_paths": data["scan_paths"], "mask_paths": data["mask_paths"],
                                "default_heap": variant.endswith("default_heap")}
                      for variant in training_variants}
    record["training"] = interleaved_phases(training_specs, "repeats", args.train_repeats, isolate, f"{name}: training")
    score_training(record, args.amp, loss_rounding)
    return record


def benchmark_header(args, device: torch.device, isolate: bool) -> tuple[dict[str, Any], dict[str, float]]:
    """The results' description of the run (machine, settings) and the matmul rates the phases are
    set against: ({...}, {"fp32": GFLOP/s, "bf16": GFLOP/s when bf16 is measured})."""
    from spinseg.runtime.distributed import native_bf16

    results: dict[str, Any] = {"machine": machine_description(device), "device": str(device), "amp": args.amp,
                               "bf16_variants": args.bf16_variants, "native_bf16": native_bf16(device),
                               "tf32": getattr(args, "tf32", False),
                               "shape": [args.height, args.width, args.depth], "isolated_phases": isolate,
                               "arguments": {k: v for k, v in vars(args).items() if k not in ("phase", "checkpoints")}}
    print(f"measuring the fp32 matmul rate on {device} ...", flush=True)
    results["matmul_gflops"] = matmul_gflops(device, size=quick_matmul_size(args))
    matmul_rates = {"fp32": results["matmul_gflops"]}
    if args.amp or args.bf16_variants:
        results["matmul_gflops_bf16"] = matmul_rates["bf16"] = matmul_gflops(device, torch.bfloat16, size=quick_matmul_size(args))
    # Fractions compare like with like: bf16 phases against the bf16 matmul rate.
    return results, matmul_rates


def benchmark_data_loading(args, device: torch.device, data: dict, isolate: bool) -> list[dict]:
    """The data phase with 0 workers and with ``--n_workers``."""
    results = []
    n_samples = 16 if args.quick else 96
    for n_workers in sorted({0, args.n_workers}):
        spec = {"kind": "data", "device": str(device), "scan_paths": data["scan_paths"], "mask_paths": data["mask_paths"],
                "seed": args.seed, "batch_size": args.batch_size, "n_workers": n_workers, "n_samples": n_samples,
                "augmentation_probability": 1.0}
        print(f"data loading with {n_workers} workers ...", flush=True)
        results.append(run_phase(spec, isolate))
    return results


def run_benchmark(args, device: torch.device, names: list[str], skipped_models: dict[str, str], isolate: bool) -> dict:
    """Every phase of every model in ``names``, then data loading, on synthetic volumes in a temporary
    folder; returns the JSON-ready results with "passed" (every check passed, no model failed).

    ``args``: the parsed command line (``spinseg.cli.benchmark``) with ``checkpoints`` and
    ``bf16_variants`` resolved. After each model the results so far go to ``--output_json``.
    """
    results, matmul_rates = benchmark_header(args, device, isolate)
    with tempfile.TemporaryDirectory(prefix="spinseg-benchmark-") as directory:
        workdir = Path(directory)
        scan_paths, mask_paths = write_synthetic_volumes(workdir, args.volumes, (args.height, args.width, args.depth), args.seed)
        data = {"scan_paths": scan_paths, "mask_paths": mask_paths}
        results["models"], results["skipped_models"], results["failed_models"] = [], skipped_models, {}
        for name in names if args.end_to_end != "only" else []:
            print(f"benchmarking {name} ...", flush=True)
            try:
                results["models"].append(benchmark_model(name, args, device, data, matmul_rates, isolate, workdir))
                write_results(args.output_json, {**results, "partial": True})  # a run cut short keeps what it measured
            except Exception as error:  # one broken model must not hide the others' figures, but fails the run
                results["failed_models"][name] = f"{type(error).__name__}: {str(error)[-1500:]}"
                print(f"  {name} FAILED: {results['failed_models'][name]}", flush=True)
        results["data_loading"] = benchmark_data_loading(args, device, data, isolate) if args.end_to_end != "only" else []
        if args.end_to_end != "no":
            results["end_to_end"] = benchmark_end_to_end(args, device, workdir)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())

    checks = [v["check"] for record in results["models"] for group in ("inference", "training")
              for v in record[group].values() if "check" in v]
    if "end_to_end" in results:
        checks.append(results["end_to_end"]["check"])
    finished = bool(results["models"]) or args.end_to_end == "only"
    results["passed"] = finished and not results["failed_models"] and all(check["passed"] for check in checks)
    return results


def benchmark_end_to_end(args, device: torch.device, workdir: Path) -> dict:
    """The end-to-end predict programs (:mod:`spinseg.experiments.end_to_end`) with ``--checkpoint spin=...``
    or seeded random weights; checked: our mask equals the release loop's but for rounding (Dice >= 0.999)."""
    from spinseg.experiments.end_to_end import run_end_to_end, write_checkpoint

    print("predict end to end ...", flush=True)
    directory = workdir / "end_to_end"
    directory.mkdir()
    checkpoint = args.checkpoints.get("spin") or write_checkpoint(directory, args.quick, args.seed)
    record = run_end_to_end(checkpoint, directory, args.end_to_end_repeats, args.quick, device=device.type)
    record["check"] = {"passed": record["agreement_plain_vs_release_loop"]["dice"] >= 0.999,
                       "what": "Dice of our mask against the release loop's >= 0.999"}
    return record


def interleaved_phases(specs: dict[str, dict], repeats_key: str, repeats: int, isolate: bool, label: str) -> dict[str, dict]:
    """Runs each variant's phase ``repeats`` times, alternating variants (A B A B ...), and merges.

    On a shared machine the load changes within minutes; alternating exposes every variant to
    the same conditions, so min and median compare like with like. Timings are pooled, the peak
    memory is the largest seen, and the last run's other fields are kept.
    """
    merged: dict[str, dict] = {}
    for repeat in range(repeats):
        for variant, spec in specs.items():
            print(f"  {label} {variant} ({repeat + 1}/{repeats}) ...", flush=True)
            result = run_phase({**spec, repeats_key: 1}, isolate)
            if variant not in merged:
                merged[variant] = result
                continue
            previous = merged[variant]
            for key in ("seconds_per_volume", "seconds_per_step"):
                if key in result:
                    result[key] = summarize_times(previous[key]["all"] + result[key]["all"])
            result["peak_memory_mb"] = max(previous["peak_memory_mb"] or 0, result["peak_memory_mb"] or 0)
            for key in ("first_step_loss", "matmul_gflops_in_phase"):
                if key in previous and key in result:
                    result[key] = previous[key] if key == "first_step_loss" else max(previous[key], result[key])
            merged[variant] = result
    for result in merged.values():
        if "seconds_per_step" in result:
            result["slices_per_second"] = result["batch_size"] / result["seconds_per_step"]["min"]
    return merged


def format_model_lines(record: dict) -> list[str]:
    """One model's summary row, then its notes: compile variants, failed checks, bf16 and default-heap variants."""
    lines = []
    inference, training = record["inference"], record["training"]
    plain, fast = inference["plain"], inference["fast"]
    train_plain, train_opt = training["plain"], training["channels_last"]
    checks = [v["check"] for v in list(inference.values()) + list(training.values()) if "check" in v]
    status = "PASS" if all(c["passed"] for c in checks) else "FAIL"
    lines.append(
        f"{record['model']:8} {record['parameters']:>10,} {record['gflop_per_slice']:>8.2f} | "
        f"{plain['seconds_per_volume']['min']:>8.2f} ({plain['seconds_per_volume']['median']:>6.2f}) "
        f"{fast['seconds_per_volume']['min']:>10.2f} {fast['speedup_over_plain']:>5.2f} {fast['achieved_gflops']:>8.1f} "
        f"{100 * fast['fraction_of_matmul']:>4.0f} {fast['slices_skipped']:>4} | "
        f"{train_plain['slices_per_second']:>16.2f} {train_opt['slices_per_second']:>8.2f} {train_opt['speedup_over_plain']:>5.2f} | "
        f"{plain['peak_memory_mb']:>7.0f}/{fast['peak_memory_mb']:<7.0f} {train_plain['peak_memory_mb']:>5.0f}/{train_opt['peak_memory_mb']:<5.0f} | "
        f"{status} max|dp|={fast['check']['max_abs_difference']:.1e}"
    )
    for variant, values in list(inference.items()) + list(training.items()):
        if "compile" in variant:
            value = values["seconds_per_volume"]["min"] if "seconds_per_volume" in values else values["slices_per_second"]
            lines.append(f"{'':8} {variant}: {value:.2f} ({'s/vol' if 'seconds_per_volume' in values else 'sl/s'}), "
                         f"x{values['speedup_over_plain']:.2f}, compile+warm-up "
                         f"{values.get('prepare_and_warmup_seconds', values.get('warmup_seconds', 0)):.0f} s")
    for group in ("inference", "training"):
        for variant, values in record[group].items():
            check = values.get("check")
            if check and not check["passed"]:
                if "first_step_loss_difference" in check:
                    detail = (f"first-step loss differs by {check['first_step_loss_difference']:.2e} "
                              f"(allowed {check['allowed_difference']:.2e})")
                else:
                    detail = (f"max abs difference {check['max_abs_difference']:.2e} (allowed {check['allowed_difference']:.2e}), "
                              f"{check['mask_voxels_different_on_skipped_slices']} mask voxels differ on skipped slices")
                lines.append(f"{'':8} FAIL {group} {variant}: {detail}")
    if BF16_VARIANTS["inference"] in inference:
        bf16_inference, bf16_training = inference[BF16_VARIANTS["inference"]], training[BF16_VARIANTS["training"]]
        lines.append(f"{'':8} optimised + bf16 autocast: {bf16_inference['seconds_per_volume']['min']:.2f} s/vol "
                     f"(x{bf16_inference['speedup_over_plain']:.2f}, {bf16_inference['achieved_gflops']:.0f} GFLOP/s, "
                     f"{100 * bf16_inference['fraction_of_matmul']:.0f}% of bf16 matmul, peak {bf16_inference['peak_memory_mb']:.0f} MB, "
                     f"max|dp|={bf16_inference['check']['max_abs_difference']:.1e}, "
                     f"{bf16_inference['check']['mask_voxels_different']} of {bf16_inference['check']['plain_mask_voxels']} "
                     f"mask voxels differ, Dice {bf16_inference['check']['mask_dice']:.3f}), "
                     f"training {bf16_training['slices_per_second']:.2f} sl/s (x{bf16_training['speedup_over_plain']:.2f}, "
                     f"peak {bf16_training['peak_memory_mb']:.0f} MB, first-step loss "
                     f"{100 * bf16_training['check']['first_step_loss_relative_difference']:.2f}% off)")
    if "plain_default_heap" in inference:
        heap_inference, heap_training = inference["plain_default_heap"], training["plain_default_heap"]
        lines.append(f"{'':8} plain with glibc's default heap: {heap_inference['seconds_per_volume']['min']:.2f} s/vol "
                     f"(optimised x{fast['speedup_over_plain_default_heap']:.2f}), "
                     f"{heap_training['slices_per_second']:.2f} training sl/s (optimised x{train_opt['speedup_over_plain_default_heap']:.2f})")
    if fast["skip_disabled"]:
        lines.append(f"{'':8} skipping disabled: {fast['skip_disabled']}")
    return lines


def format_table(results: dict) -> str:
    """The human-readable summary printed at the end."""
    lines = [
        f"machine: {results['machine']['cpu']} ({results['machine']['cpu_cores']} cores)"
        + (f", GPU {results['machine']['gpu']}" if "gpu" in results["machine"] else "")
        + f"; fp32 matmul {results['matmul_gflops']:.0f} GFLOP/s"
        + (f", bf16 {results['matmul_gflops_bf16']:.0f}" if results.get("matmul_gflops_bf16") else "")
        + f"; volume {results['shape']}, load average at start {results['machine']['load_average'][0]:.1f}"
        + ", at end " + f"{results['machine'].get('load_average_at_end', [float('nan')])[0]:.1f}"
        + "; times: best of the interleaved repeats (median in brackets); %mm against the best matmul rate seen",
        f"{'model':8} {'params':>10} {'GFLOP/sl':>8} | {'infer plain s/vol':>17} {'fast s/vol':>10} {'x':>5} {'GFLOP/s':>8} {'%mm':>4} {'skip':>4}"
        f" | {'train plain sl/s':>16} {'opt sl/s':>8} {'x':>5} | {'peak MB inf p/f':>15} {'train p/o':>11} | check",
    ]
    for record in results["models"]:
        lines += format_model_lines(record)
    for name, reason in results["skipped_models"].items():
        lines.append(f"{name:8} skipped (does not import): {reason}")
    for name, reason in results["failed_models"].items():
        lines.append(f"{name:8} FAILED: {reason.splitlines()[-1] if reason else ''}")
    if "end_to_end" in results:
        from spinseg.experiments.end_to_end import format_end_to_end

        lines += format_end_to_end(results["end_to_end"])
    for result in results["data_loading"]:
        lines.append(f"data loading ({result['n_workers']} workers, augmentation p={result['augmentation_probability']}): "
                     f"{result['slices_per_second']:.1f} slices/s, peak {result['peak_memory_mb']:.0f} MB (main process)")
    return "\n".join(lines)


def write_results(path: str, results: dict) -> None:
    """Writes the results as JSON (atomically, so a killed run never leaves half a file); no-op without a path."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(json.dumps(results, indent=1, default=str) + "\n")
    temporary.replace(target)

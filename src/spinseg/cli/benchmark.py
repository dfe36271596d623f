"""`python -m spinseg.benchmark` / `spinseg benchmark`: flags, then one call into `spinseg.experiments.benchmark`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from spinseg.acceleration.allocator import tune_glibc_malloc
from spinseg.errors import UserInputError, cli_entry
from spinseg.experiments.benchmark import (
    ATLAS_SHAPE,
    PHASE_RESULT_PREFIX,
    PHASES,
    QUICK_SHAPE,
    benchmark_model,
    format_table,
    importable_models,
    machine_description,
    matmul_gflops,
    run_phase,
    write_results,
    write_synthetic_volumes,
)

DESCRIPTION = "Speed and memory benchmark: ``python -m spinseg.benchmark`` (plain eager path vs the optimised one).\n\nFor every model of the registry that imports (or those given with ``--models``), on synthetic\nmemory-mapped volumes of the ATLAS shape, in one run on one machine:\n\n* parameters and forward GFLOP per slice (``torch.utils.flop_counter.FlopCounterMode``);\n* inference seconds per volume: :func:`spinseg.inference.predict_volume` (plain) against\n  :func:`spinseg.fast_inference.predict_volume_fast` (folded batch norm, channels-last, background\n  slices skipped), their achieved GFLOP/s and its fraction of a measured fp32 matmul rate;\n* training slices per second: a plain eager Adam step against a channels-last one (and\n  ``torch.compile`` with ``--compile``);\n* with ``--bf16`` (default: where the device computes bf16 in hardware, e.g. CPUs with\n  AVX512-BF16), the optimised inference and training paths once more under bf16 autocast\n  (``--amp`` of the commands), against the same fp32 plain path, checked with the bf16 tolerance\n  and their GFLOP/s set against a bf16 matmul;\n* peak memory per phase (CPU: peak RSS above the phase's start, each phase in a fresh process by\n  default; GPU: ``torch.cuda.max_memory_allocated``);\n* data loading slices per second from a ``SliceTrainingDataset`` (0 workers vs ``--n_workers``).\n\nThe optimised outputs are checked against the plain ones (PASS/FAIL with the max abs difference);\nany FAIL makes the exit code 1. Results go to a table on stdout and to ``--output_json``."

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spinseg.benchmark", description=DESCRIPTION.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--models", nargs="+", default=None, help="registry names (default: every model that imports)")
    parser.add_argument("--height", type=int, default=ATLAS_SHAPE[0])
    parser.add_argument("--width", type=int, default=ATLAS_SHAPE[1])
    parser.add_argument("--depth", type=int, default=ATLAS_SHAPE[2], help="slices per volume (per-slice figures are also reported)")
    parser.add_argument("--batch_size", type=int, default=8, help="training batch (full slices)")
    parser.add_argument("--inference_batch_size", type=int, default=16, help="slices per forward pass of the plain path (evaluate's default)")
    parser.add_argument("--fast_batch_size", type=int, default=8,
                        help="slices per forward pass of the optimised path (8: per-slice speed as at 16, about half the peak memory)")
    parser.add_argument("--repeats", type=int, default=2, help="timed whole-volume inference runs per path")
    parser.add_argument("--train_repeats", type=int, default=3, help="timed training steps per variant (after one warm-up step)")
    parser.add_argument("--volumes", type=int, default=4, help="synthetic volumes written (data loading uses all, inference the first)")
    parser.add_argument("--n_workers", type=int, default=2, help="DataLoader workers for the data loading comparison")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False, help="bf16 autocast in every phase, plain path included (meant for GPUs)")
    parser.add_argument("--bf16", choices=("auto", "yes", "no"), default="auto",
                        help="also time the optimised paths under bf16 autocast against the fp32 plain path "
                             "(auto: where the device computes bf16 in hardware; not with --amp)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile variants (slow to compile on CPU)")
    parser.add_argument("--no_skip_background", action="store_true", help="run every slice in the optimised path too")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=PATH", help="trained weights for a model")
    parser.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                        help="each phase in a fresh process (auto: yes on CPU unless --quick; GPUs reset their peak in-process)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", "--output", dest="output_json", default="", help="write all results here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (32x36x12, batch 2, 1 repeat) for tests")
    parser.add_argument("--phase", default="", help=argparse.SUPPRESS)  # internal: one phase as JSON
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns 1 when an optimised output disagrees with the plain one."""
    heap_tuned = tune_glibc_malloc()  # as every command of the package does, so both paths run as they would in use
    args = build_parser().parse_args(argv)
    if args.phase:
        spec = json.loads(args.phase)
        print(PHASE_RESULT_PREFIX + json.dumps({**PHASES[spec["kind"]](spec), "glibc_heap_tuned": heap_tuned}), flush=True)
        return 0

    from spinseg.models import available_models
    from spinseg.training.runtime import native_bf16, select_device

    device = select_device(args.device)
    if device.type == "cuda":
        # Both paths alike: let cuDNN pick its fastest convolution algorithm per input shape.
        torch.backends.cudnn.benchmark = True
    if args.quick:
        args.height, args.width, args.depth = QUICK_SHAPE
        args.batch_size, args.inference_batch_size, args.fast_batch_size, args.repeats, args.train_repeats, args.volumes = 2, 4, 4, 1, 1, 2
    args.checkpoints = {}
    for item in args.checkpoint:
        name, _, path = item.partition("=")
        if not path:
            raise UserInputError(f"--checkpoint {item!r}: expected MODEL=PATH")
        args.checkpoints[name] = path
    isolate = args.isolate == "yes" or (args.isolate == "auto" and device.type == "cpu" and not args.quick)
    names, skipped_models = importable_models(args.models or available_models())
    if not names:
        raise UserInputError("no model to benchmark: " + "; ".join(f"{k}: {v}" for k, v in skipped_models.items()))

    args.bf16_variants = not args.amp and (args.bf16 == "yes" or (args.bf16 == "auto" and native_bf16(device)))
    results: dict[str, Any] = {"machine": machine_description(device), "device": str(device), "amp": args.amp,
                               "bf16_variants": args.bf16_variants, "native_bf16": native_bf16(device),
                               "shape": [args.height, args.width, args.depth], "isolated_phases": isolate,
                               "arguments": {k: v for k, v in vars(args).items() if k not in ("phase", "checkpoints")}}
    print(f"measuring the fp32 matmul rate on {device} ...", flush=True)
    results["matmul_gflops"] = matmul_gflops(device)
    matmul_rates = {"fp32": results["matmul_gflops"]}
    if args.amp or args.bf16_variants:
        results["matmul_gflops_bf16"] = matmul_rates["bf16"] = matmul_gflops(device, torch.bfloat16)
    # Fractions compare like with like: bf16 phases against the bf16 matmul rate.

    with tempfile.TemporaryDirectory(prefix="spinseg-benchmark-") as directory:
        workdir = Path(directory)
        scan_paths, mask_paths = write_synthetic_volumes(workdir, args.volumes, (args.height, args.width, args.depth), args.seed)
        data = {"scan_paths": scan_paths, "mask_paths": mask_paths}
        results["models"], results["skipped_models"], results["failed_models"] = [], skipped_models, {}
        for name in names:
            print(f"benchmarking {name} ...", flush=True)
            try:
                results["models"].append(benchmark_model(name, args, device, data, matmul_rates, isolate, workdir))
                write_results(args.output_json, {**results, "partial": True})  # a run cut short keeps what it measured
            except Exception as error:  # one broken model must not hide the others' figures, but fails the run
                results["failed_models"][name] = f"{type(error).__name__}: {str(error)[-1500:]}"
                print(f"  {name} FAILED: {results['failed_models'][name]}", flush=True)
        results["data_loading"] = []
        n_samples = 16 if args.quick else 96
        for n_workers in sorted({0, args.n_workers}):
            spec = {"kind": "data", "device": str(device), "scan_paths": scan_paths, "mask_paths": mask_paths, "seed": args.seed,
                    "batch_size": args.batch_size, "n_workers": n_workers, "n_samples": n_samples, "augmentation_probability": 1.0}
            print(f"data loading with {n_workers} workers ...", flush=True)
            results["data_loading"].append(run_phase(spec, isolate))
    results["machine"]["load_average_at_end"] = list(os.getloadavg())

    checks = [v["check"] for record in results["models"] for group in ("inference", "training")
              for v in record[group].values() if "check" in v]
    results["passed"] = bool(results["models"]) and not results["failed_models"] and all(check["passed"] for check in checks)
    print(format_table(results) if results["models"] else "no model finished", flush=True)
    print("PASS: optimised outputs agree with the plain path" if results["passed"] else "FAIL: see the check columns / JSON", flush=True)
    if args.output_json:
        write_results(args.output_json, {**results, "partial": False})
        print(f"wrote {args.output_json}", flush=True)
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

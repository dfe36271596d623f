"""`python -m spinseg.benchmark` / `spinseg benchmark`: flags, then one call into `spinseg.experiments.benchmark`."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from spinseg.acceleration.allocator import tune_glibc_malloc
from spinseg.constants import ATLAS_SHAPE
from spinseg.errors import UserInputError, cli_entry
from spinseg.experiments import benchmark as benchmark_module
from spinseg.experiments.benchmark import (
    PHASE_RESULT_PREFIX,
    PHASES,
    QUICK_SHAPE,
    format_table,
    importable_models,
    run_benchmark,
    write_results,
)

DESCRIPTION = benchmark_module.__doc__  # the command's description is its module's docstring

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
    parser.add_argument("--allow_tf32", action="store_true",
                        help="let fp32 phases use TF32 on Ampere+ GPUs (default off: the fp32 checks claim fp32 exactness; "
                             "recorded in the JSON as tf32)")
    parser.add_argument("--memory_estimate", action="store_true",
                        help="print each model recipe's GPU memory (meta-device count of saved activations) and exit")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile variants (slow to compile on CPU)")
    parser.add_argument("--no_skip_background", action="store_true", help="run every slice in the optimised path too")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=PATH", help="trained weights for a model")
    parser.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                        help="each phase in a fresh process (auto: yes on CPU unless --quick; GPUs reset their peak in-process)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json", "--output", dest="output_json", default="", help="write all results here")
    parser.add_argument("--end_to_end", choices=("yes", "no", "only"), default="yes",
                        help="also time predict end to end against the release's slice loop, each a fresh process "
                             "(spinseg.experiments.end_to_end); only: nothing else (default: yes)")
    parser.add_argument("--end_to_end_repeats", type=int, default=2, help="interleaved runs of each end-to-end program (default: 2)")
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
        from spinseg.runtime.devices import configure_cuda_math

        configure_cuda_math(torch.device(spec.get("device", "cpu")), allow_tf32=spec.get("allow_tf32", False))
        print(PHASE_RESULT_PREFIX + json.dumps({**PHASES[spec["kind"]](spec), "glibc_heap_tuned": heap_tuned}), flush=True)
        return 0

    from spinseg.models import available_models
    from spinseg.runtime.devices import configure_cuda_math
    from spinseg.runtime.distributed import native_bf16, select_device

    if args.memory_estimate:
        from spinseg.experiments.memory import format_memory_table, recipe_memory_table

        print(format_memory_table(recipe_memory_table(args.models)), flush=True)
        return 0
    device = select_device(args.device)
    # Both paths alike: cuDNN's fastest algorithm per shape; TF32 only with --allow_tf32.
    tf32 = configure_cuda_math(device, allow_tf32=args.allow_tf32)
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
    args.tf32 = tf32  # recorded in the results
    results = run_benchmark(args, device, names, skipped_models, isolate)
    print(format_table(results) if results["models"] or "end_to_end" in results else "no model finished", flush=True)
    print("PASS: optimised outputs agree with the plain path" if results["passed"] else "FAIL: see the check columns / JSON", flush=True)
    if args.output_json:
        write_results(args.output_json, {**results, "partial": False})
        print(f"wrote {args.output_json}", flush=True)
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

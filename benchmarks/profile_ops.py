"""Operator profile of one Predictor forward (released config, random weights). Not a test.

    python benchmarks/profile_ops.py --grid 64 --contexts 2 --precision bfloat16 [--baseline]

Prints the top operators by self CPU time (torch.profiler, record_shapes) and, with
``--shapes``, the top (operator, input shapes) rows, e.g. to see which conv runs a slow kernel.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument("--contexts", type=int, default=2)
    parser.add_argument("--mini-context", default="1")
    parser.add_argument("--precision", default="bfloat16")
    parser.add_argument("--baseline", action="store_true", help="the released code path")
    parser.add_argument("--shapes", action="store_true")
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--no-profile", action="store_true", help="time two runs only")
    args = parser.parse_args(argv)

    from inference import _inputs, released_forward
    from neuroverse_bids.model import Neuroverse3D
    from neuroverse_bids.model.predictor import Predictor

    torch.manual_seed(0)
    model = Neuroverse3D()
    target, images, labels = _inputs(args.grid, args.contexts)
    if args.baseline:
        model.eval()
        inputs = (target[None, None], images[None, :, None], labels[None, :, None])
        m = args.contexts if args.mini_context == "auto" else int(args.mini_context)

        def run():
            with torch.inference_mode():
                return released_forward(model, *inputs, m)
    else:
        m = args.mini_context if args.mini_context == "auto" else int(args.mini_context)
        predictor = Predictor(model, device="cpu", precision=args.precision, mini_context_size=m)

        def run():
            return predictor.predict(target, images, labels)

    run()  # warm-up: kernels, planner trace
    start = time.perf_counter()
    run()
    print(f"forward: {time.perf_counter() - start:.2f} s", flush=True)
    if args.no_profile:
        return 0
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        run()
    table = prof.key_averages(group_by_input_shape=args.shapes)
    print(table.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40,
                      max_shapes_column_width=90))
    return 0


if __name__ == "__main__":
    sys.exit(main())

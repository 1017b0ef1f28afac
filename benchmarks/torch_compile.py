"""Does ``torch.compile`` pay for inference here? One context pair of the released architecture.

Not a test. Times the context U-Net (the part that runs once per context pair) three ways, in one
process: the eager fast path (oneDNN fused kernels, in-place sums; what the Predictor runs), the
eager plain path (torch's ops, the training path without gradients), and the plain path under
``torch.compile`` (inductor with weight freezing, which fuses convolutions and pointwise ops
itself). Writes ``<out>/torch_compile_<tag>.{json,md}``.

    python benchmarks/torch_compile.py --grid 128 --repeat 3
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

import neuroverse_bids  # noqa: F401  (before torch allocates: transparent huge pages)


def _timed(function, repeat: int):
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
        del result
    return seconds


def main(argv=None) -> int:
    from _report import RESULTS, machine, write_report

    from neuroverse_bids.model import network
    from neuroverse_bids.model.network import Neuroverse3D

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=128)
    parser.add_argument("--precision", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tag", default="cpu_128")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    import torch._inductor.config as inductor

    inductor.freezing = True  # weights as constants: lets inductor pre-pack them for oneDNN
    dtype, layout, side = getattr(torch, args.precision), torch.channels_last_3d, args.grid
    torch.manual_seed(0)
    net = Neuroverse3D().eval().to(dtype, memory_format=layout)
    target = torch.rand(1, 1, side, side, side).to(dtype).contiguous(memory_format=layout)
    pair = torch.rand(1, side, side, side, 2).to(dtype).permute(0, 4, 1, 2, 3)[None]
    rows = {}
    with torch.no_grad():
        _, skips = net.encode_target(target)
        terms = net.context_unet.target_terms(skips)
        run = lambda: net.context_unet(pair, skips, terms)  # noqa: E731
        run()  # oneDNN primitives created
        rows["eager, fused (the Predictor's path)"] = _timed(run, args.repeat)
        fusable, upsample = network.fusable, network.upsample
        network.fusable = lambda *a, **k: False  # plain torch ops throughout
        network.upsample = lambda x: F.interpolate(x, scale_factor=2, mode="trilinear",
                                                   align_corners=False)
        try:
            run()
            rows["eager, plain ops"] = _timed(run, args.repeat)
            compiled = torch.compile(net.context_unet)
            start = time.perf_counter()
            compiled(pair, skips, terms)
            compile_s = time.perf_counter() - start
            rows["torch.compile (inductor, freezing) of the plain ops"] = _timed(
                lambda: compiled(pair, skips, terms), args.repeat)
        finally:
            network.fusable, network.upsample = fusable, upsample
    lines = ["| path | seconds per context pair (each run) |", "| --- | --- |"]
    lines += [f"| {name} | {', '.join(f'{s:.2f}' for s in seconds)} |"
              for name, seconds in rows.items()]
    text = (f"# torch.compile for inference, `{args.tag}`\n\nMachine: {machine()}\n\n"
            f"Command: `python benchmarks/torch_compile.py {' '.join(sys.argv[1:])}`\n\n"
            f"Released architecture, random weights, {args.precision}, {side}^3, one context "
            f"pair through the context U-Net. Compilation and first call: {compile_s:.1f} s.\n\n"
            + "\n".join(lines) + "\n")
    write_report(args.out, f"torch_compile_{args.tag}",
                 {"machine": machine(), "argv": sys.argv[1:], "compile_s": compile_s,
                  "seconds": rows}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

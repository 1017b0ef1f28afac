"""Inference benchmark: released architecture (random weights), one target, L contexts.

Not a test. Every case runs in a fresh subprocess, so its peak RSS (or peak CUDA memory) is
its own. Modes:

* ``baseline`` - the released code's path: float32, default memory layout, concatenations
  and the target broadcast over pairs, per-chunk means (reproduced below with the same
  weights, module by module);
* ``fast`` - :class:`neuroverse_bids.model.predictor.Predictor` with a precision, a
  mini-context size m (1, 4, ... or ``auto``), a CPU heap policy (``--heap``) and the contexts
  given as tensors or read pair by pair (``--inputs stacked|streamed``).

Agreement is measured against the ``fast`` float32 m=1 case of the same L (else the baseline):
max abs difference and relative L2 error. Results go to ``<out>/inference_<tag>.json`` and
``.md`` with a description of the machine.

    python benchmarks/inference.py                       # full run (128^3, L 1..16): long
    python benchmarks/inference.py --grid 64 --contexts 1 2 --mini-context 1 auto
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _report import RESULTS, machine, write_report  # beside this script


# ------------------------------------------------------------------ the released code path
def _pairwise(module, x):
    return module(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def _released_context(unet, context_in, context_out, target_skips):
    """The released context U-Net: cat fusions, target broadcast over the pairs."""
    c = unet.context_embedding(torch.cat([context_in, context_out], dim=2))
    skips = []
    for stage, down, t_skip in zip(unet.enc_blocks, unet.downsample_blocks, target_skips):
        c = stage.context_conv(c)
        t_b = t_skip.unsqueeze(1).expand(-1, c.shape[1], *t_skip.shape[1:])
        c = F.gelu(c + _pairwise(stage.combine_conv_context.module, torch.cat([c, t_b], dim=2)))
        skips.append(c)
        c = down.context_linear_layer(c)
    c = unet.enc_blocks[-1].context_conv(c)
    features = [c]
    for k, (up, stage) in enumerate(zip(unet.upsample_blocks, unet.dec_blocks)):
        skip = skips[-1 - k]
        low = F.interpolate(c.flatten(0, 1), scale_factor=2, mode="trilinear", align_corners=False)
        merged = torch.cat([low.unflatten(0, skip.shape[:2]), skip], dim=2)
        c = stage.context_conv(_pairwise(up.context_conv_layer.module, merged))
        features.append(c)
    return features


def released_forward(model, target_in, context_in, context_out, mini_context_size):
    """[1,1,D,H,W], [1,L,1,D,H,W] x2 -> [1,1,D,H,W], float32 default layout, per-chunk means."""
    enc, dec = model.target_encoder, model.target_decoder
    t = enc.target_embedding(target_in)
    skips = []
    for block, down in zip(enc.enc_blocks, enc.downsample_blocks):
        t = block.target_conv(t)
        skips.append(t)
        t = down.target_linear_layer(t)
    pairs, total = context_in.shape[1], None
    for start in range(0, pairs, mini_context_size):
        stop = min(start + mini_context_size, pairs)
        feats = _released_context(model.context_unet, context_in[:, start:stop],
                                  context_out[:, start:stop], skips)
        part = [f.mean(dim=1) * (stop - start) for f in feats]
        total = part if total is None else [a + b for a, b in zip(total, part)]
    means = [s / pairs for s in total]

    def fuse(fusion, t, mean):
        t = fusion.target_conv(t)
        return F.gelu(t + fusion.combine_conv_target.module(torch.cat([mean, t], dim=1)))

    t = fuse(dec.enc_blocks[0], t, means[0])
    for k, (up, fusion) in enumerate(zip(dec.upsample_blocks, dec.dec_blocks)):
        up_t = F.interpolate(t, scale_factor=2, mode="trilinear", align_corners=False)
        t = up.target_conv_layer(torch.cat([up_t, skips[-1 - k]], dim=1))
        t = fuse(fusion, t, means[k + 1])
    return dec.output_block.block(t)


# ---------------------------------------------------------------------------- one case
def _volume(grid: int, seed: int, label: bool = False) -> torch.Tensor:
    volume = torch.rand((grid,) * 3, generator=torch.Generator().manual_seed(seed))
    return (volume > 0.5).float() if label else volume


class _GeneratedVolumes:
    """Context volumes made when read (as a loader reading files would): the streamed input."""

    def __init__(self, grid: int, seeds, label: bool):
        self.grid, self.seeds, self.label = grid, list(seeds), label

    def __len__(self):
        return len(self.seeds)

    def __getitem__(self, index):
        return _volume(self.grid, self.seeds[index], self.label)


def _inputs(grid, pairs, streamed=False):
    """Target, L images, L binary labels (each volume from its own seed: stacked and streamed
    inputs hold the same values). Streamed: sequences read pair by pair by the predictor."""
    images = _GeneratedVolumes(grid, range(1, pairs + 1), False)
    labels = _GeneratedVolumes(grid, range(1001, 1001 + pairs), True)
    if not streamed:
        images, labels = torch.stack(list(images)), torch.stack(list(labels))
    return _volume(grid, 0), images, labels


def _peak_rss_bytes():
    from neuroverse_bids.model.memory import peak_rss_bytes

    return peak_rss_bytes() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _start_measuring():
    """(RSS in GB, minor page faults so far): weights and inputs in place, before inference
    (peak - this RSS = working set). Also resets the RSS high-water mark (Linux ``clear_refs``
    5), so the peak is that of the inference alone, not of the set-up (model construction,
    auto precision's agreement check)."""
    from neuroverse_bids.model.memory import process_rss_bytes, trim_heap

    gc.collect()
    trim_heap()  # give freed heap memory back first, so that it is not counted as "before"
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    rss_gb = round(process_rss_bytes() / 2 ** 30, 3)
    return rss_gb, resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def run_case(case: dict) -> dict:
    """Run one case in this process; returns timings and memory, saves the output."""
    from neuroverse_bids.model import Neuroverse3D
    from neuroverse_bids.model.predictor import Predictor, resolve_device

    torch.manual_seed(0)
    model = Neuroverse3D()
    target, images, labels = _inputs(case["grid"], case["contexts"],
                                     case.get("inputs") == "streamed")
    device = resolve_device(case["device"])
    cuda = device.type == "cuda"
    result = {}
    if case["mode"] == "baseline":
        model = model.to(device).eval()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        args = (target[None, None].to(device), images[None, :, None].to(device),
                labels[None, :, None].to(device))
        result["rss_before_gb"], faults = _start_measuring()
        with torch.inference_mode():
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            out = released_forward(model, *args, case["mini_context"])
            if cuda:
                torch.cuda.synchronize(device)
            result["seconds"] = time.perf_counter() - start
        out = out[0, 0].float().cpu()
        result.update(precision="float32", mini_context_used=case["mini_context"])
    else:
        predictor = Predictor(model, device=case["device"], precision=case["precision"],
                              mini_context_size=case["mini_context"], memory_gb=case.get("mem_gb"),
                              cpu_heap=case.get("heap", "fresh"))
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        result["rss_before_gb"], faults = _start_measuring()
        start = time.perf_counter()
        out = predictor.predict(target, images, labels)
        result["seconds"] = time.perf_counter() - start
        result.update(precision=predictor.precision, precision_requested=case["precision"],
                      mini_context_used=predictor.last_mini_context_size,
                      timings={k: round(v, 3) for k, v in predictor.timings.items()},
                      estimated_peak_gb=round(predictor.last_required_bytes / 2 ** 30, 3),
                      budget_gb=round(predictor.budget_bytes / 2 ** 30, 3))
    result["peak_rss_gb"] = round(_peak_rss_bytes() / 2 ** 30, 3)
    result["page_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    if cuda:
        result["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)
    np.save(case["output"], out.numpy())
    return result


# --------------------------------------------------------------------------- the driver
def _cases(args, tmp):
    cases = []
    baseline_contexts = args.baseline_contexts or args.contexts
    for pairs in args.contexts:
        base = dict(grid=args.grid, contexts=pairs, device=args.device, mem_gb=args.mem)
        if "baseline" in args.modes and pairs in baseline_contexts:
            cases.append(dict(base, mode="baseline", precision="float32",
                              mini_context=min(args.baseline_m, pairs)))
        if "fast" in args.modes:
            for precision in args.precisions:
                sizes = (args.mini_context_float32 if precision == "float32"
                         and args.mini_context_float32 else args.mini_context)
                for m in sizes:
                    m = 1 if pairs == 1 else m if m == "auto" else min(int(m), pairs)
                    for heap in args.heap:
                        for inputs in args.inputs:
                            case = dict(base, mode="fast", precision=precision, mini_context=m,
                                        heap=heap, inputs=inputs)
                            if case not in cases:
                                cases.append(case)
    for index, case in enumerate(cases):
        case["output"] = str(Path(tmp) / f"case{index}.npy")
    return cases


def _agreement(cases):
    for case in cases:
        refs = [c for c in cases if c["contexts"] == case["contexts"] and "seconds" in c]
        fast32 = [c for c in refs if c["mode"] == "fast" and c["precision"] == "float32"]
        ref = next((c for c in fast32 if c["mini_context_used"] == 1), None) or next(
            iter(fast32), None) or next((c for c in refs if c["mode"] == "baseline"), None)
        if ref is None or "seconds" not in case:
            continue
        a, b = np.load(case["output"]), np.load(ref["output"])
        case["max_abs_diff"] = float(np.abs(a - b).max())
        case["rel_l2"] = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
        case["reference"] = f"{ref['mode']} {ref['precision']} m={ref['mini_context_used']}"
        base = next((c for c in refs if c["mode"] == "baseline"), None)
        if base:
            case["speedup_vs_baseline"] = round(base["seconds"] / case["seconds"], 2)


def _time_cell(case) -> str:
    times = case.get("seconds_all", [])
    spread = f" ({min(times):.1f}-{max(times):.1f})" if len(times) > 1 else ""
    return f"{case['seconds']:.2f}{spread}"


def table(cases) -> str:
    head = ("| L | mode | precision | m | time (s), median (range) | speed-up | peak RSS (GB) | "
            "peak - before (GB) | est. (GB) | page faults | max abs diff | rel L2 |")
    lines = [head, "|" + " --- |" * 12]
    for c in cases:
        if "seconds" not in c:
            lines.append(f"| {c['contexts']} | {c['mode']} | {c['precision']} | "
                         f"{c['mini_context']} | failed: {c.get('error', '?')[:60]} |||||||")
            continue
        mem = c.get("peak_cuda_gb", c["peak_rss_gb"])
        working = "" if "peak_cuda_gb" in c or "rss_before_gb" not in c else round(
            c["peak_rss_gb"] - c["rss_before_gb"], 3)
        precision = c["precision"]
        if c.get("precision_requested", precision) != precision:
            precision = f"{c['precision_requested']} ({precision})"
        mode = c["mode"] if c["mode"] == "baseline" else f"fast ({c['heap']}, {c['inputs']})"
        lines.append(
            f"| {c['contexts']} | {mode} | {precision} | {c['mini_context_used']} | "
            f"{_time_cell(c)} | {c.get('speedup_vs_baseline', '')} | {mem} | "
            f"{working} | {c.get('estimated_peak_gb', '')} | {c.get('page_faults', '')} | "
            f"{c.get('max_abs_diff', float('nan')):.2e} | "
            f"{c.get('rel_l2', float('nan')):.2e} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=128)
    parser.add_argument("--contexts", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--mini-context", nargs="+", default=["1", "4", "auto"])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--modes", nargs="+", default=["baseline", "fast"],
                        choices=("baseline", "fast"))
    parser.add_argument("--baseline-m", type=int, default=1)
    parser.add_argument("--baseline-contexts", type=int, nargs="+", default=None,
                        help="run the baseline only for these L (default: all of --contexts)")
    parser.add_argument("--mini-context-float32", nargs="+", default=None,
                        help="m values for float32 (default: --mini-context)")
    parser.add_argument("--heap", nargs="+", default=["fresh"], choices=("fresh", "reuse"),
                        help="CPU heap policies of the fast path (Predictor cpu_heap)")
    parser.add_argument("--inputs", nargs="+", default=["stacked"],
                        choices=("stacked", "streamed"),
                        help="fast path's contexts: tensors in memory, or read pair by pair")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mem", type=float, default=None, help="budget for auto m, GB")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over all cases (fresh processes); the median time is "
                        "reported")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        cases = _cases(args, tmp)
        runs = {id(case): [] for case in cases}
        # rounds over all cases, not all repeats of one case at once: the machine's speed
        # drifts over minutes, and each case then sees every phase of it
        for round_ in range(args.repeat):
            for case in cases:
                if "error" in case:
                    continue
                case.setdefault("load_before", [round(x, 2) for x in os.getloadavg()])
                # the app's process setting (neuroverse_bids/__init__.py) for the fast path;
                # the released code ran with torch's default (no huge pages)
                env = dict(os.environ,
                           THP_MEM_ALLOC_ENABLE="0" if case["mode"] == "baseline" else "1")
                proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)],
                                      capture_output=True, text=True, env=env)
                if proc.returncode:
                    case["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr else "?"
                    continue
                runs[id(case)].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(json.dumps({"round": round_, "L": case["contexts"], "mode": case["mode"],
                                  "heap": case.get("heap"), "inputs": case.get("inputs"),
                                  **runs[id(case)][-1]}), flush=True)
        for case in cases:
            done = sorted(runs[id(case)], key=lambda run: run["seconds"])
            if done and "error" not in case:  # the run with the median time; every time kept
                case.update(done[(len(done) - 1) // 2], seconds_all=[r["seconds"] for r in done],
                            peak_rss_gb_max=max(r["peak_rss_gb"] for r in done))
        _agreement(cases)
        for case in cases:
            case.pop("output")
    tag = args.tag or f"{torch.device(args.device).type if args.device != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')}_{args.grid}"
    report = {"machine": machine(), "argv": sys.argv[1:], "cases": cases}
    loads = [c["load_before"][0] for c in cases]
    text = (f"# Inference benchmark `{tag}`\n\nMachine: {json.dumps(report['machine'])}\n\n"
            f"Command: `python benchmarks/inference.py {' '.join(sys.argv[1:])}`\n\n"
            f"1-minute load average before each case: {min(loads)}-{max(loads)} (per case in "
            f"the JSON; the machine has {os.cpu_count()} cores and is shared)\n\n{table(cases)}\n")
    write_report(args.out, f"inference_{tag}", report, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

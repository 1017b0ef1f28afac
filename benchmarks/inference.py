"""Inference benchmark: the engine against the reference network, side by side in one run.

Not a test. Released architecture with random weights (seed 0), one target, L contexts, on a
``--size``^3 grid. Every case runs in a fresh process, so that its time and peak RSS are its
own:

* ``reference`` - the released code's path: the reference network's plain float32 forward
  (:class:`neuroverse_bids.model.Neuroverse3D`, one pair per chunk), default memory layout,
  torch's default allocator settings (no huge pages, as the released code ran);
* ``engine`` - :class:`neuroverse_bids.model.predictor.Predictor` in-process with
  ``--precision`` (default ``auto``) and ``--mini-context`` (default ``auto``); the timed part
  is ``predict`` (the precision self-check at construction is reported as ``setup_s``);
* ``process-cold`` / ``process-warm`` - the whole ``neuroverse3d-predict`` process on files
  (the checkpoint saved as safetensors, target and contexts as NIfTI), timed from outside;
  ``cold``: an empty cache folder (the bfloat16 self-check runs), ``warm``: the cache filled
  by the cold run.

* ``matmul`` - this machine's ceiling: a dense square matmul in the engine's precision,
  TFLOP/s; the forward's own rate (its FLOPs counted by torch's ``FlopCounterMode`` on the
  meta device, divided by the engine's time) is reported as a fraction of it.

Targets (issue 13): engine >= 5x faster than reference with peak RSS <= half; the whole
process >= 4x faster than reference. The CPU's named features and its bfloat16 level (the
app's probe) head the report. Results: ``<out>/inference_<tag>.json`` and ``.md``.

    python benchmarks/inference.py --size 64                 # quick
    python benchmarks/inference.py                           # 128^3, L=8: several minutes
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

from _report import RESULTS, machine, write_report  # beside this script

CASES = ("reference", "engine", "process-cold", "process-warm", "matmul")
MATMUL_SIDE = 4096


def _volume(size: int, seed: int, label: bool = False) -> torch.Tensor:
    volume = torch.rand((size,) * 3, generator=torch.Generator().manual_seed(seed))
    return (volume > 0.5).float() if label else volume


def _inputs(size: int, pairs: int):
    """Target ``[D,H,W]``, L images and L binary labels ``[L,D,H,W]`` (a seed per volume)."""
    images = torch.stack([_volume(size, seed) for seed in range(1, pairs + 1)])
    labels = torch.stack([_volume(size, seed, True) for seed in range(1001, 1001 + pairs)])
    return _volume(size, 0), images, labels


def _released_model():
    from neuroverse_bids.model import Neuroverse3D

    torch.manual_seed(0)
    return Neuroverse3D()


def _start_measuring() -> float:
    """RSS in GB with weights and inputs in place, before inference; resets the RSS high-water
    mark (Linux ``clear_refs`` 5), so that the peak is the inference's, not the set-up's."""
    from neuroverse_bids.model.engine.memory import process_rss_bytes, trim_heap

    gc.collect()
    trim_heap()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return round(process_rss_bytes() / 2 ** 30, 3)


def _peak_rss_gb() -> float:
    from neuroverse_bids.model.engine.memory import peak_rss_bytes

    peak = peak_rss_bytes() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return round(peak / 2 ** 30, 3)


def forward_flops(size: int, pairs: int) -> float:
    """FLOPs of one released-architecture forward at ``size``^3 with ``pairs`` contexts,
    counted on the meta device (no compute; 9.71e12 at 128^3, L = 8)."""
    from torch.utils.flop_counter import FlopCounterMode

    from neuroverse_bids.model import Neuroverse3D

    with torch.device("meta"):
        model = Neuroverse3D().eval()
        target = torch.zeros((1, 1) + (size,) * 3)
        contexts = torch.zeros((1, pairs, 1) + (size,) * 3)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(target, contexts, contexts, mini_context_size=1)
    return float(counter.get_total_flops())


def run_matmul(case: dict) -> dict:
    """Dense ``MATMUL_SIDE``^2 matmul in the engine's precision for about 3 s: TFLOP/s."""
    from neuroverse_bids.model.engine.precision import resolve_precision

    dtype = resolve_precision(case["precision"], torch.device("cpu"))
    a = torch.randn(MATMUL_SIDE, MATMUL_SIDE).to(dtype)
    b = torch.randn(MATMUL_SIDE, MATMUL_SIDE).to(dtype)
    torch.mm(a, b)  # warm-up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < 3.0:
        torch.mm(a, b)
        runs += 1
    seconds = time.perf_counter() - start
    tflops = 2 * MATMUL_SIDE ** 3 * runs / seconds / 1e12
    return {"seconds": seconds, "tflops": round(tflops, 3), "peak_rss_gb": _peak_rss_gb(),
            "precision": str(dtype).replace("torch.", "")}


def run_in_process(case: dict) -> dict:
    """``reference`` or ``engine`` in this process: times, memory; saves the output."""
    from neuroverse_bids.model.predictor import Predictor

    target, images, labels = _inputs(case["size"], case["contexts"])
    model = _released_model().eval()
    result = {}
    if case["name"] == "reference":
        args = (target[None, None], images[None, :, None], labels[None, :, None])
        result["rss_before_gb"] = _start_measuring()
        with torch.inference_mode():
            start = time.perf_counter()
            out = model(*args, mini_context_size=1)[0, 0]
            result["seconds"] = time.perf_counter() - start
        result.update(precision="float32", mini_context=1)
    else:
        start = time.perf_counter()
        predictor = Predictor(model, device="cpu", precision=case["precision"],
                              mini_context_size=case["mini_context"])
        result["setup_s"] = round(time.perf_counter() - start, 3)
        result["rss_before_gb"] = _start_measuring()
        start = time.perf_counter()
        out = predictor.predict(target, images, labels)
        result["seconds"] = time.perf_counter() - start
        result.update(precision=predictor.precision, mini_context=predictor.last_mini_context_size,
                      timings={k: round(v, 3) for k, v in predictor.timings.items()},
                      estimated_peak_gb=round(predictor.last_required_bytes / 2 ** 30, 3))
    result["peak_rss_gb"] = _peak_rss_gb()
    np.save(case["output"], out.float().numpy())
    return result


def run_process(case: dict) -> dict:
    """The whole ``neuroverse3d-predict`` process on the files of ``case``; peak RSS of it."""
    files = case["files"]
    script = Path(sys.executable).with_name("neuroverse3d-predict")
    command = [str(script)] if script.exists() else [sys.executable, "-m",
                                                     "neuroverse_bids.cli.predict"]
    command += ["--model", files["model"], "--target", files["target"],
                "--context-images", *files["images"], "--context-labels", *files["labels"],
                "--output", case["output"], "--task", "seg", "--device", "cpu",
                "--precision", case["precision"],
                "--mini-context-size", str(case["mini_context"])]
    env = dict(os.environ, NEUROVERSE3D_CACHE_DIR=files["cache"])
    if case["name"] == "process-cold":  # cold whatever ran before it
        for entry in Path(files["cache"]).rglob("*.json"):
            entry.unlink()
    cached = any(Path(files["cache"]).rglob("*.json"))
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip()[-500:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"seconds": seconds, "peak_rss_gb": round(peak / 2 ** 30, 3),
            "self_check_cached": cached, "precision": case["precision"]}


def _write_files(folder: Path, size: int, pairs: int) -> dict:
    """The checkpoint (safetensors) and the volumes (NIfTI) that ``neuroverse3d-predict`` reads."""
    import nibabel as nb

    from neuroverse_bids.model import save_checkpoint

    target, images, labels = _inputs(size, pairs)
    model = save_checkpoint(_released_model(), folder / "model.safetensors")

    def nifti(volume, name):
        path = folder / f"{name}.nii"
        nb.save(nb.Nifti1Image(volume.numpy(), np.eye(4)), str(path))
        return str(path)
    (folder / "cache").mkdir()
    return {"model": str(model), "target": nifti(target, "target"), "cache": str(folder / "cache"),
            "images": [nifti(v, f"image{i}") for i, v in enumerate(images)],
            "labels": [nifti(v, f"label{i}") for i, v in enumerate(labels)]}


# --------------------------------------------------------------------------- the driver
def _compare(cases: list) -> None:
    reference = next((c for c in cases if c["name"] == "reference" and "seconds" in c), None)
    engine = next((c for c in cases if c["name"] == "engine" and "seconds" in c), None)
    matmul = next((c for c in cases if c["name"] == "matmul" and "tflops" in c), None)
    if engine is not None:
        engine["tflops"] = round(engine["flops"] / engine["seconds"] / 1e12, 3)
        if matmul is not None and matmul["precision"] == engine["precision"]:
            engine["of_matmul"] = round(engine["tflops"] / matmul["tflops"], 2)
    if reference is None:
        return
    ref = np.load(reference["output"])
    for case in cases:
        if "seconds" not in case or case is reference or case["name"] == "matmul":
            continue
        case["speedup"] = round(reference["seconds"] / case["seconds"], 2)
        case["rss_ratio"] = round(case["peak_rss_gb"] / reference["peak_rss_gb"], 3)
        if case["name"] == "engine":
            out = np.load(case["output"])
            case["max_abs_diff"] = float(np.abs(out - ref).max())
            case["rel_l2"] = float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def table(cases: list) -> str:
    lines = ["| case | precision | m | time (s) | speed-up | peak RSS (GB) | RSS / reference | "
             "self-check cached | max abs diff | rel L2 | notes |", "|" + " --- |" * 11]
    for c in cases:
        if "seconds" not in c:
            lines.append(f"| {c['name']} | failed: {c.get('error', '?')[:80]} |||||||||")
            continue
        notes = ", ".join(f"{k} {v}" for k, v in (c.get("timings") or {}).items())
        if "setup_s" in c:
            notes = f"setup_s {c['setup_s']}; {notes}"
        if "tflops" in c:
            notes = "; ".join(filter(None, [f"{c['tflops']} TFLOP/s" + (
                f" ({c['of_matmul']} of matmul)" if "of_matmul" in c else ""), notes]))
        diff = f"{c['max_abs_diff']:.2e} | {c['rel_l2']:.2e}" if "rel_l2" in c else " | "
        lines.append(f"| {c['name']} | {c['precision']} | {c.get('mini_context', '')} | "
                     f"{c['seconds']:.2f} | {c.get('speedup', '')} | {c['peak_rss_gb']} | "
                     f"{c.get('rss_ratio', '')} | {c.get('self_check_cached', '')} | {diff} | "
                     f"{notes} |")
    return "\n".join(lines)


def verdict(cases: list) -> str:
    by_name = {c["name"]: c for c in cases if "speedup" in c}
    checks = []
    if "engine" in by_name:
        engine = by_name["engine"]
        checks.append(f"engine >= 5x faster than reference: {engine['speedup']}x "
                      f"({'met' if engine['speedup'] >= 5 else 'MISSED'})")
        checks.append(f"engine peak RSS <= half of reference: {engine['rss_ratio']} "
                      f"({'met' if engine['rss_ratio'] <= 0.5 else 'MISSED'})")
    engine = next((c for c in cases if c["name"] == "engine" and "tflops" in c), None)
    if engine is not None:
        checks.append(f"engine forward: {engine['flops'] / 1e12:.2f} TFLOP in {engine['seconds']:.1f}"
                      f" s = {engine['tflops']} TFLOP/s, {engine.get('of_matmul', '?')} of a "
                      f"dense {engine['precision']} matmul's rate on this machine")
    for name in ("process-cold", "process-warm"):
        if name in by_name:
            checks.append(f"{name} >= 4x faster than reference: {by_name[name]['speedup']}x "
                          f"({'met' if by_name[name]['speedup'] >= 4 else 'MISSED'})")
    return "\n".join(f"- {line}" for line in checks)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="grid side (voxels)")
    parser.add_argument("--contexts", type=int, default=8, help="L")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--precision", default="auto", help="engine and process precision")
    parser.add_argument("--mini-context", default="auto", help="engine and process m")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case
    args = parser.parse_args(argv)
    if args.case:
        case = json.loads(args.case)
        run = (run_process if case["name"].startswith("process") else
               run_matmul if case["name"] == "matmul" else run_in_process)
        print(json.dumps(run(case)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        files = None
        if any(name.startswith("process") for name in args.cases):
            files = _write_files(Path(tmp), args.size, args.contexts)
        cases = []
        for name in args.cases:
            case = dict(name=name, size=args.size, contexts=args.contexts,
                        precision="float32" if name == "reference" else args.precision,
                        mini_context=args.mini_context, files=files,
                        output=str(Path(tmp) / f"{name}.{'nii' if 'process' in name else 'npy'}"))
            if name == "engine":
                case["flops"] = forward_flops(args.size, args.contexts)
            if name == "matmul":  # in the precision the engine ran
                case["mini_context"] = ""
                case["precision"] = next((c["precision"] for c in cases
                                          if c["name"] == "engine" and "precision" in c),
                                         args.precision)
            case["load_before"] = [round(x, 2) for x in os.getloadavg()]
            # the app sets THP_MEM_ALLOC_ENABLE=1 (neuroverse_bids/__init__.py); the released
            # code ran with torch's default
            env = dict(os.environ, THP_MEM_ALLOC_ENABLE="0" if name == "reference" else "1")
            proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode:
                case["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr else "?"
            else:
                case.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps({k: v for k, v in case.items() if k != "files"}), flush=True)
            cases.append(case)
        _compare(cases)
        for case in cases:
            case.pop("output"), case.pop("files")
    tag = args.tag or f"cpu_{args.size}"
    command = f"python benchmarks/inference.py {' '.join(sys.argv[1:])}".strip()
    report = {"machine": machine(), "command": command, "cases": cases}
    loads = [c["load_before"][0] for c in cases]
    text = (f"# Inference benchmark `{tag}`\n\nReleased architecture (random weights), "
            f"{args.size}^3, L = {args.contexts}; every case in a fresh process.\n\n"
            f"Machine: {json.dumps(report['machine'])}\n\nCPU features: "
            f"{', '.join(report['machine'].get('cpu_features', [])) or '?'}; bfloat16: "
            f"{report['machine'].get('cpu_bf16', '?')} ({report['machine'].get('cpu_bf16_reason', '')})"
            f"\n\nCommand: `{command}`\n\n"
            f"1-minute load average before each case: {min(loads)}-{max(loads)} (the machine has "
            f"{os.cpu_count()} cores and may be shared)\n\n{table(cases)}\n\n{verdict(cases)}\n")
    write_report(args.out, f"inference_{tag}", report, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

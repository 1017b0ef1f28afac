"""Prediction time of trained models, each on its own input grid, in one run (a ratio).

Not a test. For every ``--model NAME=CKPT`` (default: the bundled model), a fresh process
builds a :class:`neuroverse_bids.model.predictor.Predictor` (``--precision``, default
``auto``: what the app runs) and times ``predict`` for one target, L contexts and K structures
on the model's own grid (seeded random volumes: time does not depend on the values), after one
warm-up call; the median of ``--repeats``. The first model is the reference of the ratio.
Writes ``<out>/model_speed_<tag>.json`` and ``.md``.

    python benchmarks/model_speed.py --model v2=v2.safetensors \\
        v3=model/pretrained_weights/neuroverse3d_default.safetensors --contexts 8 --structures 11
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def measure(path: str, contexts: int, structures: int, precision: str, repeats: int) -> dict:
    """Seconds per ``predict`` call of the model at ``path`` (this process)."""
    import torch

    from neuroverse_bids.model import load_checkpoint
    from neuroverse_bids.model.predictor import Predictor

    model = load_checkpoint(path)
    shape = tuple(model.metadata["grid"]["shape"])
    predictor = Predictor(model, device="cpu", precision=precision)
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(shape, generator=generator)
    images = torch.rand((contexts, *shape), generator=generator)
    labels = (torch.rand((structures, contexts, *shape), generator=generator) > 0.5).float()
    predictor.predict(target, images, labels)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(target, images, labels)
        times.append(time.perf_counter() - start)
    return {"grid": list(shape), "voxel_size_mm": model.metadata["grid"]["voxel_size_mm"],
            "precision": str(predictor.dtype).replace("torch.", ""),
            "seconds": statistics.median(times), "all_seconds": times,
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", nargs="+", metavar="NAME=CKPT", default=None)
    parser.add_argument("--contexts", type=int, default=8)
    parser.add_argument("--structures", type=int, default=11)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tag", default="default")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.contexts, args.structures, args.precision,
                                 args.repeats)))
        return 0
    from _report import RESULTS, machine, write_report
    from neuroverse_bids.model.pretrained import default_model_path

    models = dict(m.split("=", 1) for m in (args.model or [f"default={default_model_path()}"]))
    results = {}
    for name, path in models.items():  # each in a fresh process: its own time and memory
        child = subprocess.run([sys.executable, __file__, "--child", path,
                                "--contexts", str(args.contexts), "--structures",
                                str(args.structures), "--precision", args.precision,
                                "--repeats", str(args.repeats)],
                               capture_output=True, text=True, check=True)
        results[name] = {"path": path, **json.loads(child.stdout.strip().splitlines()[-1])}
    first = next(iter(results.values()))["seconds"]
    lines = ["# Prediction time per target, each model on its own grid", "",
             f"Command: `python benchmarks/model_speed.py {' '.join(sys.argv[1:])}`", "",
             f"One target, L = {args.contexts} contexts, K = {args.structures} structures, "
             f"`--precision {args.precision}`; median of {args.repeats} calls after a warm-up, "
             "each model in a fresh process.", "",
             "| model | grid | mm | precision | seconds | ratio |", "| --- " * 6 + "|"]
    for name, r in results.items():
        lines.append(f"| {name} | {'x'.join(map(str, r['grid']))} | {r['voxel_size_mm']} | "
                     f"{r['precision']} | {r['seconds']:.2f} | {r['seconds'] / first:.2f} |")
    text = "\n".join(lines + [""])
    write_report(args.out or RESULTS, f"model_speed_{args.tag}",
                 {"machine": machine(), "config": {k: str(v) if isinstance(v, Path) else v
                                                 for k, v in vars(args).items()},
                  "results": results}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

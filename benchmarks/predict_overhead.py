"""Overhead of the ``neuroverse3d-predict`` process over the forward pass it runs.

Not a test. One run measures, each case in a fresh process and on the same files (released
architecture with random weights saved by ``save_checkpoint`` with a ``--size``^3 grid at
1.5 mm, as the released model records; a synthetic ``--size``^3 target and L context pairs as
gzipped NIfTI at 1 mm, so that the command brings each onto the model grid through the
resampler and the prediction back, as for volumes as they come; ``--on-grid``: at 1.5 mm,
used as they are):

* ``forward`` - :meth:`Predictor.predict` alone, in-process, on the same volumes already in
  memory (normalised as the command does; same shape as the model grid, so the same work);
  the timed part is ``predict`` only;
* ``process`` - the whole ``neuroverse3d-predict`` process, timed from outside: start-up,
  imports, checks, reading, normalising, the same forward and writing.

It prints the ratio process / forward (target: at most 1.10) and writes
``<out>/predict_overhead.json`` and ``.md`` (``--size`` other than 128 adds ``_<size>``,
``--on-grid`` adds ``_on_grid`` to the name, so other checks do not replace the current result).
Wall and CPU time are both reported: on a shared machine the CPU time ratio is the steadier.

    nice -n 10 python benchmarks/predict_overhead.py --size 64     # quick (about a minute)
    nice -n 10 python benchmarks/predict_overhead.py               # 128^3, L=8: a few minutes
    nice -n 10 python benchmarks/predict_overhead.py --on-grid     # no resampling
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _report import RESULTS, machine, write_report  # beside this script

VOXEL_MM = 1.5
TARGET_RATIO = 1.10


def _volume(size: int, seed: int, label: bool = False) -> np.ndarray:
    """A smooth random volume (image intensities 0-1000 or a {0, 1} label)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 8 + 1,) * 3)
    volume = coarse.repeat(8, 0).repeat(8, 1).repeat(8, 2)[:size, :size, :size]
    if label:
        return (volume > 0.5).astype(np.uint8)
    return (volume * 1000 + rng.normal(0, 20, volume.shape)).astype(np.float32)


def write_files(folder: Path, size: int, pairs: int, on_grid: bool = False) -> dict:
    """The checkpoint and the gzipped NIfTI volumes that both cases read."""
    import nibabel as nb
    import torch

    from neuroverse_bids.model import Neuroverse3D, save_checkpoint

    torch.manual_seed(0)
    model = save_checkpoint(Neuroverse3D(), folder / "model.safetensors",
                            grid={"shape": [size] * 3, "voxel_size_mm": VOXEL_MM})
    affine = np.diag([VOXEL_MM if on_grid else 1.0] * 3 + [1.0])

    def nifti(volume, name):
        path = folder / f"{name}.nii.gz"
        nb.save(nb.Nifti1Image(volume, affine), str(path))
        return str(path)
    return {"model": str(model), "target": nifti(_volume(size, 0), "target"),
            "images": [nifti(_volume(size, i), f"image{i}") for i in range(1, pairs + 1)],
            "labels": [nifti(_volume(size, 1000 + i, True), f"label{i}")
                       for i in range(1, pairs + 1)]}


def run_forward(files: dict) -> dict:
    """The forward alone: the volumes read and normalised untimed, then ``predict`` timed."""
    import nibabel as nb
    import torch

    from neuroverse_bids.model import load_checkpoint
    from neuroverse_bids.model.intensity import normalise_intensity
    from neuroverse_bids.model.predictor import Predictor

    def read(path):
        return np.asanyarray(nb.load(path).dataobj, dtype=np.float32)
    target = torch.from_numpy(normalise_intensity(read(files["target"])))
    images = torch.stack([torch.from_numpy(normalise_intensity(read(p))) for p in files["images"]])
    labels = torch.stack([torch.from_numpy(read(p)) for p in files["labels"]])
    predictor = Predictor(load_checkpoint(files["model"]), device="cpu", precision="float32",
                          mini_context_size="auto")
    start, cpu = time.perf_counter(), time.process_time()
    predictor.predict(target, images, labels)
    return {"seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
            "timings": {k: round(v, 3) for k, v in predictor.timings.items()}}


def run_process(files: dict, output: str) -> dict:
    """The whole ``neuroverse3d-predict`` process, timed from outside."""
    script = Path(sys.executable).with_name("neuroverse3d-predict")
    command = [str(script)] if script.exists() else [sys.executable, "-m",
                                                     "neuroverse_bids.cli.predict"]
    command += ["--model", files["model"], "--target", files["target"],
                "--context-images", *files["images"], "--context-labels", *files["labels"],
                "--output", output, "--device", "cpu", "--precision", "float32"]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip()[-500:])
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="grid side (voxels)")
    parser.add_argument("--contexts", type=int, default=8, help="L")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (median reported)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--on-grid", action="store_true",
                        help="volumes on the model grid (no resampling)")
    parser.add_argument("--keep", type=Path, help="write the input files here and keep them")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case
    args = parser.parse_args(argv)
    if args.case:
        case = json.loads(args.case)
        run = run_forward if case["name"] == "forward" else (
            lambda files: run_process(files, case["output"]))
        print(json.dumps(run(case["files"])))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        files = write_files(folder, args.size, args.contexts, args.on_grid)
        rounds = {"forward": [], "process": []}
        for _ in range(args.repeat):
            for name in rounds:
                case = {"name": name, "files": files, "output": str(Path(tmp) / "out.nii.gz"),
                        "load_before": round(os.getloadavg()[0], 2)}
                proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)],
                                      capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"{name} failed: {proc.stderr.strip()[-800:]}")
                result = dict(json.loads(proc.stdout.strip().splitlines()[-1]),
                              load_before=case["load_before"])
                print(json.dumps({name: result}), flush=True)
                rounds[name].append(result)
    median = {name: {key: statistics.median(r[key] for r in runs) for key in ("seconds", "cpu_s")}
              for name, runs in rounds.items()}
    forward, process = median["forward"]["seconds"], median["process"]["seconds"]
    ratio = process / forward
    cpu_ratio = median["process"]["cpu_s"] / median["forward"]["cpu_s"]
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    tag = "predict_overhead" + ("" if args.size == 128 else f"_{args.size}") + (
        "_on_grid" if args.on_grid else "")
    command = f"python benchmarks/predict_overhead.py {' '.join(sys.argv[1:])}".strip()
    report = {"machine": machine(), "command": command, "size": args.size,
              "contexts": args.contexts, "on_grid": args.on_grid, "precision": "float32",
              "device": "cpu",
              "forward_s": round(forward, 2), "process_s": round(process, 2),
              "ratio": round(ratio, 3), "cpu_ratio": round(cpu_ratio, 3),
              "target_ratio": TARGET_RATIO, "rounds": rounds}
    loads = [r["load_before"] for runs in rounds.values() for r in runs]
    text = (f"# `neuroverse3d-predict` overhead, {args.size}^3, L = {args.contexts}\n\n"
            f"Released architecture (random weights), float32, CPU; volumes "
            f"{'on the model grid' if args.on_grid else 'at 1 mm, resampled onto the 1.5 mm model grid'}"
            f"; each case in a fresh process, median of {args.repeat} round(s).\n\nMachine: "
            f"{json.dumps(report['machine'])}\n\nCommand: `{command}`\n\n"
            f"1-minute load average before each case: {min(loads)}-{max(loads)} (the machine "
            f"has {os.cpu_count()} cores and may be shared)\n\n"
            f"| case | wall time (s) | CPU time (s) |\n| --- | --- | --- |\n"
            f"| forward alone, in-process | {forward:.2f} | {median['forward']['cpu_s']:.2f} |\n"
            f"| whole `neuroverse3d-predict` process | {process:.2f} | "
            f"{median['process']['cpu_s']:.2f} |\n\n"
            f"Ratio process / forward: {ratio:.3f} wall (overhead {100 * (ratio - 1):.1f} %; "
            f"target <= {TARGET_RATIO}: {verdict}), {cpu_ratio:.3f} CPU time.\n\nForward "
            f"timings (s): {json.dumps(rounds['forward'][-1]['timings'])}\n")
    write_report(args.out, tag, report, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

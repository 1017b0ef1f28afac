"""Wall time of the participant level as a SLURM job array, and what the context set costs.

Usage: python benchmarks/slurm_array.py [--subjects 1 4] [--cpus-per-task 1] [--out DIR]

Needs a running SLURM (``scripts/start-local-slurm.sh``, as root). A synthetic demo dataset of
6 subjects (2.5 mm) with a 3-pair context (a pool of 4 subjects) is made once; for each N the
first N subjects run as an array through ``neuroverse3d-slurm --wait`` (bundled model, sloppy
registration, CPU, float32) into a fresh output folder, then the group level. Reported, from
the tasks' own records:

* wall: from submission to the end of the group job (s);
* context: the building task's ``SecondsPreparing`` (registration, resampling and stacking of
  the pool, once) and the longest wait of the other tasks;
* own: per reusing task, its elapsed time minus its wait for the context set, i.e. the
  subject's own registration + inference + writing (+ start-up, checks and report);
* marginal: (wall(N_max) - wall(N_min)) / (N_max - N_min), to compare with own.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, machine, write_report  # noqa: E402


def run_array(demo: Path, out: Path, subjects, cpus: int) -> dict:
    labels = [f"{i:02d}" for i in range(1, subjects + 1)]
    work = out / "work"
    env = dict(os.environ, TEMPLATEFLOW_HOME=str(demo / "templateflow"))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "neuroverse_bids.cli.slurm", str(demo / "bids"), str(out / "out"),
         "-w", str(work), "--participant-label", *labels,
         "--sbatch-args", f"--cpus-per-task={cpus} --mem=3G", "--wait", "--",
         "--context-spec", str(demo / "context-spec.json"), "--sloppy", "--device", "cpu",
         "--precision", "float32", "--skip-bids-validation"],
        capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stdout + done.stderr)
    tasks = {}
    for log in sorted((work / "slurm").glob("neuroverse3d-participant_*.out")):
        text = log.read_text()
        started = re.search(r"sub-(\w+) started ([\d.]+)", text)
        finished = re.search(r"sub-\w+ finished ([\d.]+)", text)
        tasks[started.group(1)] = {"elapsed_s": float(finished.group(1)) - float(started.group(2))}
    for status in (out / "out" / "logs").glob("context-set_*.json"):
        record = json.loads(status.read_text())
        subject = record["Subjects"][0]
        tasks[subject].update(reused=record["Reused"], context_s=record["SecondsPreparing"])
        tasks[subject]["own_s"] = round(tasks[subject]["elapsed_s"] - record["SecondsPreparing"], 1)
    builder = [t for t in tasks.values() if not t["reused"]]
    return {"subjects": subjects, "wall_s": round(wall, 1), "tasks": tasks,
            "context_build_s": builder[0]["context_s"] if builder else None,
            "context_wait_max_s": max((t["context_s"] for t in tasks.values() if t["reused"]),
                                      default=0.0)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--cpus-per-task", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmark_slurm"))
    args = parser.parse_args(argv)
    from neuroverse_bids.demo import CONTEXT_SPEC, make_demo_dataset

    demo = args.out / "demo"
    if not (demo / "bids").is_dir():
        make_demo_dataset(demo, subjects=6, seed=0, voxel_size=2.5)
    spec = dict(CONTEXT_SPEC, num_contexts=3)
    (demo / "context-spec.json").write_text(json.dumps(spec))
    runs = [run_array(demo, args.out / f"n{n}", n, args.cpus_per_task) for n in args.subjects]
    low, high = runs[0], runs[-1]
    marginal = ((high["wall_s"] - low["wall_s"]) / (high["subjects"] - low["subjects"])
                if len(runs) > 1 else None)
    own = [t["own_s"] for r in runs for t in r["tasks"].values() if t.get("reused")]
    own_mean = sum(own) / len(own) if own else None
    data = {"machine": machine(), "runs": runs, "marginal_s": marginal, "own_mean_s": own_mean,
            "marginal_over_own": marginal / own_mean if marginal and own_mean else None}
    lines = ["| N | wall (s) | context build (s, once) | longest wait of others (s) |",
             "|---|---|---|---|"]
    lines += [f"| {r['subjects']} | {r['wall_s']} | {r['context_build_s']} | "
              f"{r['context_wait_max_s']} |" for r in runs]
    lines += ["", f"own cost of a subject (reusing tasks, mean): {own_mean and round(own_mean, 1)} s; "
                  f"marginal wall time per extra subject: {marginal and round(marginal, 1)} s "
                  f"(ratio {data['marginal_over_own'] and round(data['marginal_over_own'], 2)})"]
    text = "\n".join(lines) + "\n"
    print(text)
    write_report(RESULTS, "slurm_array", data, "# SLURM array\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

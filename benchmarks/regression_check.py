"""A candidate model's ``neuroverse3d-eval`` results against a baseline model's, per structure.

Both ``eval.json`` files come from the same protocol (datasets, draws, seed; e.g. the MNI152 /
Colin27 held-out subjects of ``neuroverse3d-make-training-data --seed 1000``). For every
(dataset, task, structure, metric) at context size L that both hold, the model's mean of each,
the difference, and whether the candidate stays within ``--tolerance`` of the baseline (Dice;
PSNR uses ``--psnr-tolerance`` dB). The majority vote (Dice) of each run is shown beside it.
The two runs may use different grids (each model on its own): then the Dice figures are each
on its own grid and the table says so. Writes ``<out>/regression_<tag>.json`` and ``.md``;
exit status 0 either way (a missed target is a result).

    python benchmarks/regression_check.py evaluation/default_model_v2/eval.json \\
        evaluation/v3/regression/eval.json --context-size 8 --tag v3_vs_v2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

Key = Tuple[str, str, str, str]  # dataset, task, structure, metric


def _means(path: Path, size: int) -> Tuple[dict, Dict[Key, float], Dict[Key, float]]:
    data = json.loads(path.read_text())
    model, baseline = {}, {}
    for row in data["results"]:
        if int(row["context_size"]) != size:
            continue
        key = (row["dataset"], row["task"], row["structure"], row["metric"])
        if row["method"] == "model":
            model[key] = float(row["mean"])
        elif row["method"] == "majority-vote":
            baseline[key] = float(row["mean"])
    return data, model, baseline


def compare(reference: Path, candidate: Path, size: int, tolerance: float,
            psnr_tolerance: float) -> List[dict]:
    """One row per key both runs hold at L = ``size``: reference, candidate, delta, ``ok``."""
    _, ref, ref_vote = _means(reference, size)
    _, new, new_vote = _means(candidate, size)
    rows = []
    for key in [k for k in ref if k in new]:
        allowed = tolerance if key[3] == "dice" else psnr_tolerance
        delta = new[key] - ref[key]
        rows.append({"dataset": key[0], "task": key[1], "structure": key[2], "metric": key[3],
                     "reference": ref[key], "candidate": new[key], "delta": delta,
                     "reference_majority": ref_vote.get(key),
                     "candidate_majority": new_vote.get(key), "ok": delta >= -allowed})
    return rows


def _grid(path: Path) -> str:
    config = (json.loads(path.read_text()).get("model") or {}).get("grid") or {}
    return f"{config.get('shape')} at {config.get('voxel_size_mm')} mm" if config else "?"


def markdown(rows: List[dict], args) -> str:
    fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"# Regression check: `{args.candidate}` vs `{args.reference}` "
             f"(L = {args.context_size})", "",
             f"Command: `python benchmarks/regression_check.py {args.reference} {args.candidate} "
             f"--context-size {args.context_size} --tolerance {args.tolerance} --tag {args.tag}`",
             "",
             f"Target: no Dice below the reference by more than {args.tolerance} (PSNR: "
             f"{args.psnr_tolerance} dB). Each model runs on its own grid (reference "
             f"{_grid(args.reference)}; candidate {_grid(args.candidate)}), so each Dice is on "
             "its own grid.", "",
             "| dataset | task | structure | metric | reference | candidate | delta | within | "
             "majority (ref) | majority (cand) |", "| --- " * 10 + "|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['task']} | {r['structure']} | {r['metric']} | "
                     f"{fmt(r['reference'])} | {fmt(r['candidate'])} | {r['delta']:+.3f} | "
                     f"{'yes' if r['ok'] else '**no**'} | {fmt(r['reference_majority'])} | "
                     f"{fmt(r['candidate_majority'])} |")
    missed = [r for r in rows if not r["ok"]]
    names = [f"{r['dataset']} {r['structure'] if r['metric'] == 'dice' else r['task']} "
             f"({r['delta']:+.3f})" for r in missed]
    summary = f"{len(rows) - len(missed)} of {len(rows)} within tolerance."
    lines += ["", summary + (" Missed: " + ", ".join(names) + "." if names else ""), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference", type=Path, help="baseline eval.json")
    parser.add_argument("candidate", type=Path, help="candidate eval.json")
    parser.add_argument("--context-size", type=int, default=8)
    parser.add_argument("--tolerance", type=float, default=0.02, help="Dice (default 0.02)")
    parser.add_argument("--psnr-tolerance", type=float, default=0.5, help="dB (default 0.5)")
    parser.add_argument("--tag", default="candidate")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results")
    args = parser.parse_args(argv)
    from _report import RESULTS, write_report

    rows = compare(args.reference, args.candidate, args.context_size, args.tolerance,
                   args.psnr_tolerance)
    if not rows:
        print(f"regression_check: no (dataset, task, structure) at L = {args.context_size} in both",
              file=sys.stderr)
        return 1
    text = markdown(rows, args)
    write_report(args.out or RESULTS, f"regression_{args.tag}",
                 {"reference": str(args.reference), "candidate": str(args.candidate),
                  "context_size": args.context_size, "tolerance": args.tolerance, "rows": rows},
                 text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Markdown sections of ``quality_estimate.py``'s result (kept apart: the measuring script
stays short)."""
from __future__ import annotations

import statistics
from typing import List


def _spearman(x, y):
    from neuroverse_bids.evaluation.calibration import spearman

    return spearman(x, y)


def quality_section(parts: List[dict]) -> List[str]:
    rows = [r for p in parts for r in p["rows"]]
    structures = list(dict.fromkeys(r["structure"] for r in rows))
    from neuroverse_bids.model.quality_signals import signal_names

    signals = [k for k in signal_names() if k in rows[0] and len({r[k] for r in rows}) > 1]
    lines = ["## Predicted per-subject Dice (5 folds; fitted on the other 16 maps)", "",
             "| structure | obtained | predicted | MAE predicted | MAE expected only | "
             "Spearman predicted | " + " | ".join(f"Spearman {s}" for s in signals) + " |",
             "| --- " * (6 + len(signals)) + "|"]
    rhos, maes, flat = [], [], []
    for name in structures:
        per_seed = {}
        for p in parts:
            mine = [r for r in p["rows"] if r["structure"] == name]
            per_seed[p["seed"]] = {
                "predicted": _spearman([r["predicted_dice"] for r in mine],
                                       [r["dice"] for r in mine]),
                **{s: _spearman([r[s] for r in mine], [r["dice"] for r in mine])
                   for s in signals}}
        mine = [r for r in rows if r["structure"] == name]
        mae = statistics.mean(abs(r["predicted_dice"] - r["dice"]) for r in mine)
        flat_mae = statistics.mean(abs(r["expected"] - r["dice"]) for r in mine)
        rho = statistics.mean(v["predicted"] for v in per_seed.values())
        rhos.append(rho), maes.append(mae), flat.append(flat_mae)
        lines.append(f"| {name} | {statistics.mean(r['dice'] for r in mine):.3f} | "
                     f"{statistics.mean(r['predicted_dice'] for r in mine):.3f} | {mae:.3f} | "
                     f"{flat_mae:.3f} | {rho:+.2f} | " + " | ".join(
                         f"{statistics.mean(v[s] for v in per_seed.values()):+.2f}"
                         for s in signals) + " |")
    lines += ["", f"Mean within-structure Spearman **{statistics.mean(rhos):.2f}** "
                  "(target >= 0.5); mean absolute error of the predicted Dice "
                  f"**{statistics.mean(maes):.3f}** (target <= 0.05; the self-evaluation's "
                  f"mean alone: {statistics.mean(flat):.3f}).", "",
              "## Calibration of the probability maps (ECE, 10 bins)", "",
              "| seed | near before | near after | all before | all after |",
              "| --- | --- | --- | --- | --- |"]
    for p in parts:
        b, a = p["ece_before"], p["ece_after"]
        lines.append(f"| {p['seed']} | {b['near']['ece']:.4f} | {a['near']['ece']:.4f} | "
                     f"{b['all']['ece']:.4f} | {a['all']['ece']:.4f} |")
    ratio = statistics.mean(p["ece_after"]["near"]["ece"] / p["ece_before"]["near"]["ece"]
                            for p in parts)
    lines += ["", f"Calibrated / raw ECE near the structures: **{ratio:.2f}** (target <= 0.5)."]
    return lines


def suggestion_section(rounds: List[dict], args: dict) -> List[str]:
    strategies = list(rounds[0]["mean_dice"])
    lines = [f"## Which subject to label next ({args['start']} labelled, +{args['add']} each)", "",
             "| seed | round | " + " | ".join(strategies) + " | rest |",
             "| --- | --- | " + "--- | " * len(strategies) + "--- |"]
    for r in rounds:
        lines.append(f"| {r['seed']} | {r['round']} | " + " | ".join(
            f"{r['mean_dice'][s]:.3f}" for s in strategies) + f" | {len(r['rest'])} |")
    means = {s: statistics.mean(r["mean_dice"][s] for r in rounds) for s in strategies}
    lines += ["| mean | | " + " | ".join(f"**{means[s]:.3f}**" for s in strategies) + " | |",
              ""] + [f"{s} - random: **{means[s] - means['random']:+.3f}** mean Dice on the maps "
                     "no strategy picked (target >= +0.02)." for s in strategies if s != "random"]
    return lines

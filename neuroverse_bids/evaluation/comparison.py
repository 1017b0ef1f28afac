"""Selection and ensemble comparison for ``neuroverse3d-eval`` (``--selection``,
``--ensemble``): ``selection_ensemble.md``, the ``comparison`` section of ``eval.json`` and
``reliability.png``.

Headline per context size L: the mean over datasets and structures of each method's mean
Dice (methods: :func:`.protocol.method_name`), the gains of ``similar`` over ``random`` and of
an ensemble over one draw (its own member 0, so the pairs are matched), the Spearman
correlation of each uncertainty summary with 1 - Dice over every (target, structure, draw)
of an ensemble method (pooled, which mostly ranks structures, and within each structure,
which ranks targets), and the expected calibration error (:mod:`.calibration`).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from ..model.ensemble import SUMMARIES
from ..workflows.niftiio import write_atomic
from .calibration import REGIONS, spearman


def _gain(method: str):
    """(reference method, kind) a method is compared with, or None."""
    if "-ens" in method:
        return method.split("-ens")[0], "ensemble"
    if method.startswith("model-"):  # another selection strategy than random
        return "model", "selection"
    return None


def compare(summary: Sequence[dict], rows: Sequence[dict], reliability) -> dict:
    """The comparison section (see the module docstring)."""
    dice: Dict[str, Dict[int, list]] = {}
    for item in summary:
        if item["metric"] == "dice" and item["method"].startswith("model"):
            dice.setdefault(item["method"], {}).setdefault(item["context_size"], []).append(
                item["mean"])
    mean_dice = {m: {L: float(np.mean(v)) for L, v in sorted(by.items())} for m, by in dice.items()}
    gains = {}
    for method, by_size in mean_dice.items():
        reference = _gain(method)
        if reference and reference[0] in mean_dice:
            gains[f"{method} - {reference[0]}"] = {
                L: value - mean_dice[reference[0]][L] for L, value in by_size.items()
                if L in mean_dice[reference[0]]}
    keyed: Dict[tuple, Dict[str, float]] = {}
    for row in rows:
        if row["task"] == "segmentation" and row["method"].startswith("model"):
            key = (row["dataset"], row["structure"], row["context_size"], row["subject"],
                   row["draw"], row["method"])
            keyed.setdefault(key, {})[row["metric"]] = row["value"]
    correlations: Dict[str, Dict[str, dict]] = {}
    for method in sorted({k[5] for k in keyed if "-ens" in k[5]}):
        for name in SUMMARIES:
            by_size: Dict[object, list] = {}
            for key, values in keyed.items():
                if key[5] == method and name in values and "dice" in values:
                    for size in (key[2], "all"):
                        by_size.setdefault(size, []).append((values[name], 1 - values["dice"]))
            entry = {L: {"rho": spearman(*zip(*pairs)), "n": len(pairs)}
                     for L, pairs in by_size.items()}
            # within one structure (which targets fail, not which structures are hard): the
            # mean over (dataset, structure) of rho over its targets and draws
            by_structure: Dict[tuple, list] = {}
            for key, values in keyed.items():
                if key[5] == method and name in values and "dice" in values:
                    by_structure.setdefault(key[:3], []).append((values[name],
                                                                 1 - values["dice"]))
            rhos = [spearman(*zip(*pairs)) for pairs in by_structure.values()]
            rhos = [r for r in rhos if r == r]
            entry["within_structure"] = {"rho": float(np.mean(rhos)) if rhos else float("nan"),
                                         "n": len(rhos)}
            correlations.setdefault(method, {})[name] = entry
    calibration = {m: {L: r.summary() for L, r in sorted(by.items())}
                   for m, by in reliability.items()}
    return {"mean_dice": mean_dice, "gains": gains, "spearman_vs_1_minus_dice": correlations,
            "calibration": calibration}


def _fmt(value, digits=3):
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def markdown(comparison: dict) -> str:
    methods = list(comparison["mean_dice"])
    sizes = sorted({L for by in comparison["mean_dice"].values() for L in by})
    lines = ["## Mean Dice over datasets and structures", "",
             "| L | " + " | ".join(methods) + " | " + " | ".join(comparison["gains"]) + " |",
             "|" + " --- |" * (1 + len(methods) + len(comparison["gains"]))]
    for L in sizes:
        cells = [_fmt(comparison["mean_dice"][m].get(L)) for m in methods]
        cells += [f"{comparison['gains'][g][L]:+.3f}" if L in comparison["gains"][g] else "n/a"
                  for g in comparison["gains"]]
        lines.append(f"| {L} | " + " | ".join(cells) + " |")
    lines += ["", "## Expected calibration error (ECE; near: within 2 voxels of the structure)",
              "", "| method | L | ECE near | ECE all |", "| --- | --- | --- | --- |"]
    for method, by_size in comparison["calibration"].items():
        for L, regions in by_size.items():
            lines.append(f"| {method} | {L} | {_fmt(regions['near']['ece'], 4)} | "
                         f"{_fmt(regions['all']['ece'], 4)} |")
    if comparison["spearman_vs_1_minus_dice"]:
        lines += ["", "## Spearman rho: uncertainty summary vs 1 - Dice (per target, structure, "
                  "draw; within_structure: the mean of rho within each (dataset, structure, L), "
                  "n structures)", "", "| method | summary | L | rho | n |",
                  "| --- | --- | --- | --- | --- |"]
        for method, names in comparison["spearman_vs_1_minus_dice"].items():
            for name, by_size in names.items():
                for L, item in by_size.items():
                    lines.append(f"| {method} | {name} | {L} | {_fmt(item['rho'])} | "
                                 f"{item['n']} |")
    return "\n".join(lines) + "\n"


def plot_reliability(comparison: dict, path: Path) -> Path:
    """Reliability diagrams: one column per L, rows ``near`` and ``all``; one line per
    method, ECE in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({L for by in comparison["calibration"].values() for L in by})
    figure, axes = plt.subplots(len(REGIONS), len(sizes), figsize=(3.6 * len(sizes), 7),
                                squeeze=False)
    for column, L in enumerate(sizes):
        for row, region in enumerate(REGIONS):
            ax = axes[row, column]
            ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
            for colour, (method, by_size) in enumerate(comparison["calibration"].items()):
                if L not in by_size:
                    continue
                item = by_size[L][region]
                points = [(c, f) for c, f in zip(item["confidence"], item["frequency"])
                          if c is not None]
                if points:
                    x, y = zip(*points)
                    ax.plot(x, y, marker="o", ms=3, color=f"C{colour % 10}",
                            label=f"{method} (ECE {item['ece']:.3f})")
            ax.set_title(f"L={L}, {region} voxels", fontsize=9)
            ax.set_xlabel("predicted probability")
            ax.set_ylabel("observed frequency")
            ax.legend(fontsize=6)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))

"""Reporting for ``neuroverse3d-eval``: summary statistics, ``eval.tsv``, ``eval.json``,
``eval.md`` (model vs baseline per L) and ``eval.png`` (metric vs context size), each written
atomically (an unwritable output folder is exit 73)."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from ..workflows.niftiio import write_atomic, write_text_atomic

#: the columns of eval.tsv (one row per test subject, draw, structure, L and method)
COLUMNS = ("dataset", "task", "structure", "metric", "context_size", "subject", "draw", "method",
           "value", "context")


def summarise(rows: Sequence[dict]) -> List[dict]:
    """Mean and (population) standard deviation over test subjects and draws."""
    names = ("dataset", "task", "structure", "metric", "context_size", "method")
    groups: Dict[tuple, List[float]] = {}
    for row in rows:
        groups.setdefault(tuple(row[c] for c in names), []).append(row["value"])
    return [dict(zip(names, key), mean=float(np.mean(v)), std=float(np.std(v)), n=len(v))
            for key, v in groups.items()]


def _finite(value):
    """JSON without NaN/Infinity (e.g. the PSNR of identical volumes): non-finite -> null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def plot(summary: Sequence[dict], path: Path) -> Path:
    """Metric vs context size, one panel per dataset and task (like the paper's Figure 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: Dict[tuple, Dict[str, Dict[str, list]]] = {}
    for item in summary:
        if item["metric"] not in ("dice", "psnr"):  # uncertainty summaries: comparison only
            continue
        lines = panels.setdefault((item["dataset"], item["task"], item["metric"]), {})
        line = lines.setdefault(item["structure"], {}).setdefault(item["method"], [])
        if math.isfinite(item["mean"]) and math.isfinite(item["std"]):  # inf PSNR: not drawn
            line.append((item["context_size"], item["mean"], item["std"]))
    cols = min(3, max(1, len(panels)))
    rows = (len(panels) + cols - 1) // cols
    figure, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    for ax, ((dataset, task, metric), lines) in zip(axes.flat, panels.items()):
        for colour, (structure, methods) in enumerate(lines.items()):
            for method, points in methods.items():
                if not points:
                    continue
                x, y, e = zip(*sorted(points))
                ax.errorbar(x, y, yerr=e, color=f"C{colour % 10}", capsize=2, marker="o", ms=3,
                            linestyle="-" if method == "model" else "--",
                            label=f"{structure if structure != 'n/a' else ''} {method}".strip())
        ax.set_xscale("log", base=2)
        sizes = sorted({p[0] for methods in lines.values() for pts in methods.values() for p in pts})
        ax.set_xticks(sizes, [str(L) for L in sizes])
        ax.set_xlabel("context size L")
        ax.set_ylabel(metric.upper() if metric == "psnr" else "Dice")
        ax.set_title(f"{dataset}: {task}", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=2)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def markdown_table(summary: Sequence[dict]) -> str:
    """One row per dataset/task/structure: ``model (baseline)`` mean +- std at every L."""
    sizes = sorted({item["context_size"] for item in summary})
    cells: Dict[tuple, Dict[int, Dict[str, dict]]] = {}
    for item in summary:
        key = (item["dataset"], item["task"], item["structure"], item["metric"])
        cells.setdefault(key, {}).setdefault(item["context_size"], {})[item["method"]] = item
    lines = ["| dataset | task | structure | metric | " + " | ".join(f"L={L}" for L in sizes) + " |",
             "|" + " --- |" * (4 + len(sizes))]
    for (dataset, task, structure, metric), by_size in cells.items():
        row = []
        for size in sizes:
            methods = by_size.get(size, {})
            model = methods.get("model")
            others = [m for name, m in methods.items() if name != "model"]
            text = f"{model['mean']:.3g} ± {model['std']:.2g}" if model else ""
            named = len(others) > 1  # several baselines/methods: say which is which
            text += "".join(f" ({m['method'] + ' ' if named else ''}{m['mean']:.3g})"
                            for m in others)
            row.append(text)
        lines.append(f"| {dataset} | {task} | {structure} | {metric} | " + " | ".join(row) + " |")
    return "\n".join(lines) + ("\n\nmodel mean ± std over test subjects and draws "
                               "(baseline or other method: mean)\n")


def write_outputs(out: Path, rows, summary, info: dict, comparison: str = "",
                  reliability=None) -> Dict[str, Path]:
    """eval.tsv, eval.json, eval.md and eval.png, each written atomically; with a comparison
    (markdown) also selection_ensemble.md, and reliability.png from ``reliability(path)``."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "value": f"{r['value']:.10g}"} for r in rows)
    document = json.dumps(_finite(dict(info, results=summary)), indent=1, allow_nan=False)
    paths = {"tsv": write_text_atomic(out / "eval.tsv", text.getvalue()),
             "json": write_text_atomic(out / "eval.json", document + "\n"),
             "md": write_text_atomic(out / "eval.md", markdown_table(summary)),
             "png": plot(summary, out / "eval.png")}
    if comparison:
        paths["comparison"] = write_text_atomic(out / "selection_ensemble.md", comparison)
    if reliability is not None:
        paths["reliability"] = reliability(out / "reliability.png")
    return paths



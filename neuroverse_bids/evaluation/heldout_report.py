"""The held-out evaluation's outputs: ``heldout.tsv`` (one row per target, contrast, L,
method and structure), ``heldout.json`` (means and the run's record), ``heldout.md`` (the
table of the model card) and ``heldout.png``."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .heldout_methods import CONTRAST_TITLES, STRUCTURE_NAMES

COLUMNS = ("target", "contrast", "L", "method", "structure", "dice", "seconds", "contexts")


def summarise(rows: List[dict]) -> dict:
    """{method: {contrast: {L: {"structures": {name: {mean, std, n}}, "mean": mean over targets
    of the mean of the structures, "targets", "seconds_per_target"}}}}; NaN Dice are skipped."""
    groups: Dict[tuple, Dict[str, dict]] = {}
    for row in rows:
        target = groups.setdefault((row["method"], row["contrast"], row["L"]), {}).setdefault(
            row["target"], {"dice": {}, "seconds": row["seconds"]})
        target["dice"][row["structure"]] = row["dice"]
    summary: dict = {}
    for (method, contrast, size), targets in groups.items():
        names = list(next(iter(targets.values()))["dice"])
        per = {n: np.array([t["dice"][n] for t in targets.values()], float) for n in names}
        means = [finite_mean(list(t["dice"].values())) for t in targets.values()]
        means = np.array([np.nan if m is None else m for m in means])
        summary.setdefault(method, {}).setdefault(contrast, {})[str(size)] = {
            "structures": {n: {"mean": finite_mean(v), "std": finite_mean(v, np.std),
                               "n": int(np.isfinite(v).sum())} for n, v in per.items()},
            "mean": finite_mean(means), "targets": len(targets),
            "seconds_per_target": round(float(np.mean([t["seconds"] for t in targets.values()])),
                                        2)}
    return summary


def finite_mean(values, reduce=np.mean) -> Optional[float]:
    """``reduce`` of the finite values, rounded; None when there are none."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return round(float(reduce(values)), 4) if values.size else None


def _cell(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(summary: dict, info: dict) -> str:
    """The main table (structures x methods at the main L and contrast) and the means of every
    contrast and L."""
    config = info["config"]
    methods = [m for m in summary]
    runs = info.get("runs") or [info]
    contrasts, sizes = table_axes(summary, info)
    contrast, size = main_cell(summary, info)
    cell = lambda m, c, L: summary[m].get(c, {}).get(str(L))  # noqa: E731
    lines = ["# Held-out evaluation: Dice in the targets' native 1 mm space", "",
             f"Targets {', '.join(config['targets'])}; contexts drawn from "
             f"{len(config['contexts'])} maps ({', '.join(config['contexts'])}); seed "
             f"{config['seed']}; grid " + "; ".join(dict.fromkeys(
                 f"{r['grid']['shape']} at {r['grid']['voxel_size_mm']} mm" for r in runs)) + ".",
             "",
             f"## L = {size}, {CONTRAST_TITLES.get(contrast, contrast)} contrast", "",
             "| structure | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for name in STRUCTURE_NAMES:
        lines.append(f"| {name} | " + " | ".join(
            _cell(((cell(m, contrast, size) or {}).get("structures", {}).get(name) or {})
                  .get("mean")) for m in methods) + " |")
    lines.append("| **mean (11)** | " + " | ".join(
        f"**{_cell((cell(m, contrast, size) or {}).get('mean'))}**" for m in methods) + " |")
    lines.append("| seconds per target | " + " | ".join(
        str((cell(m, contrast, size) or {}).get("seconds_per_target", "n/a")) for m in methods)
        + " |")
    lines += ["", "## Mean of the 11 structures, every contrast and L", "",
              "| contrast | L | " + " | ".join(methods) + " |", "|---" * (len(methods) + 2) + "|"]
    for c in contrasts:
        for L in sizes:
            lines.append(f"| {CONTRAST_TITLES.get(c, c)} | {L} | " + " | ".join(
                _cell((cell(m, c, L) or {}).get("mean")) for m in methods) + " |")
    jlf_run = next((r for r in runs if "jlf" in r["config"]["methods"]), runs[0])
    jlf = jlf_run["config"]["jlf"]
    jlf_note = ("jlf: SyN of each native context to "
                f"the native target and joint label fusion at {jlf['voxel_mm']} mm (block "
                "means/majority, cropped to the head + "
                f"{jlf['margin_mm']} mm), nearest back to 1 mm; {jlf['transform']} from the "
                f"maps' template affines, SyN iterations {jlf['reg_iterations']}, search radius "
                f"{jlf['r_search']}, patch radius {jlf['rad']}. "
                if any(m.startswith("jlf") for m in methods) else "")
    lines += ["", "Notes: model and majority run on the model grid and are mapped back with the "
              "inverse transform (linear, > 0.5); grid-truth is the target's own grid label map "
              "mapped back the same way (the grid's ceiling). " + jlf_note + "Seconds per target "
              f"exclude image synthesis; torch threads {info['threads']['torch']}, ITK threads "
              f"{jlf_run['threads']['itk']}.", ""]
    lines += [f"Command: `{r['command']}`" for r in runs] + [""]
    return "\n".join(lines)


def write_outputs(out: Path, rows: List[dict], summary: dict, info: dict) -> Dict[str, Path]:
    from ..workflows.niftiio import write_text_atomic

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "dice": "n/a" if not np.isfinite(row["dice"])
                         else f"{row['dice']:.4f}"})
    paths = {"tsv": out / "heldout.tsv", "json": out / "heldout.json", "md": out / "heldout.md",
             "png": out / "heldout.png"}
    write_text_atomic(paths["tsv"], buffer.getvalue())
    write_text_atomic(paths["json"], json.dumps({**info, "summary": summary}, indent=1) + "\n")
    write_text_atomic(paths["md"], markdown(summary, info))
    plot(summary, info, paths["png"])
    return paths


def table_axes(summary: dict, info: dict) -> tuple:
    """``(contrasts, sizes)`` that the summary holds, in the run's order and ascending."""
    sizes = sorted({int(L) for m in summary.values() for c in m.values() for L in c})
    contrasts = [c for c in info["config"]["contrasts"] if any(c in m for m in summary.values())]
    return contrasts, sizes


def main_cell(summary: dict, info: dict) -> tuple:
    """The (contrast, L) of the main table: T1-like (else the first contrast) at L = 8 (else
    the largest L)."""
    contrasts, sizes = table_axes(summary, info)
    return ("t1" if "t1" in contrasts else contrasts[0]), (8 if 8 in sizes else max(sizes))


def plot(summary: dict, info: dict, path: Path) -> Path:
    """Dice per structure (and the mean of the 11), one bar per method, at the main table's
    contrast and L; written whole or not at all."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..model.fileio import write_atomic

    contrast, size = main_cell(summary, info)
    names = list(STRUCTURE_NAMES) + ["mean (11)"]
    methods = [m for m in summary if str(size) in summary[m].get(contrast, {})]
    figure, ax = plt.subplots(figsize=(11, 3.8))
    width = 0.8 / max(1, len(methods))
    for index, method in enumerate(methods):
        cell = summary[method][contrast][str(size)]
        values = [(cell["structures"].get(n) or {}).get("mean") for n in STRUCTURE_NAMES]
        values.append(cell["mean"])
        ax.bar([i + (index - (len(methods) - 1) / 2) * width for i in range(len(names))],
               [np.nan if v is None else v for v in values], width, label=method,
               color=f"C{index % 10}")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace("Cerebral-", "").replace("-", " ") for n in names],
                       rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.12)  # headroom for the legend above the bars
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("Dice (native 1 mm)")
    ax.set_title(f"Held-out targets {', '.join(info['config']['targets'])}: "
                 f"{CONTRAST_TITLES.get(contrast, contrast)}, L = {size}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(methods), loc="upper center", frameon=False)
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
    return path


def read_run(folder: Path):
    """``(rows, info)`` of an earlier run's ``heldout.tsv`` and ``heldout.json``."""
    from ..workflows.errors import MissingInputError

    paths = [Path(folder) / "heldout.tsv", Path(folder) / "heldout.json"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingInputError(f"{', '.join(missing)}: not found; --merge takes output folders "
                                "of neuroverse3d-eval-heldout")
    with open(paths[0], newline="") as handle:
        rows = [{**row, "L": int(row["L"]), "seconds": float(row["seconds"]),
                 "dice": float("nan") if row["dice"] == "n/a" else float(row["dice"])}
                for row in csv.DictReader(handle, delimiter="\t")]
    info = json.loads(paths[1].read_text())
    info.pop("summary", None)
    return rows, info


def merge_runs(folders) -> tuple:
    """Runs on the same targets, contexts and seed as one table: ``(rows, info)``.

    A method name found in several runs (``majority`` and ``grid-truth`` of a 3 mm and a 2 mm
    grid) takes its grid as a suffix (``majority@3mm``). Raises UsageError when the runs drew
    different targets, contexts or seeds (their figures would not be comparable)."""
    from ..workflows.errors import UsageError

    runs = [read_run(f) for f in folders]
    first = runs[0][1]["config"]
    for folder, (_, info) in zip(folders, runs):
        for key in ("targets", "contexts", "seed"):
            if info["config"][key] != first[key]:
                raise UsageError(f"{folder}: its {key} differ from {folders[0]}'s; merge runs "
                                 "of the same targets, contexts and seed")
    owners: Dict[str, set] = {}
    for index, (rows, _) in enumerate(runs):
        for row in rows:
            owners.setdefault(row["method"], set()).add(index)
    merged = []
    for index, (rows, info) in enumerate(runs):
        mm = f"{float(info['grid']['voxel_size_mm']):g}mm"
        merged += [{**row, "method": row["method"] + (f"@{mm}" if len(owners[row["method"]]) > 1
                                                      else "")} for row in rows]
    infos = [info for _, info in runs]
    config = {**first, "contrasts": list(dict.fromkeys(c for i in infos
                                                       for c in i["config"]["contrasts"])),
              "methods": list(dict.fromkeys(m for i in infos for m in i["config"]["methods"]))}
    return merged, {**infos[0], "config": config, "runs": infos,
                    "command": "; ".join(i["command"] for i in infos)}

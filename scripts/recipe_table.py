"""Markdown table of training recipes from their runs and held-out evaluations.

    python scripts/recipe_table.py --context-size 8 \\
        NAME=RUN_DIR:EVAL_DIR [NAME=RUN_DIR:EVAL_DIR ...] > evaluation/recipe_ablations/table.md

For each recipe: optimizer steps and training minutes from ``RUN_DIR/log.csv`` (it logs one
step in ``log_every`` with its ``seconds``: minutes = mean logged step time x steps, plus the
validations, whose rows add their time), then per dataset of
``EVAL_DIR/eval.json`` the model's mean Dice per structure at the context size asked for (with
the majority vote of the context labels in brackets), the mean over the subcortical structures
other than the putamen, and the PSNR gain in dB over the degraded input per generation task.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

TISSUE = ("brain", "CSF", "GM", "WM")
HELD_OUT = "Putamen"  # left out of training: reported apart from the other subcortical structures


def run_facts(run: Path) -> dict:
    """Steps and wall-clock minutes of a training run folder."""
    with open(run / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    steps = int(rows[-1]["step"]) if rows else 0
    plain = [float(r["seconds"]) for r in rows if not r["val_loss"]]
    step_seconds = sum(plain) / len(plain) if plain else 0.0
    validation = sum(float(r["seconds"]) - step_seconds for r in rows if r["val_loss"])
    return {"steps": steps, "minutes": (step_seconds * steps + validation) / 60}


def eval_facts(eval_dir: Path, context_size: int) -> dict:
    """{dataset: {column: text}} from an ``eval.json`` at one context size."""
    results = json.loads((eval_dir / "eval.json").read_text())["results"]
    means = {(r["dataset"], r["task"], r["structure"], r["method"]): r["mean"]
             for r in results if r["context_size"] == context_size}
    table: dict = {}
    for (dataset, task, structure, method), value in means.items():
        if method != "model":
            continue
        cells = table.setdefault(dataset, {})
        if task == "segmentation":
            vote = means.get((dataset, task, structure, "majority-vote"))
            cells[structure] = (value, vote)
        else:
            cells[task] = value - means.get((dataset, task, structure, "degraded-input"), value)
    for cells in table.values():
        subcortical = [(v, b) for s, (v, b) in ((s, c) for s, c in cells.items()
                                                 if isinstance(c, tuple))
                       if s not in TISSUE and s != HELD_OUT]
        if subcortical:
            cells["subcortical"] = (sum(v for v, _ in subcortical) / len(subcortical),
                                    sum(b for _, b in subcortical) / len(subcortical))
    return table


def _dice(cell) -> str:
    if cell is None:
        return ""
    value, vote = cell
    return f"{value:.3f} ({vote:.3f})" if vote is not None else f"{value:.3f}"


def markdown(recipes, context_size: int) -> str:
    generation = sorted({k for _, _, table in recipes for cells in table.values() for k, v in cells.items()
                         if not isinstance(v, tuple)})
    head = (["recipe", "steps", "minutes", "dataset", *TISSUE, "subcortical mean", HELD_OUT]
            + [f"{task} (dB gain)" for task in generation])
    lines = [f"Held-out Dice at L = {context_size}, model (majority vote of the context labels); "
             "generation: PSNR gain over the degraded input.", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, facts, table in recipes:
        for dataset, cells in sorted(table.items()):
            row = [name, str(facts["steps"]), f"{facts['minutes']:.0f}", dataset]
            row += [_dice(cells.get(s)) for s in (*TISSUE, "subcortical", HELD_OUT)]
            row += [f"{cells[t]:+.1f}" if t in cells else "" for t in generation]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recipes", nargs="+", metavar="NAME=RUN_DIR:EVAL_DIR")
    parser.add_argument("--context-size", type=int, default=8)
    args = parser.parse_args(argv)
    recipes = []
    for item in args.recipes:
        name, _, dirs = item.partition("=")
        run, _, eval_dir = dirs.partition(":")
        recipes.append((name, run_facts(Path(run)), eval_facts(Path(eval_dir), args.context_size)))
    sys.stdout.write(markdown(recipes, args.context_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())

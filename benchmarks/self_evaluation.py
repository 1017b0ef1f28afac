"""Does the leave-one-out self-evaluation predict the Dice on people it never saw?

On real anatomy (the label maps of ``neuroverse3d-make-labelmap-data``, on the model grid):
the pool is maps 01-16, the held-out targets are maps 17-20. One T1-like contrast per seed
(SynthSeg's T1 priors, :func:`..evaluation.heldout_methods.draw_contrast`) makes every image.
For each context size L and selection, the self-evaluation segments each pool map from the
others (:func:`model.self_evaluation.leave_one_out`); the held-out targets are segmented from
the pool with the same L and selection. Reported per structure: the expected Dice (mean of the
leave-one-out cases), the Dice obtained on the held-out targets, their difference, and the
mean absolute difference over structures (target: within 0.05). Dice on the model grid (the
space the self-evaluation measures in).

    python benchmarks/self_evaluation.py --labelmaps data/labelmaps-3mm \\
        --native SynthSeg/data/training_label_maps --sizes 4 8 --seeds 0 1 \\
        --out benchmarks/results/self_evaluation

Writes ``<out>.json`` and ``<out>.md``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from labelmap_data import common_arguments, images_of, labels_of, write_result


def measure(args) -> dict:
    from neuroverse_bids.evaluation.heldout_data import LabelmapSet
    from neuroverse_bids.evaluation.heldout_methods import draw_contrast, structures
    from neuroverse_bids.model import load_checkpoint
    from neuroverse_bids.model.ensemble import predict_from_pool
    from neuroverse_bids.model.predictor import Predictor
    from neuroverse_bids.model.pretrained import resolve_model_path
    from neuroverse_bids.model.self_evaluation import dice_score, leave_one_out

    data = LabelmapSet(args.labelmaps, args.native)
    pool_ids = data.resolve([f"map-{n:02d}" for n in range(1, 17)], "pool")
    targets = data.heldout()
    named = structures()
    names, codes = list(named), list(named.values())
    predictor = Predictor(load_checkpoint(resolve_model_path(args.model)), device="cpu",
                          precision=args.precision)
    cells = []
    for seed in args.seeds:
        contrast = draw_contrast("t1", seed)
        pool = images_of(data, pool_ids, contrast, seed)
        pool_labels = labels_of(data, pool_ids, codes)
        target_images = images_of(data, targets, contrast, seed + 1000)
        target_labels = labels_of(data, targets, codes)
        for size in args.sizes:
            for selection in args.selections:
                started = time.time()
                cases = leave_one_out(predictor, pool, pool_labels, pool_ids, names, size,
                                      selection, 1, seed)
                seconds = time.time() - started
                held = {name: [] for name in names}
                for t, target in enumerate(targets):
                    result, _, _ = predict_from_pool(predictor, target_images[t], pool,
                                                     pool_labels, pool_ids, size, 1, selection,
                                                     seed=seed)
                    for k, name in enumerate(names):
                        held[name].append(dice_score(result.mean[k], target_labels[k, t]))
                for name in names:
                    expected = statistics.mean(c.dice for c in cases if c.structure == name)
                    cells.append({"seed": seed, "L": size, "selection": selection,
                                  "structure": name, "expected_dice": round(expected, 4),
                                  "heldout_dice": round(statistics.mean(held[name]), 4),
                                  "seconds_self_evaluation": round(seconds, 1)})
                print(f"seed {seed} L {size} {selection}: self-evaluation {seconds:.0f} s, "
                      f"mean |expected - held-out| "
                      f"{_mae([c for c in cells if (c['seed'], c['L'], c['selection']) == (seed, size, selection)]):.3f}",
                      flush=True)
    return {"cells": cells, "pool": pool_ids, "targets": targets,
            "model": str(resolve_model_path(args.model)), "precision": args.precision}


def _mae(cells) -> float:
    return statistics.mean(abs(c["expected_dice"] - c["heldout_dice"]) for c in cells)


def markdown(result: dict) -> str:
    cells = result["cells"]
    lines = ["# Self-evaluation vs held-out Dice", "",
             f"Pool {result['pool'][0]}..{result['pool'][-1]} ({len(result['pool'])} maps), "
             f"held-out {', '.join(result['targets'])}; model `{Path(result['model']).name}` "
             f"({result['precision']}); T1-like contrast; Dice on the model grid.", ""]
    groups = sorted({(c["L"], c["selection"]) for c in cells})
    for size, selection in groups:
        mine = [c for c in cells if (c["L"], c["selection"]) == (size, selection)]
        lines += [f"## L = {size}, {selection} (mean over seeds)", "",
                  "| structure | expected (self-evaluation) | held-out | difference |",
                  "| --- | --- | --- | --- |"]
        for name in dict.fromkeys(c["structure"] for c in mine):
            rows = [c for c in mine if c["structure"] == name]
            e = statistics.mean(c["expected_dice"] for c in rows)
            h = statistics.mean(c["heldout_dice"] for c in rows)
            lines.append(f"| {name} | {e:.3f} | {h:.3f} | {e - h:+.3f} |")
        lines += ["", f"Mean absolute difference over structures and seeds: **{_mae(mine):.3f}** "
                      "(target: 0.05).", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser, "benchmarks/results/self_evaluation")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8])
    parser.add_argument("--selections", nargs="+", default=["random"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    result = measure(args)
    write_result(args.out, result, markdown(result))


if __name__ == "__main__":
    main()

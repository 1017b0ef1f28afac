"""Which ensemble helps: K members drawn from the top of the similarity ranking, or today's?

On real anatomy (grid label maps of ``neuroverse3d-make-labelmap-data``; pool maps 01-16,
held-out targets 17-20, one T1-like contrast per seed), every registered selection strategy
given on the command line segments each target with K = 1 and each K asked for, at each L.
Reported: mean Dice over the eleven structures and the targets, per strategy, K and L, and
each ensemble's gain over the same strategy's single draw and over ``similar`` K = 1.

    python benchmarks/ensemble_selection.py --labelmaps data/labelmaps-3mm \\
        --native SynthSeg/data/training_label_maps --sizes 4 8 --members 4 --seeds 0 1 2

Writes ``benchmarks/results/ensemble_selection.{json,md}``.
"""
from __future__ import annotations

import argparse
import statistics

from labelmap_data import common_arguments, images_of, labels_of, write_result


def measure(args) -> list:
    from neuroverse_bids.evaluation.heldout_data import LabelmapSet
    from neuroverse_bids.evaluation.heldout_methods import draw_contrast, structures
    from neuroverse_bids.model import load_checkpoint
    from neuroverse_bids.model.ensemble import predict_from_pool
    from neuroverse_bids.model.predictor import Predictor
    from neuroverse_bids.model.pretrained import resolve_model_path
    from neuroverse_bids.model.self_evaluation import dice_score

    data = LabelmapSet(args.labelmaps, args.native)
    pool_ids = data.resolve([f"map-{n:02d}" for n in range(1, 17)], "pool")
    targets = data.heldout()
    codes = list(structures().values())
    predictor = Predictor(load_checkpoint(resolve_model_path(args.model)), device="cpu",
                          precision=args.precision)
    rows = []
    for seed in args.seeds:
        contrast = draw_contrast("t1", seed)
        pool, pool_labels = images_of(data, pool_ids, contrast, seed), labels_of(data, pool_ids, codes)
        target_images = images_of(data, targets, contrast, seed + 1000)
        target_labels = labels_of(data, targets, codes)
        for size in args.sizes:
            for selection in args.selections:
                for members in sorted({1, *args.members}):
                    scores = []
                    for t in range(len(targets)):
                        result, _, _ = predict_from_pool(
                            predictor, target_images[t], pool, pool_labels, pool_ids, size,
                            members, selection, seed=seed)
                        scores += [dice_score(result.mean[k], target_labels[k, t])
                                   for k in range(len(codes))]
                    rows.append({"seed": seed, "L": size, "selection": selection, "K": members,
                                 "mean_dice": round(statistics.mean(scores), 4)})
                    print(rows[-1], flush=True)
    return rows


def markdown(rows: list, args) -> str:
    def mean(**key):
        values = [r["mean_dice"] for r in rows if all(r[k] == v for k, v in key.items())]
        return statistics.mean(values) if values else float("nan")

    lines = ["# Ensembles from the top of the ranking", "",
             f"Held-out label maps 17-20, pool 01-16, T1-like, seeds {args.seeds}; mean Dice "
             "over 11 structures on the model grid.", "",
             "| L | selection | K | mean Dice | gain over its K = 1 | gain over similar K = 1 |",
             "| --- | --- | --- | --- | --- | --- |"]
    for size in args.sizes:
        base = mean(L=size, selection="similar", K=1)
        for selection in args.selections:
            single = mean(L=size, selection=selection, K=1)
            for members in sorted({1, *args.members}):
                value = mean(L=size, selection=selection, K=members)
                lines.append(f"| {size} | {selection} | {members} | {value:.3f} | "
                             f"{value - single:+.3f} | {value - base:+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser, "benchmarks/results/ensemble_selection")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--members", type=int, nargs="+", default=[4])
    parser.add_argument("--selections", nargs="+", default=["random", "similar", "similar-top"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    rows = measure(args)
    write_result(args.out, rows, markdown(rows, args))


if __name__ == "__main__":
    main()

"""Per-subject quality estimate, probability calibration and label suggestions, measured on
real anatomy it never saw (model/quality.py).

Data: the twenty grid label maps of ``neuroverse3d-make-labelmap-data`` (the bundled model
never trained on them), one T1-like contrast per seed. Everything is on the model grid.

* **Quality and calibration** (5 folds of 4 maps): every map is segmented from the other
  nineteen (leave-one-out, context size L, the app's selection). Per fold, the quality model
  and the calibration are fitted on the other sixteen maps' cases, exactly as the group level
  fits them on a labelled pool, and applied to the fold's four maps. Reported: within-structure
  Spearman of predicted vs obtained Dice over the 20 maps (mean over structures and seeds),
  mean absolute error of the predicted Dice (and that of the self-evaluation's mean alone),
  and the ECE (10 bins; near: within 2 voxels of the structure, all: the grid) of the
  probability maps before and after calibration.
* **Which subject to label next** (``--rounds`` draws per seed): 4 labelled maps at random;
  each strategy adds ``--add`` maps: ``suggest`` (:func:`model.quality.rank_suggestions`:
  predicted quality from a quality model fitted on the 4 labelled maps' leave-one-out cases,
  and NCC to the nearest labelled map), ``coverage`` (the same, also given the NCC between the
  unlabelled maps: a pick counts for every unlabelled map it resembles), ``random``, and
  ``farthest`` (distance alone). Score:
  mean Dice over the eleven structures of the maps no strategy picked, segmented with each
  strategy's pool.

    python benchmarks/quality_estimate.py --labelmaps data/labelmaps-3mm \\
        --native SynthSeg/data/training_label_maps --seeds 0 1 --rounds 3

Writes ``benchmarks/results/quality_estimate.{json,md}``.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

from labelmap_data import common_arguments, images_of, labels_of, write_result


def _setup(args):
    from neuroverse_bids.evaluation.heldout_data import LabelmapSet
    from neuroverse_bids.evaluation.heldout_methods import structures
    from neuroverse_bids.model import load_checkpoint
    from neuroverse_bids.model.predictor import Predictor
    from neuroverse_bids.model.pretrained import resolve_model_path

    data = LabelmapSet(args.labelmaps, args.native)
    ids = data.resolve([f"map-{n:02d}" for n in range(1, 21)], "maps")
    predictor = Predictor(load_checkpoint(resolve_model_path(args.model)), device="cpu",
                          precision=args.precision)
    return data, ids, structures(), predictor


def quality_and_calibration(args, predictor, images, labels, ids, names) -> dict:
    """One seed's folds -> per-map predicted/obtained Dice and the binned reliability."""
    from neuroverse_bids.evaluation.calibration import Reliability
    from neuroverse_bids.model.quality import ProbabilityCalibration, QualityModel
    from neuroverse_bids.model.self_evaluation import leave_one_out

    maps = {}
    cases = leave_one_out(predictor, images, labels, ids, names, args.size, args.selection,
                          args.members, args.seed_now,
                          on_result=lambda i, result: maps.__setitem__(i, result.mean.clone()))
    rows, before, after = [], Reliability(), Reliability()
    for fold in range(0, len(ids), 4):
        held = set(ids[fold:fold + 4])
        fitted = [c for c in cases if c.subject not in held]
        model = QualityModel.fit(fitted)
        calibration = ProbabilityCalibration()
        for i, subject in enumerate(ids):
            if subject not in held:
                for k, name in enumerate(names):
                    calibration.add(name, maps[i][k], labels[k, i])
        calibration.fit()
        for case in cases:
            if case.subject in held:
                i, k = ids.index(case.subject), names.index(case.structure)
                rows.append({"subject": case.subject, "structure": case.structure,
                             "dice": round(case.dice, 4), "expected": round(
                                 model.expected[case.structure], 4),
                             **{key: round(v, 4) for key, v in
                                model.predict(case.structure, case.signals).items()},
                             **case.signals})
                before.add(maps[i][k], labels[k, i])
                after.add(calibration.apply(case.structure, maps[i][k]), labels[k, i])
    return {"rows": rows, "ece_before": before.summary(), "ece_after": after.summary()}


def suggestion_round(args, predictor, images, labels, ids, names, rng) -> dict:
    """One simulated labelling round -> mean Dice on the common rest, per strategy."""
    from neuroverse_bids.model.ensemble import predict_from_pool
    from neuroverse_bids.model.quality import QualityModel, rank_suggestions
    from neuroverse_bids.model.quality_signals import SignalInputs, compute_signals
    from neuroverse_bids.model.selection import ncc
    from neuroverse_bids.model.self_evaluation import dice_score, leave_one_out

    def predict(target, pool):
        index = [ids.index(s) for s in pool]
        return predict_from_pool(predictor, images[ids.index(target)], images[index],
                                 labels[:, index], pool, min(args.size, len(pool)), 1,
                                 args.selection, seed=args.seed_now)

    labelled = rng.sample(ids, args.start)
    candidates = [s for s in ids if s not in labelled]
    index = [ids.index(s) for s in labelled]
    model = QualityModel.fit(leave_one_out(predictor, images[index], labels[:, index], labelled,
                                           names, min(args.size, len(labelled) - 1),
                                           args.selection, 1, args.seed_now))
    scored = {}
    for subject in candidates:
        result, sets, _ = predict(subject, labelled)
        used = [ids.index(s) for s in sets[0]]
        signals = compute_signals(SignalInputs(result, images[ids.index(subject)],
                                               images[used], labels[:, used]), names)
        dice = statistics.mean(model.predict(n, signals[n])["predicted_dice"] for n in names)
        nearest = max(ncc(images[ids.index(subject)], images[i]) for i in index)
        scored[subject] = (dice, nearest)
    pairs = {(a, b): ncc(images[ids.index(a)], images[ids.index(b)])
             for n, a in enumerate(candidates) for b in candidates[n + 1:]}
    picks = {"suggest": [r["subject"] for r in rank_suggestions(scored, args.add)],
             "coverage": [r["subject"] for r in rank_suggestions(scored, args.add, pairs)],
             "random": rng.sample(candidates, args.add),
             "farthest": sorted(candidates, key=lambda s: (scored[s][1], s))[:args.add]}
    rest = [s for s in candidates if not any(s in p for p in picks.values())]
    scores = {}
    for strategy, added in picks.items():
        values = []
        for subject in rest:
            result, _, _ = predict(subject, labelled + added)
            values += [dice_score(result.mean[k], labels[k, ids.index(subject)])
                       for k in range(len(names))]
        scores[strategy] = round(statistics.mean(values), 4)
    return {"labelled": labelled, "picks": picks, "rest": rest, "mean_dice": scores}


def measure(args, save=lambda result: None) -> dict:
    """Every seed's folds and rounds; ``save(result)`` after each (a long run keeps what it
    measured)."""
    from neuroverse_bids.evaluation.heldout_methods import draw_contrast

    data, ids, named, predictor = _setup(args)
    names, codes = list(named), list(named.values())
    labels = labels_of(data, ids, codes)
    result = {"quality": [], "suggestions": [], "ids": ids, "args": {
        k: (str(v) if k in ("labelmaps", "native", "model", "out") else v)
        for k, v in vars(args).items()}}
    for seed in args.seeds:
        args.seed_now = seed
        images = images_of(data, ids, draw_contrast("t1", seed), seed)
        started = time.time()
        if not args.skip_quality:
            part = quality_and_calibration(args, predictor, images, labels, ids, names)
            result["quality"].append({"seed": seed, **part})
            save(result)
            print(f"seed {seed}: quality folds in {time.time() - started:.0f} s", flush=True)
        rng = random.Random(seed)
        for round_ in range(args.rounds):
            started = time.time()
            result["suggestions"].append({"seed": seed, "round": round_, **suggestion_round(
                args, predictor, images, labels, ids, names, rng)})
            save(result)
            print(f"seed {seed} round {round_}: {result['suggestions'][-1]['mean_dice']} in "
                  f"{time.time() - started:.0f} s", flush=True)
    return result


def markdown(result: dict) -> str:
    from quality_report import quality_section, suggestion_section

    args = result["args"]
    lines = ["# Quality estimate, calibration and label suggestions", "",
             f"Twenty label maps ({result['ids'][0]}..{result['ids'][-1]}) on the model grid, "
             f"T1-like, seeds {args['seeds']}; L = {args['size']}, selection "
             f"{args['selection']}, K = {args['members']}; model `{args['model'] or 'bundled'}` "
             f"({args['precision']}).", ""]
    if result["quality"]:
        lines += quality_section(result["quality"]) + [""]
    if result["suggestions"]:
        lines += suggestion_section(result["suggestions"], args)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser, "benchmarks/results/quality_estimate")
    parser.add_argument("--size", type=int, default=8, help="context size L")
    parser.add_argument("--selection", default="random")
    parser.add_argument("--members", type=int, default=1, help="ensemble K")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=3, help="labelling rounds per seed")
    parser.add_argument("--start", type=int, default=4, help="labelled maps to start from")
    parser.add_argument("--add", type=int, default=4, help="maps each strategy adds")
    parser.add_argument("--skip-quality", action="store_true",
                        help="only the label-suggestion rounds")
    args = parser.parse_args(argv)
    out = args.out
    result = measure(args, save=lambda result: write_result(out, result, markdown(result)))
    write_result(out, result, markdown(result))


if __name__ == "__main__":
    main()

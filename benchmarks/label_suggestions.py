"""Which subject to label next: does labelling the suggested subjects beat labelling random
ones? A simulation on real anatomy the model never saw (model/quality.py).

Data: the twenty grid label maps of ``neuroverse3d-make-labelmap-data``, one T1-like contrast
per seed, on the model grid. Each round (``--rounds`` per seed) starts from ``--start``
labelled maps drawn at random; each strategy adds ``--add`` maps:

* ``suggest``: :func:`model.quality.rank_suggestions`, predicted quality
  from a quality model fitted on the labelled maps' leave-one-out cases, times the distance to
  the nearest labelled map;
* ``coverage``: the same, also given the NCC between the unlabelled maps (a pick counts for
  every unlabelled map it resembles more than its nearest labelled one does);
* ``representative``: the app's ranking (:func:`model.quality.representative_picks`): greedy
  facility location on NCC, maps like many unlabelled others, unweighted by quality;
* ``random`` (the baseline) and ``farthest`` (distance alone).

Score: mean Dice over the eleven structures of the maps no strategy picked (the same maps for
every strategy), each segmented from its strategy's labelled maps (L = ``--size``).

    python benchmarks/label_suggestions.py --labelmaps data/labelmaps-3mm \\
        --native SynthSeg/data/training_label_maps --seeds 0 1 2 --rounds 1

Writes ``benchmarks/results/label_suggestions.{json,md}``.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

from labelmap_data import common_arguments, run_measured, segmentation_arguments
from quality_estimate import seeded_images, setup


def suggestion_round(args, predictor, images, labels, ids, names, rng) -> dict:
    """One simulated labelling round -> mean Dice on the common rest, per strategy."""
    from neuroverse_bids.model.ensemble import predict_from_pool
    from neuroverse_bids.model.quality import (QualityModel, rank_suggestions,
                                               representative_picks)
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
             "representative": [p for p, _, _ in representative_picks(
                 candidates, args.add, pairs, {s: v[1] for s, v in scored.items()})],
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
    """Every seed's rounds; ``save(result)`` after each."""
    data, ids, names, labels, predictor, record = setup(args)
    result = {"suggestions": [], "ids": ids, "args": record}
    for seed, images in seeded_images(args, data, ids):
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
    from quality_report import suggestion_section

    args = result["args"]
    return "\n".join([
        "# Which subject to label next", "",
        f"Twenty label maps ({result['ids'][0]}..{result['ids'][-1]}) on the model grid, "
        f"T1-like, seeds {args['seeds']}; L = {args['size']}, selection {args['selection']}; "
        f"model `{args['model'] or 'bundled'}` ({args['precision']}).", "",
        *suggestion_section(result["suggestions"], args)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser, "benchmarks/results/label_suggestions")
    segmentation_arguments(parser)
    parser.add_argument("--rounds", type=int, default=1, help="labelling rounds per seed")
    parser.add_argument("--start", type=int, default=4, help="labelled maps to start from")
    parser.add_argument("--add", type=int, default=4, help="maps each strategy adds")
    run_measured(parser.parse_args(argv), measure, markdown)


if __name__ == "__main__":
    main()

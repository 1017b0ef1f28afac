"""Per-subject quality estimate and probability calibration, measured on real anatomy the
model never saw (model/quality.py).

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

The label-suggestion simulation is ``label_suggestions.py``.

    python benchmarks/quality_estimate.py --labelmaps data/labelmaps-3mm \\
        --native SynthSeg/data/training_label_maps --seeds 0 1 2

Writes ``benchmarks/results/quality_estimate.{json,md}``.
"""
from __future__ import annotations

import argparse
import statistics
import time

from labelmap_data import (common_arguments, images_of, labels_of, run_measured,
                           segmentation_arguments)


def setup(args):
    """-> (label-map set, map ids, structure names, labels ``[K,20,...]``, predictor, the
    result's ``args`` record)."""
    from neuroverse_bids.evaluation.heldout_data import LabelmapSet
    from neuroverse_bids.evaluation.heldout_methods import structures
    from neuroverse_bids.model import load_checkpoint
    from neuroverse_bids.model.predictor import Predictor
    from neuroverse_bids.model.pretrained import resolve_model_path

    data = LabelmapSet(args.labelmaps, args.native)
    ids = data.resolve([f"map-{n:02d}" for n in range(1, 21)], "maps")
    predictor = Predictor(load_checkpoint(resolve_model_path(args.model)), device="cpu",
                          precision=args.precision)
    named = structures()
    record = {k: (str(v) if k in ("labelmaps", "native", "model", "out") else v)
              for k, v in vars(args).items()}
    return data, ids, list(named), labels_of(data, ids, list(named.values())), predictor, record


def seeded_images(args, data, ids):
    """Per seed of ``args.seeds`` (also set as ``args.seed_now``): the seed and the twenty
    images in that seed's T1-like contrast."""
    from neuroverse_bids.evaluation.heldout_methods import draw_contrast

    for seed in args.seeds:
        args.seed_now = seed
        yield seed, images_of(data, ids, draw_contrast("t1", seed), seed)


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


def measure(args, save=lambda result: None) -> dict:
    """Every seed's folds; ``save(result)`` after each (a long run keeps what it measured)."""
    data, ids, names, labels, predictor, record = setup(args)
    result = {"quality": [], "ids": ids, "args": record}
    for seed, images in seeded_images(args, data, ids):
        started = time.time()
        part = quality_and_calibration(args, predictor, images, labels, ids, names)
        result["quality"].append({"seed": seed, **part})
        save(result)
        print(f"seed {seed}: quality folds in {time.time() - started:.0f} s", flush=True)
    return result


def markdown(result: dict) -> str:
    from quality_report import quality_section

    args = result["args"]
    lines = ["# Quality estimate and calibration", "",
             f"Twenty label maps ({result['ids'][0]}..{result['ids'][-1]}) on the model grid, "
             f"T1-like, seeds {args['seeds']}; L = {args['size']}, selection "
             f"{args['selection']}, K = {args['members']}; model `{args['model'] or 'bundled'}` "
             f"({args['precision']}).", ""]
    return "\n".join(lines + quality_section(result["quality"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_arguments(parser, "benchmarks/results/quality_estimate")
    segmentation_arguments(parser)
    parser.add_argument("--members", type=int, default=1, help="ensemble K")
    run_measured(parser.parse_args(argv), measure, markdown)


if __name__ == "__main__":
    main()

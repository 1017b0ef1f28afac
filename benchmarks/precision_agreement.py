"""Agreement of bfloat16 with float32 on a trained model: Dice of masks, PSNR of images.

Not a test (``tests/test_precision_agreement.py`` runs :func:`measure` on a small sample).
For every dataset of a manifest on the model's grid (e.g. held-out subjects from
``neuroverse3d-make-training-data --seed 1000``), the first ``--targets`` subjects are targets
and the next L subjects their context set. Segmentation: all named structures of the dataset
(``structure_groups``) in one call per precision; Dice of the bfloat16 mask vs the float32 mask
(both thresholded at 0.5). Generation tasks: PSNR of the bfloat16 output vs the float32 output
(both clipped to [0, 1], the range every output is read in). Writes
``<out>/precision_agreement_<tag>.json`` and ``.md``. With ``--record``, the worst figures are
also written into the model file's metadata, where ``Predictor``'s ``auto`` precision reads them
(bfloat16 only where masks keep Dice >= 0.99 and images PSNR >= 45 dB).

    python benchmarks/precision_agreement.py data/heldout/manifest.json        # bundled model
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Sequence

import torch

TASKS = ("segmentation", "gaussian-noise", "inpainting", "bias-field", "super-resolution")


def measure(model_path: Path, manifest_path: Path, contexts: int = 8, targets: int = 2,
            tasks: Sequence[str] = TASKS, seed: int = 0) -> List[dict]:
    """One row per (dataset, task, structure, target): ``metric`` dice or psnr, ``value``."""
    from neuroverse_bids.anatomy.sources import structure_groups
    from neuroverse_bids.model import load_checkpoint
    from neuroverse_bids.model.predictor import float32_and
    from neuroverse_bids.model.training.agreement import compare
    from neuroverse_bids.model.training.manifest import load_manifest
    from neuroverse_bids.model.training.sampling import VolumeLoader
    from neuroverse_bids.model.training.synthesis import SEGMENTATION, make_pair

    predictors = float32_and(load_checkpoint(model_path), "bfloat16")
    grid = predictors["float32"].metadata["grid"]["shape"]
    manifest = load_manifest(manifest_path)
    load = VolumeLoader(manifest, grid)
    rows = []
    for dataset in manifest.datasets:
        subjects = dataset.subjects
        if len(subjects) < targets + contexts:
            raise ValueError(f"{dataset.name}: {len(subjects)} subjects, need {targets + contexts}")
        for index, target in enumerate(subjects[:targets]):
            context = subjects[targets:targets + contexts]
            for task in [t for t in tasks if t in dataset.supported_tasks()]:
                if task == SEGMENTATION:
                    named = structure_groups(torch.unique(load(target.label, "label")).tolist())
                    values = [torch.tensor(v, dtype=torch.int16) for v in named.values()]
                    labels = torch.stack([torch.stack([torch.isin(load(s.label, "label"), v)
                                                       .float() for s in context])
                                          for v in values])  # [K, L, D, H, W]
                    images = torch.stack([load(s.image) for s in context])
                    source = load(target.image)
                else:
                    generator = torch.Generator().manual_seed(seed * 1000 + index)
                    pairs = [make_pair(task, {"image": load(s.image)}, generator)
                             for s in [target, *context]]
                    source = pairs[0][0]
                    images = torch.stack([p[0] for p in pairs[1:]])
                    labels = torch.stack([p[1] for p in pairs[1:]])[None]
                    named = {"n/a": None}
                out = {p: predictor.predict(source, images, labels)
                       for p, predictor in predictors.items()}
                for k, name in enumerate(named):
                    metric, value = compare(task, out["bfloat16"][k], out["float32"][k])
                    rows.append({"dataset": dataset.name, "task": task, "structure": name,
                                 "target": target.id, "metric": metric, "value": value})
    return rows


def summary(rows: List[dict]) -> List[dict]:
    """Per (dataset, task, structure): the worst value, the mean, and how many values."""
    groups = {}
    for row in rows:
        key = (row["dataset"], row["task"], row["structure"], row["metric"])
        groups.setdefault(key, []).append(row["value"])
    return [{"dataset": d, "task": t, "structure": s, "metric": m, "min": min(v),
             "mean": sum(v) / len(v), "n": len(v)} for (d, t, s, m), v in groups.items()]


def main(argv=None) -> int:
    from _report import RESULTS, machine, write_report  # beside this script (tests load this
    # file by path, for measure() only, without the benchmarks folder on sys.path)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--contexts", type=int, default=8)
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--tag", default="default_model")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--record", action="store_true",
                        help="write the worst figures into the model file's metadata "
                             "(precision_agreement.bfloat16; tensors unchanged)")
    args = parser.parse_args(argv)
    from neuroverse_bids.model.pretrained import default_model_path

    model = args.model or default_model_path()
    rows = measure(model, args.manifest, args.contexts, args.targets, args.tasks)
    table = summary(rows)
    lines = ["| dataset | task | structure | metric | worst | mean | n |", "|" + " --- |" * 7]
    lines += [f"| {r['dataset']} | {r['task']} | {r['structure']} | {r['metric']} | "
              f"{r['min']:.4f} | {r['mean']:.4f} | {r['n']} |" for r in table]
    text = (f"# bfloat16 vs float32 on `{model.name}`\n\nCommand: `python "
            f"benchmarks/precision_agreement.py {' '.join(sys.argv[1:])}`\n\nDice: bfloat16 "
            f"mask vs float32 mask; PSNR (dB): bfloat16 output vs float32 output.\n\n"
            + "\n".join(lines) + "\n")
    write_report(args.out, f"precision_agreement_{args.tag}",
                 {"machine": machine(), "argv": sys.argv[1:], "model": model.name,
                  "rows": rows, "summary": table}, text)
    print(text)
    if args.record:
        from neuroverse_bids.model.checkpoint import record_precision_agreement
        from neuroverse_bids.model.training.agreement import agreement_record

        record = agreement_record(
            ((row["metric"], row["value"]) for row in rows),
            f"{args.manifest.parent.name}/{args.manifest.name}: {args.targets} targets per "
            f"dataset, {args.contexts} contexts", "benchmarks/precision_agreement.py")
        record_precision_agreement(model, "bfloat16", record)
        print(f"recorded in {model}: {record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``neuroverse3d-eval``: the paper's evaluation protocol on the model grid.

For every dataset of a manifest (volumes already on the model grid, e.g. from
``neuroverse3d-make-training-data``): the subjects are split 8:2 into a context pool and test
subjects (seeded); for every task, context size L (default 1 2 4 8 16; sizes larger than the
pool are skipped and reported) and test subject, ``--draws`` random context sets of L pool
subjects are drawn (the same sets for every task). Segmentation: one Predictor call per draw
segments every structure (``structures.json``: ``{dataset or "*": {name: [label values]}}``,
default one structure per label value); Dice vs the truth, with the voxel-wise majority vote of
the context labels (ties count as foreground) as the baseline. Generation tasks (e.g.
``gaussian-noise``, ``inpainting``): pairs are made with the training code's ``make_pair``;
PSNR vs the clean image, with the untouched degraded input as the baseline.

Outputs in OUT: ``eval.tsv`` (one row per test subject, draw, structure, L and method, with the
context subjects used), ``eval.json`` (mean +- std per dataset/task/structure/L/method, the
configuration, the splits, the model's provenance, timings; non-finite values as null) and
``eval.png`` (metric vs context size, model solid, baseline dashed).

Exit codes: 0 success, 64 usage error, 65 bad data or model, 66 missing input, 73 cannot write.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from . import __version__
from .cli.parser import _ExitCode64Parser, _positive_int
from .errors import EXIT_OK, run_with_exit_codes
from .evaluate_report import COLUMNS, summarise, write_outputs
from .workflows.errors import BadInputError, MissingInputError, OutputError, UsageError

CONTEXT_SIZES = (1, 2, 4, 8, 16)
DEFAULT_TASKS = ("segmentation", "gaussian-noise", "inpainting")
BASELINES = {"dice": "majority-vote", "psnr": "degraded-input"}


def draw_seed(seed: int, *key) -> int:
    """A generator seed for one (dataset, [task,] L, draw, target index) key; the last is an int."""
    from .anatomy.synth import subject_seed

    return subject_seed(seed, "/".join(str(k) for k in key[:-1]), key[-1])


def split_subjects(ids: Sequence[str], seed: int, test_fraction: float = 0.2):
    """Seeded split -> (pool ids, test ids), both in manifest order; at least one of each."""
    if len(ids) < 2:
        raise BadInputError(f"evaluation needs >= 2 subjects per dataset, got {len(ids)}")
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = min(len(ids) - 1, max(1, int(round(test_fraction * len(ids)))))
    return [ids[i] for i in sorted(order[n_test:])], [ids[i] for i in sorted(order[:n_test])]


def majority_vote(context_labels: torch.Tensor) -> torch.Tensor:
    """``[..., L, D, H, W]`` binary labels -> ``[..., D, H, W]`` float {0, 1}: at least half vote."""
    return ((context_labels > 0.5).float().mean(-4) >= 0.5).float()


def load_structures(path: Optional[Path], manifest_path: Path) -> Dict[str, Dict[str, List[int]]]:
    """``structures.json`` (given, or beside the manifest) -> {dataset or "*": {name: values}}."""
    if path is not None and not Path(path).is_file():
        raise MissingInputError(f"{path}: structures file not found")
    path = Path(path or Path(manifest_path).parent / "structures.json")
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {d: {n: [int(v) for v in vs] for n, vs in s.items()} for d, s in data.items()}
    except (ValueError, AttributeError, TypeError) as error:
        raise BadInputError(f"{path}: not a structures file ({{dataset: {{name: [values]}}}}): "
                            f"{error}") from None


def _row(dataset, task, structure, metric, size, subject, draw, method, value, context):
    return dict(zip(COLUMNS, (dataset, task, structure, metric, size, subject, draw, method,
                              float(value), ",".join(context))))


class Evaluator:
    """Runs the protocol with one :class:`Predictor`; ``rows`` collects the results."""

    def __init__(self, predictor, manifest, grid, structures=None, tasks=DEFAULT_TASKS,
                 context_sizes=CONTEXT_SIZES, draws: int = 10, seed: int = 0,
                 test_fraction: float = 0.2, max_test_subjects: Optional[int] = None, log=print):
        from .model.training.sampling import VolumeLoader

        self.predictor, self.manifest = predictor, manifest
        self.load = VolumeLoader(manifest, grid, cache_size=256)
        self.structures, self.tasks = structures or {}, list(tasks)
        self.context_sizes, self.draws, self.seed = sorted(set(context_sizes)), draws, seed
        self.test_fraction, self.max_test, self.log = test_fraction, max_test_subjects, log
        self.rows: List[dict] = []
        self.skipped: List[str] = []
        self.splits: Dict[str, dict] = {}
        self.predict_seconds: Dict[str, List[float]] = {}

    def _predict(self, task, target, images, labels):
        start = time.perf_counter()
        out = self.predictor.predict(target, images, labels, mini_context_size="auto")
        self.predict_seconds.setdefault(task, []).append(time.perf_counter() - start)
        return out

    def structures_of(self, dataset) -> Dict[str, List[int]]:
        named = self.structures.get(dataset.name, self.structures.get("*"))
        if named:
            return named
        values = torch.unique(self.load(dataset.subjects[0].label, "label")).tolist()
        return {f"label-{int(v)}": [int(v)] for v in values if v != 0}

    def _skip(self, message: str):
        self.skipped.append(message)
        self.log(f"neuroverse3d-eval: skipped {message}")

    def run(self) -> List[dict]:
        for dataset in self.manifest.datasets:
            tasks = [t for t in self.tasks if t in dataset.supported_tasks()]
            missing = [t for t in self.tasks if t not in tasks]
            if missing:
                self._skip(f"{dataset.name}: tasks {', '.join(missing)} (data missing)")
            subjects = {s.id: s for s in dataset.subjects}
            pool, test = split_subjects(list(subjects), draw_seed(self.seed, dataset.name,
                                                                  "split", 0), self.test_fraction)
            test = test[:self.max_test] if self.max_test else test
            self.splits[dataset.name] = {"pool": pool, "test": test}
            sizes = [L for L in self.context_sizes if L <= len(pool)]
            too_big = [L for L in self.context_sizes if L > len(pool)]
            if too_big:
                self._skip(f"{dataset.name}: context sizes {', '.join(map(str, too_big))} "
                           f"(larger than the pool of {len(pool)})")
            for index, target in enumerate(test):
                for size in sizes:
                    for draw in range(self.draws):
                        picks = torch.randperm(len(pool), generator=torch.Generator().manual_seed(
                            draw_seed(self.seed, dataset.name, size, draw, index)))[:size]
                        context = [subjects[pool[i]] for i in picks.tolist()]
                        for task in tasks:
                            self._episode(dataset, task, subjects[target], context, size, draw,
                                          index)
            self.log(f"neuroverse3d-eval: {dataset.name}: {len(test)} test subjects, pool "
                     f"{len(pool)}, tasks {', '.join(tasks) or 'none'}")
        return self.rows

    def _episode(self, dataset, task, target, context, size, draw, index):
        from .model.training.losses import dice, psnr
        from .model.training.synthesis import SEGMENTATION, make_pair

        ids = [s.id for s in context]
        if task == SEGMENTATION:
            named = self.structures_of(dataset)
            masks = [torch.stack([torch.isin(self.load(s.label, "label"),
                                             torch.tensor(values, dtype=torch.int16)).float()
                                  for values in named.values()]) for s in [target, *context]]
            truth, labels = masks[0], torch.stack(masks[1:], dim=1)   # [K,...], [K, L, ...]
            images = torch.stack([self.load(s.image) for s in context])
            predicted = self._predict(task, self.load(target.image), images, labels)
            vote = majority_vote(labels)
            for k, name in enumerate(named):
                for method, out in (("model", predicted[k]), ("majority-vote", vote[k])):
                    self.rows.append(_row(dataset.name, task, name, "dice", size, target.id, draw,
                                          method, dice(out, truth[k]), ids))
            return
        generator = torch.Generator().manual_seed(
            draw_seed(self.seed, dataset.name, task, size, draw, index))
        pairs = [make_pair(task, self._volumes(dataset, task, s), generator)
                 for s in [target, *context]]
        source, clean = pairs[0]
        predicted = self._predict(task, source, torch.stack([p[0] for p in pairs[1:]]),
                                  torch.stack([p[1] for p in pairs[1:]]))
        for method, out in (("model", predicted), ("degraded-input", source)):
            self.rows.append(_row(dataset.name, task, "n/a", "psnr", size, target.id, draw,
                                  method, psnr(out, clean), ids))

    def _volumes(self, dataset, task, subject):
        volumes = {"image": self.load(subject.image)}
        if task == "skull-stripping":
            volumes["brain_mask"] = self.load(subject.brain_mask, "label")
        elif task == "modality-transform":
            volumes["paired"] = self.load(subject.paired[dataset.paired_modalities()[0]])
        return volumes


def build_parser():
    from .model.training.synthesis import TASKS

    doc = __doc__.split("\n")
    parser = _ExitCode64Parser(prog="neuroverse3d-eval", description=doc[0].split(": ", 1)[1].capitalize(),
                               epilog="\n".join(doc[2:]),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"neuroverse3d {__version__}")
    parser.add_argument("manifest", type=Path, help="manifest (JSON/TSV) of the evaluation data")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to evaluate")
    parser.add_argument("--structures", type=Path,
                        help="structures JSON (default: structures.json beside the manifest)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(DEFAULT_TASKS),
                        metavar="TASK", help=f"default: {' '.join(DEFAULT_TASKS)}; choose from "
                        f"{', '.join(TASKS)}")
    parser.add_argument("--datasets", nargs="+", help="only these datasets of the manifest")
    parser.add_argument("--context-sizes", nargs="+", type=_positive_int,
                        default=list(CONTEXT_SIZES), metavar="L", help="default: 1 2 4 8 16")
    parser.add_argument("--draws", type=_positive_int, default=10,
                        help="random context draws per test subject and L (default 10)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="share of each dataset's subjects held out as targets (default 0.2)")
    parser.add_argument("--max-test-subjects", type=_positive_int,
                        help="evaluate at most this many test subjects per dataset (quick runs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of splits and draws (default 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="float32",
                        help="float32 (default), bfloat16, float16 (CUDA) or auto")
    return parser


def _check_output(out: Path):
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{out}: cannot create the output folder ({error})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: output folder is not writable")


def run(args) -> int:
    from nibabel.filebasedimages import ImageFileError

    from .model import load_checkpoint
    from .model.predictor import Predictor
    from .model.training.manifest import load_manifest

    if not 0 < args.test_fraction < 1:
        raise UsageError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    try:
        manifest = load_manifest(args.manifest)
    except FileNotFoundError as error:
        raise MissingInputError(str(error)) from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise BadInputError(f"{args.manifest}: not a usable manifest: {error}") from None
    if args.datasets:
        names = [d.name for d in manifest.datasets]
        unknown = [name for name in args.datasets if name not in names]
        if unknown:
            raise UsageError(f"datasets {', '.join(unknown)} not in {args.manifest} "
                             f"(it has {', '.join(names)})")
        manifest.datasets = [d for d in manifest.datasets if d.name in args.datasets]
    structures = load_structures(args.structures, args.manifest)
    model = load_checkpoint(args.model)
    grid = (model.metadata.get("grid") or {}).get("shape")
    if not grid or any(int(s) % model.divisor for s in grid):
        raise BadInputError(f"{args.model}: the model's grid {grid} is missing or not divisible "
                            f"by {model.divisor}")
    try:
        predictor = Predictor(model, device=args.device, precision=args.precision)
    except ValueError as error:
        raise UsageError(str(error)) from None
    _check_output(args.out)
    evaluator = Evaluator(predictor, manifest, grid, structures, args.tasks, args.context_sizes,
                          args.draws, args.seed, args.test_fraction, args.max_test_subjects)
    start = time.perf_counter()
    try:
        rows = evaluator.run()
    except (ValueError, EOFError, ImageFileError, OSError) as error:
        if isinstance(getattr(error, "exit_code", None), int):
            raise  # e.g. MemoryBudgetError (64)
        raise BadInputError(f"{args.manifest}: evaluation failed: {error}") from None
    total = time.perf_counter() - start
    if not rows:
        reason = "; ".join(evaluator.skipped) or "no test subjects"
        raise BadInputError(f"{args.manifest}: nothing to evaluate ({reason})")
    calls = [s for seconds in evaluator.predict_seconds.values() for s in seconds]
    info = {"generated_by": f"neuroverse3d-eval {__version__}",
            "manifest": str(Path(args.manifest).resolve()),
            "model": {"path": str(Path(args.model).resolve()),
                      **{k: model.metadata.get(k) for k in ("sha256", "format", "architecture",
                                                            "grid", "provenance")}},
            "config": {"tasks": args.tasks, "context_sizes": sorted(set(args.context_sizes)),
                       "draws": args.draws, "test_fraction": args.test_fraction, "seed": args.seed,
                       "max_test_subjects": args.max_test_subjects,
                       "datasets": [d.name for d in manifest.datasets], "structures": structures,
                       "device": str(predictor.device), "precision": predictor.precision,
                       "reduced_precision_error": getattr(predictor, "reduced_precision_error",
                                                          None),
                       "baselines": BASELINES},
            "splits": evaluator.splits, "skipped": evaluator.skipped,
            "timing": {"total_s": total, "predict_calls": len(calls),
                       "predict_s": sum(calls), "predict_mean_s": float(np.mean(calls)) if calls
                       else None, "predict_s_per_task": {t: sum(s) for t, s in
                                                         evaluator.predict_seconds.items()}}}
    paths = write_outputs(args.out, rows, summarise(rows), info)
    print(f"neuroverse3d-eval: {len(rows)} results in {total:.1f} s; wrote "
          f"{', '.join(str(p) for p in paths.values())}")
    return EXIT_OK


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_with_exit_codes("neuroverse3d-eval", run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

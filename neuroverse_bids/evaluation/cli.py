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

``--selection random similar`` and ``--ensemble 1 4`` add methods to the segmentation task
(``model-similar``: the L pool subjects most similar to the target by NCC, inside
``--similarity-mask`` if given; ``model-ens4``: the mean of 4 members, member k using the
k-th distinct context set, member 0 being the single draw): then also
``selection_ensemble.md`` and ``reliability.png`` (mean Dice per method and L, gains,
Spearman of the uncertainty summaries vs 1 - Dice, calibration), and ``comparison`` and
``selected`` (the chosen subjects and their scores) in ``eval.json``.

Exit codes: 0 success, 64 usage error, 65 bad data or model, 66 missing input, 73 cannot write.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..cli.options import ExitCode64Parser, positive_int
from ..errors import ExitCode, run_with_exit_codes
from ..workflows.errors import BadInputError, MissingInputError, OutputError, UsageError
from ..model.strategies import strategy_names
from .comparison import compare, markdown, plot_reliability
from .protocol import BASELINES, CONTEXT_SIZES, DEFAULT_TASKS, Evaluator, load_structures
from .report import summarise, write_outputs


def build_parser() -> argparse.ArgumentParser:
    from ..model.training import TASKS

    doc = __doc__.split("\n")
    parser = ExitCode64Parser(prog="neuroverse3d-eval", description=doc[0].split(": ", 1)[1].capitalize(),
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
    parser.add_argument("--context-sizes", nargs="+", type=positive_int,
                        default=list(CONTEXT_SIZES), metavar="L", help="default: 1 2 4 8 16")
    parser.add_argument("--draws", type=positive_int, default=10,
                        help="random context draws per test subject and L (default 10)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="share of each dataset's subjects held out as targets (default 0.2)")
    parser.add_argument("--max-test-subjects", type=positive_int,
                        help="evaluate at most this many test subjects per dataset (quick runs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of splits and draws (default 0)")
    group = parser.add_argument_group("context selection and ensembles (segmentation)")
    group.add_argument("--selection", nargs="+", choices=strategy_names(), default=["random"],
                       help="context selection(s) to evaluate (default: random)")
    group.add_argument("--ensemble", nargs="+", type=positive_int, default=[1], metavar="K",
                       help="ensemble size(s) to evaluate (default: 1, one prediction)")
    group.add_argument("--similarity-mask", type=Path, metavar="NIFTI",
                       help="similar selection compares images inside this mask on the model "
                       "grid (> 0; e.g. atlas/atlas-MNI152NLin2009aSym_dseg.nii.gz of "
                       "neuroverse3d-make-training-data, the template brain); default: the "
                       "target's nonzero voxels")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="float32",
                        help="float32 (default), bfloat16, float16 (CUDA) or auto")
    parser.add_argument("--mini-context-size", type=positive_int, metavar="M",
                        help="(structure, context) pairs per chunk (default: auto, the largest "
                        "that fits the memory budget, on the CPU 1)")
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

    from ..model import load_checkpoint
    from ..model.predictor import Predictor
    from ..model.training import VolumeLoader, load_manifest

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
    mask = None
    if args.similarity_mask is not None:
        if not args.similarity_mask.is_file():
            raise MissingInputError(f"{args.similarity_mask}: similarity mask not found")
        try:
            mask = VolumeLoader(manifest, grid)(str(args.similarity_mask.resolve()), "label") > 0
        except (ValueError, EOFError, ImageFileError, OSError) as error:
            raise BadInputError(f"{args.similarity_mask}: not a readable mask: {error}") from None
    _check_output(args.out)
    evaluator = Evaluator(predictor, manifest, grid, structures, args.tasks, args.context_sizes,
                          args.draws, args.seed, args.test_fraction, args.max_test_subjects,
                          selections=args.selection, ensembles=args.ensemble,
                          similarity_mask=mask,
                          mini_context_size=args.mini_context_size or "auto")
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
                       "mini_context_size": args.mini_context_size or "auto",
                       "reduced_precision_error": getattr(predictor, "reduced_precision_error",
                                                          None),
                       "baselines": BASELINES, "selection": args.selection,
                       "ensemble": sorted(set(args.ensemble)),
                       "similarity_mask": str(args.similarity_mask.resolve())
                       if args.similarity_mask else None},
            "splits": evaluator.splits, "skipped": evaluator.skipped,
            "timing": {"total_s": total, "predict_calls": len(calls),
                       "predict_s": sum(calls), "predict_mean_s": float(np.mean(calls)) if calls
                       else None, "predict_s_per_task": {t: sum(s) for t, s in
                                                         evaluator.predict_seconds.items()}}}
    summary = summarise(rows)
    extra = {}
    if args.selection != ["random"] or set(args.ensemble) != {1}:
        comparison = compare(summary, rows, evaluator.reliability)
        info.update(comparison=comparison, selected=evaluator.selected)
        extra = {"comparison": markdown(comparison),
                 "reliability": lambda path: plot_reliability(comparison, path)}
    paths = write_outputs(args.out, rows, summary, info, **extra)
    print(f"neuroverse3d-eval: {len(rows)} results in {total:.1f} s; wrote "
          f"{', '.join(str(p) for p in paths.values())}")
    return ExitCode.OK


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_with_exit_codes("neuroverse3d-eval", run, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The group level's self-evaluation: how well this run's model and context pool segment each
structure, measured by leave-one-out on the labelled pool (:mod:`.model.self_evaluation`).

Reads what the participant level left in the output folder: the context set it used (its
cache entry, named in ``logs/context-set_<key>_<job>.json``), the run's configuration
(``logs/neuroverse3d_<run id>_config.json``: model, precision) and a sidecar's context spec
(context size, selection, ensemble, seed). Writes at the top of the output folder::

    self_evaluation.tsv        one row per structure: structure, expected_dice, interval_low,
                               interval_high, n, worst_subject, warning
    self_evaluation.json       what each column means, how it was measured, the inputs
    self_evaluation_cases.tsv  one row per (subject, structure): the leave-one-out Dice and the
                               quality signals of that case

Pools larger than ``MAX_DEFAULT_POOL`` are skipped unless asked for (the cost grows with the
pool: one prediction per labelled subject). The returned :class:`SelfEvaluation` carries the
cases and the fitted probability calibration on to :mod:`.quality`.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from . import __version__
from .workflows.derivatives import write_bidsignore
from .workflows.errors import MissingInputError
from .workflows.niftiio import write_text_atomic
from .workflows.reports.group import SELF_EVALUATION_TABLE as TABLE

LOGGER = logging.getLogger("neuroverse3d")
#: the largest pool evaluated by default (N predictions of the run's ensemble)
MAX_DEFAULT_POOL = 20
SIDECAR, CASES = "self_evaluation.json", "self_evaluation_cases.tsv"
COLUMNS = {
    "structure": "the segmented structure (as in the masks' desc- and dseg.tsv)",
    "expected_dice": "mean Dice of the labelled subjects, each segmented from the others with "
                     "this run's model, context size, selection and ensemble (leave-one-out, "
                     "on the model grid in template space)",
    "interval_low": "lower end of the range a new subject's Dice is expected in (the 5th "
                    "percentile of the cases; for fewer than 5 cases, of the bootstrapped mean)",
    "interval_high": "upper end of that range (95th percentile)",
    "n": "leave-one-out cases (labelled subjects)",
    "worst_subject": "the labelled subject segmented worst",
    "warning": "a plain sentence when the expected Dice is below 0.6, else empty",
}


@dataclass(frozen=True)
class SelfEvaluation:
    """What the self-evaluation measured: ``rows`` (self_evaluation.tsv), ``cases``
    (:class:`...model.self_evaluation.Case`), ``calibration`` (the fitted
    :class:`...model.quality.ProbabilityCalibration` of the cases' probability maps), the
    ``pool`` subject labels and the structure ``names``."""

    rows: List[dict]
    cases: list
    calibration: object
    pool: List[str]
    names: List[str]


def _newest(paths) -> Optional[Path]:
    paths = sorted(paths, key=lambda p: p.stat().st_mtime)
    return paths[-1] if paths else None


def _run_inputs(output_dir: Path) -> dict:
    """The pool file, model, inference and context spec of the newest participant run."""
    from .context_cache import POOL_FILE

    logs = output_dir / "logs"
    status_file = _newest(logs.glob("context-set_*.json"))
    if status_file is None:
        raise MissingInputError(f"{logs}: no context-set record; run the participant level first")
    pool = Path(json.loads(status_file.read_text())["Entry"]) / POOL_FILE
    if not pool.is_file():
        raise MissingInputError(f"{pool}: the context set of the participant run is gone (the "
                                "cache was pruned?); run the participant level again")
    configs = [p for p in logs.glob("neuroverse3d_*_config.json")
               if json.loads(p.read_text()).get("Config", {}).get("execution", {})
               .get("analysis_level") == "participant"]
    config = json.loads(_newest(configs).read_text())["Config"] if configs else {}
    sidecar = _newest(output_dir.glob("sub-*/**/anat/*_mask.json"))
    if sidecar is None:
        raise MissingInputError(f"{output_dir}: no mask sidecars; the self-evaluation needs a "
                                "segmentation run")
    return {"pool": pool, "config": config, "spec": json.loads(sidecar.read_text())["ContextSpec"]}


def tsv_text(rows: List[dict]) -> str:
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return stream.getvalue()


def run_self_evaluation(output_dir, force: bool = False) -> Optional[SelfEvaluation]:
    """Evaluate the newest participant run's pool; write the three files; return what it
    measured (None when skipped: not a segmentation, or a pool above :data:`MAX_DEFAULT_POOL`
    without ``force``)."""
    import numpy as np
    import torch

    from .model import load_checkpoint
    from .model.options import InferenceOptions
    from .model.predictor import Predictor
    from .model.pretrained import resolve_model_path
    from .model.quality import ProbabilityCalibration
    from .model.self_evaluation import leave_one_out, summarise

    output_dir = Path(output_dir)
    inputs = _run_inputs(output_dir)
    spec, config = inputs["spec"], inputs["config"]
    if spec.get("task") != "segmentation":
        return None
    with np.load(inputs["pool"]) as pool:
        images, labels = torch.from_numpy(pool["images"]), torch.from_numpy(pool["outputs"])
        ids = [str(s) for s in pool["subjects"]]
    if len(ids) > MAX_DEFAULT_POOL and not force:
        LOGGER.warning("self-evaluation skipped: a pool of %d labelled subjects (more than %d); "
                       "ask for it with --self-evaluation on", len(ids), MAX_DEFAULT_POOL)
        return None
    names = [s["name"] for s in spec["structures"]]
    workflow, inference = config.get("workflow", {}), config.get("inference", {})
    model_path = resolve_model_path(workflow.get("model"))
    options = InferenceOptions(device=inference.get("device", "auto"),
                               precision=inference.get("precision", "auto"))
    predictor = Predictor(load_checkpoint(model_path), **options.predictor_kwargs())
    started = time.time()
    size, selection = int(spec["num_contexts"]), spec.get("selection", "random")
    members, seed = int(spec.get("ensemble", 1)), int(spec.get("seed", 0))
    calibration = ProbabilityCalibration()
    cases = leave_one_out(predictor, images, labels, ids, names, size, selection, members, seed,
                          calibration=calibration)
    rows = summarise(cases, names, seed=seed)
    seconds = round(time.time() - started, 1)
    write_bidsignore(output_dir)  # top-level files outside the BIDS specification
    write_text_atomic(output_dir / CASES, tsv_text([c.to_dict() for c in cases]))
    write_text_atomic(output_dir / TABLE, tsv_text(rows))
    write_text_atomic(output_dir / SIDECAR, json.dumps({
        **{name: {"Description": text} for name, text in COLUMNS.items()},
        "Method": {"LeaveOneOut": True, "ContextSize": min(size, len(ids) - 1),
                   "Selection": selection, "EnsembleSize": members, "Seed": seed,
                   "PoolSubjects": ids, "Model": str(model_path),
                   "Precision": predictor.precision.value, "Seconds": seconds},
        "Software": f"neuroverse3d {__version__}"}, indent=2) + "\n")
    print(f"neuroverse3d: self-evaluation of {len(ids)} labelled subjects in {seconds} s: "
          + ", ".join(f"{r['structure']} {r['expected_dice']:.2f}" for r in rows))
    return SelfEvaluation(rows, cases, calibration.fit(), ids, names)

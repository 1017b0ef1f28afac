"""The group level's quality estimate, calibrated probability maps and label suggestions, all
fitted on this dataset's own leave-one-out cases (:mod:`.self_evaluation`,
:mod:`.model.quality`). Reads the quality signals the ICL node left in every native mask's
sidecar (``QualitySignals``, ``ContextSimilarityNCC``) and writes::

    quality.tsv        one row per (image, structure): the predicted Dice and its 90 % range
    quality.json       the columns, the fitted quality model and calibration, the method
    sub-<label>/.../<prefix>_label-<structure>_desc-calibrated_probseg.nii.gz (+ .json)
                       the native probability map through the fitted calibration
    suggest_labels.tsv with --suggest-labels N: the N unlabelled participants to label next
                       (the ones that would bring the others closest to a labelled subject,
                       compared on the model-grid images the participant level writes)
    suggest_labels.json
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List

from . import __version__
from .self_evaluation import SelfEvaluation, tsv_text
from .workflows.derivative_names import derivative_path
from .workflows.niftiio import load_volume, write_nifti_atomic, write_text_atomic
from .workflows.reports.group import QUALITY_TABLE, SUGGEST_TABLE, native_masks, sidecar_of

LOGGER = logging.getLogger("neuroverse3d")
QUALITY_COLUMNS = {
    "participant_id": "the participant", "session_id": "the session (n/a without sessions)",
    "source": "the image's file-name prefix (as in group_volumes.tsv)",
    "structure": "the segmented structure",
    "predicted_dice": "the Dice this image's mask is predicted to have against a manual label: "
                      "the structure's expected Dice (self_evaluation.tsv) moved by the image's "
                      "quality signals, fitted on this dataset's leave-one-out cases",
    "interval_low": "lower end of the 90 % range of the predicted Dice",
    "interval_high": "upper end of the 90 % range",
    "expected_dice": "the structure's expected Dice (self_evaluation.tsv), for comparison",
}
SUGGEST_COLUMNS = {
    "participant_id": "an unlabelled participant (not in the context pool)",
    "expected_gain": "highest first. Method representative (the default): how much closer, in "
                     "NCC summed over the other unlabelled participants, labelling it brings "
                     "them to a labelled subject (after the picks above it). Method "
                     "quality-distance (without the model-grid images): (1 - predicted mean "
                     "Dice) x (1 - NCC to the most similar labelled subject)",
    "predicted_dice": "the participant's predicted Dice, mean over structures and images",
    "nearest_similarity": "NCC of its image to the most similar labelled subject (model grid)",
    "why": "the reason, in words",
}


def _masks(output_dir: Path):
    """``(mask path, prefix, structure, identity, sidecar dict)`` of every native mask with
    quality signals (:func:`.workflows.reports.group.native_masks`)."""
    for path, prefix, name, identity in native_masks(output_dir):
        sidecar = sidecar_of(path)
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        if name in (meta.get("QualitySignals") or {}):
            yield path, prefix, name, identity, meta


def _calibrate(output_dir: Path, mask: Path, structure: str, evaluation: SelfEvaluation):
    """Write the calibrated native probability map beside the mask's probseg (if any)."""
    probseg = derivative_path(output_dir, mask, desc=None, label=structure, suffix="probseg")
    if not probseg.is_file():
        return None
    img, data = load_volume(probseg)
    out = derivative_path(output_dir, probseg, desc="calibrated")
    write_nifti_atomic(evaluation.calibration.apply(structure, data).numpy(), img, out,
                       dtype="float32")
    source = sidecar_of(probseg)
    source = json.loads(source.read_text()) if source.is_file() else {}
    write_text_atomic(sidecar_of(out), json.dumps(dict(
        source, Description=f"Probability of {structure}, calibrated: the model's probability "
        "mapped through a monotone (isotonic) function fitted on this dataset's leave-one-out "
        "cases, so that voxels given p are the structure about a fraction p of the time",
        Sources=[probseg.relative_to(output_dir).as_posix()]), indent=2) + "\n")
    return out


def run_quality(output_dir, evaluation: SelfEvaluation, suggest: int = 0) -> Dict[str, Path]:
    """Predict each image's Dice per structure, write calibrated probability maps and, with
    ``suggest`` > 0, the participants to label next. Returns the files written."""
    from .model.quality import QualityModel

    output_dir = Path(output_dir)
    model = QualityModel.fit(evaluation.cases)
    rows, per_participant, written = [], {}, {}
    for mask, prefix, structure, identity, meta in _masks(output_dir):
        if structure not in model.expected:
            continue
        participant = identity["participant_id"]
        estimate = model.predict(structure, meta["QualitySignals"][structure])
        rows.append({**identity, "structure": structure,
                     **{k: round(v, 4) for k, v in estimate.items()},
                     "expected_dice": round(model.expected[structure], 4),
                     **meta["QualitySignals"][structure]})
        mine = per_participant.setdefault(participant, {"dice": [], "similarity": [],
                                                        "images": set()})
        mine["dice"].append(estimate["predicted_dice"])
        mine["similarity"] += list((meta.get("ContextSimilarityNCC") or {}).values())
        mine["images"].update(mask.parent.glob(f"{prefix}_space-*_desc-preproc_*.nii*"))
        _calibrate(output_dir, mask, structure, evaluation)
    if not rows:
        LOGGER.warning("quality estimate skipped: no native mask sidecar holds quality signals "
                       "(run the participant level of this version first)")
        return written
    written["quality"] = write_text_atomic(output_dir / QUALITY_TABLE, tsv_text(rows))
    write_text_atomic(output_dir / "quality.json", json.dumps({
        **{name: {"Description": text} for name, text in QUALITY_COLUMNS.items()},
        "Signals": "the remaining columns: the quality signals of model.quality_signals",
        "QualityModel": model.to_dict(),
        "Calibration": evaluation.calibration.to_dict(),
        "Method": {"FittedOn": "self_evaluation_cases.tsv", "PoolSubjects": evaluation.pool},
        "Software": f"neuroverse3d {__version__}"}, indent=2) + "\n")
    if suggest > 0:
        pool = {f"sub-{s}" for s in evaluation.pool}
        written.update(_suggest(output_dir, {p: v for p, v in per_participant.items()
                                             if p not in pool}, suggest))
    print(f"neuroverse3d: predicted Dice of {len(per_participant)} participants written to "
          f"{written['quality']}")
    return written


def _suggest(output_dir: Path, candidates: Dict[str, dict], count: int) -> Dict[str, Path]:
    """Rank the unlabelled participants (:func:`...model.quality.representative_picks` on their
    images on the model grid; without those images, :func:`...model.quality.rank_suggestions`
    on predicted quality and distance) and write ``suggest_labels.tsv``/``.json``."""
    from .model.quality import rank_suggestions, representative_picks
    from .model.selection import ncc

    summary = {p: (sum(v["dice"]) / len(v["dice"]), max(v["similarity"], default=0.0))
               for p, v in candidates.items()}
    images = {p: sorted(v["images"])[0] for p, v in candidates.items() if v["images"]}
    if len(images) == len(candidates):
        volumes = {p: load_volume(path)[1] for p, path in images.items()}
        names = sorted(volumes)
        pairs = {(a, b): ncc(volumes[a], volumes[b])
                 for n, a in enumerate(names) for b in names[n + 1:]}
        method = "representative"
        ranked = [{"participant_id": p, "expected_gain": round(gain, 4),
                   "predicted_dice": round(summary[p][0], 4),
                   "nearest_similarity": round(summary[p][1], 4),
                   "why": (f"it resembles {served} other unlabelled participant"
                           f"{'s' if served != 1 else ''} more than their nearest labelled "
                           f"subject does (NCC gain {gain:.2f})" if served else
                           "no other unlabelled participant is served better by it than by "
                           "the labelled subjects and the picks above") +
                          f"; predicted mean Dice {summary[p][0]:.2f}"}
                  for p, gain, served in representative_picks(
                      names, count, pairs, {p: summary[p][1] for p in names})]
    else:
        LOGGER.warning("label suggestions: %d unlabelled participants have no image on the model "
                       "grid (desc-preproc; run the participant level of this version): ranked "
                       "by predicted quality and distance instead",
                       len(candidates) - len(images))
        method = "quality-distance"
        ranked = [{"participant_id": r.pop("subject"), **r}
                  for r in rank_suggestions(summary, count)]
    written = {"suggest": write_text_atomic(
        output_dir / SUGGEST_TABLE,
        tsv_text(ranked) if ranked else "\t".join(SUGGEST_COLUMNS) + "\n")}
    write_text_atomic(output_dir / "suggest_labels.json", json.dumps({
        **{name: {"Description": text} for name, text in SUGGEST_COLUMNS.items()},
        "Method": method, "Requested": count, "Candidates": len(candidates),
        "Software": f"neuroverse3d {__version__}"}, indent=2) + "\n")
    print(f"neuroverse3d: label next: {', '.join(r['participant_id'] for r in ranked) or 'none'}"
          f" (of {len(candidates)} unlabelled participants)")
    return written

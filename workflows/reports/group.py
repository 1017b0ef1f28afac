"""The group level: ``group_volumes.tsv`` and ``group.html`` from the participants' native masks.

With an ensemble (``--ensemble K``), each structure also gets a QC column
``<structure>_uncertainty`` (the mean spread of the members in its boundary band, from the
mask's sidecar); an image whose uncertainty has a robust z above 3 is flagged and listed first.

Outliers are values with a robust z-score ``|z| > 3``, where ``z = (v - median) / (1.4826 MAD)``
(the MAD scaled to the standard deviation of a normal distribution; the plain standard
deviation when the MAD is 0). Unlike the mean/SD score, it can flag a subject in small groups
and is not masked by the outlier itself.
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..derivative_names import parse_bids_name
from ..errors import MissingInputError
from . import figures
from .common import mask_volume_mm3, render, write_text_atomic

Z_LIMIT = 3.0
#: a predicted Dice below this is flagged in the report
LOW_DICE = 0.6
#: the group level's leave-one-out self-evaluation (one row per structure), shown first
SELF_EVALUATION_TABLE = "self_evaluation.tsv"
#: the predicted Dice per image and structure, and the participants to label next
QUALITY_TABLE, SUGGEST_TABLE = "quality.tsv", "suggest_labels.tsv"
MASK_PATTERN = re.compile(r"^(?P<prefix>sub-[^_]+(?:_ses-[^_]+)?.*?)_desc-(?P<name>[A-Za-z0-9]+)"
                          r"_mask\.nii(\.gz)?$")


def robust_z(values: Sequence[float]) -> np.ndarray:
    """Robust z-scores of ``values`` (NaN stays NaN; all equal -> zeros)."""
    data = np.asarray(values, dtype=float)
    finite = data[np.isfinite(data)]
    z = np.full(data.shape, np.nan)
    if finite.size == 0:
        return z
    centre = np.median(finite)
    scale = 1.4826 * np.median(np.abs(finite - centre))
    if scale == 0:
        scale = float(np.std(finite, ddof=1)) if finite.size > 1 else 0.0
    ok = np.isfinite(data)
    z[ok] = (data[ok] - centre) / scale if scale > 0 else 0.0
    return z


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def native_masks(output_dir):
    """``(path, prefix, structure, {participant_id, session_id, source})`` of every native-space
    mask under ``output_dir`` (template-space masks are skipped), sorted by path."""
    for path in sorted(Path(output_dir).glob("sub-*/**/anat/*_mask.nii*")):
        match = MASK_PATTERN.match(path.name)
        if not match or "_space-" in path.name:
            continue
        prefix, entities = match.group("prefix"), parse_bids_name(path)
        yield path, prefix, match.group("name"), {
            "participant_id": f"sub-{entities['sub']}",
            "session_id": f"ses-{entities['ses']}" if "ses" in entities else "n/a",
            "source": prefix}


def sidecar_of(image: Path) -> Path:
    """The JSON sidecar of a NIfTI file (``x.nii.gz`` -> ``x.json``)."""
    return image.with_name(image.name.split(".nii")[0] + ".json")


def collect_volumes(output_dir):
    """Rows ``{participant_id, session_id, source, <structure>: mm^3}`` from native masks."""
    rows, structures = {}, []
    for path, prefix, name, identity in native_masks(output_dir):
        row = rows.setdefault(prefix, dict(identity))
        row[name] = round(mask_volume_mm3(path), 3)
        if name not in structures:
            structures.append(name)
        spread = _uncertainty(path, name)
        if spread is not None:
            row[qc_column(name)] = spread
    qc = [qc_column(s) for s in structures if any(qc_column(s) in r for r in rows.values())]
    return list(rows.values()), structures + qc


def qc_column(structure: str) -> str:
    """The QC column of a structure: its ensemble uncertainty, ``Uncertainty.<structure>.
    Disagreement`` of the mask's sidecar (1 - the members' pooled pairwise Dice: on held-out
    subjects it tracks 1 - Dice with Spearman 0.91, the boundary-band spread -0.12)."""
    return f"{structure}_uncertainty"


def _uncertainty(mask_path: Path, name: str):
    """The structure's ``Disagreement`` from the mask's sidecar (None without an ensemble)."""
    try:
        return float(json.loads(sidecar_of(mask_path).read_text())["Uncertainty"][name]["Disagreement"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_volumes_tsv(output_dir, rows, structures) -> Path:
    """``group_volumes.tsv``: participant_id, session_id, source, one column per structure."""
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=["participant_id", "session_id", "source"] +
                            list(structures), delimiter="\t", restval="n/a", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(Path(output_dir) / "group_volumes.tsv", stream.getvalue())


def write_group_report(output_dir, rows: List[Dict], structures: List[str]) -> Path:
    """Write ``group.html`` (and ``figures/group_desc-volumes.png``); return the page's path.

    ``rows``: dicts with ``participant_id``, ``session_id``, ``source`` and one volume (mm^3)
    per name in ``structures``, as in ``group_volumes.tsv``.
    """
    output_dir = Path(output_dir)
    qc = [s for s in structures if s.endswith("_uncertainty")]
    values = {s: [_number(r.get(s)) for r in rows] for s in structures}
    scores = {s: robust_z(v) for s, v in values.items()}
    # volumes: too large or too small; uncertainty: only too large
    flags = {s: (np.nan_to_num(z) > Z_LIMIT) if s in qc else (np.abs(np.nan_to_num(z)) > Z_LIMIT)
             for s, z in scores.items()}
    volumes = [s for s in structures if s not in qc]
    distribution = None
    if volumes:
        png = figures.volume_distributions({s: values[s] for s in volumes},
                                           {s: flags[s] for s in volumes},
                                           output_dir / "figures" / "group_desc-volumes.png",
                                           labels=[r.get("source", "") for r in rows])
        distribution = png.relative_to(output_dir).as_posix()
    summary = []
    for name in structures:
        data = np.asarray(values[name])
        finite = data[np.isfinite(data)]
        summary.append({"name": name, "n": finite.size, "outliers": int(flags[name].sum()),
                        "median": np.median(finite) if finite.size else None,
                        "min": finite.min() if finite.size else None,
                        "max": finite.max() if finite.size else None})
    table, flagged = [], []
    for index, row in enumerate(rows):
        report = f"{row.get('participant_id', '')}.html"
        entry = dict(row, report=report if (output_dir / report).is_file() else None,
                     session_id=row.get("session_id", "n/a"), cells=[])
        for name in structures:
            value, z, flag = values[name][index], scores[name][index], flags[name][index]
            entry["cells"].append({"value": value, "z": z, "flag": bool(flag)})
            if flag:
                flagged.append((entry, name, z))
        table.append(entry)
    # images whose ensemble uncertainty is an outlier come first (they most need a look)
    uncertain = [any(flags[s][i] for s in qc) for i in range(len(rows))]
    table = [entry for _, entry in sorted(zip(uncertain, table), key=lambda item: not item[0])]
    flagged.sort(key=lambda item: item[1] not in qc)
    self_evaluation = read_self_evaluation(output_dir)
    quality, suggestions = quality_by_image(output_dir), read_table(output_dir / SUGGEST_TABLE)
    sections = ([("self-evaluation", "Expected accuracy")] if self_evaluation else []) + \
        ([("quality", "Predicted quality")] if quality else []) + \
        ([("suggest", "Label next")] if suggestions is not None else []) + \
        ([("distributions", "Distributions")] if distribution else []) + [
        ("summary", "Summary"), ("outliers", "Outliers"), ("volumes", "Volumes")]
    text = render("group.html.j2", title=f"Neuroverse3D group report ({len(rows)} images)",
                  sections=sections, distribution=distribution, summary=summary,
                  flagged=flagged, rows=table, structures=structures, qc=qc,
                  self_evaluation=self_evaluation, quality=quality, suggestions=suggestions,
                  low_dice=LOW_DICE)
    return write_text_atomic(output_dir / "group.html", text)


def read_table(path) -> Optional[List[Dict]]:
    """The rows of a TSV the group level wrote (None when it wrote none)."""
    if not Path(path).is_file():
        return None
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def read_self_evaluation(output_dir) -> Optional[List[Dict]]:
    """The rows of ``self_evaluation.tsv`` (None when the group level wrote none)."""
    return read_table(Path(output_dir) / SELF_EVALUATION_TABLE)


def quality_by_image(output_dir) -> Optional[List[Dict]]:
    """Per image of ``quality.tsv``: participant, source, the mean predicted Dice and the
    structure predicted worst; lowest mean first (None without the table)."""
    rows = read_table(Path(output_dir) / QUALITY_TABLE)
    if not rows:
        return None
    images: Dict[str, List[Dict]] = {}
    for row in rows:
        images.setdefault(row["source"], []).append(row)
    table = []
    for source, mine in images.items():
        worst = min(mine, key=lambda r: float(r["predicted_dice"]))
        table.append({"participant_id": mine[0]["participant_id"], "source": source,
                      "mean": sum(float(r["predicted_dice"]) for r in mine) / len(mine),
                      "worst": worst["structure"], "worst_dice": float(worst["predicted_dice"]),
                      "low": float(worst["predicted_dice"]) < LOW_DICE})
    return sorted(table, key=lambda r: (r["mean"], r["source"]))


def build_group_report(output_dir) -> Dict[str, Path]:
    """Write ``group_volumes.tsv`` and ``group.html`` under ``output_dir``; return
    ``dict(table=..., page=..., rows=<number of images>)``."""
    output_dir = Path(output_dir)
    rows, structures = collect_volumes(output_dir)
    if not rows:
        raise MissingInputError(f"{output_dir}: no participant masks found; run the participant "
                                "level with a segmentation context first")
    table = write_volumes_tsv(output_dir, rows, structures)
    return {"table": table, "page": write_group_report(output_dir, rows, structures),
            "rows": len(rows), "structures": structures}

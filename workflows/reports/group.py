"""The group level: ``group_volumes.tsv`` and ``group.html`` from the participants' native masks.

Outliers are values with a robust z-score ``|z| > 3``, where ``z = (v - median) / (1.4826 MAD)``
(the MAD scaled to the standard deviation of a normal distribution; the plain standard
deviation when the MAD is 0). Unlike the mean/SD score, it can flag a subject in small groups
and is not masked by the outlier itself.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from ..errors import MissingInputError
from . import figures
from .common import mask_volume_mm3, render, write_text_atomic

Z_LIMIT = 3.0
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


def collect_volumes(output_dir):
    """Rows ``{participant_id, session_id, source, <structure>: mm^3}`` from native masks."""
    rows, structures = {}, []
    for path in sorted(Path(output_dir).glob("sub-*/**/anat/*_mask.nii*")):
        match = MASK_PATTERN.match(path.name)
        if not match or "_space-" in path.name:
            continue
        prefix, name = match.group("prefix"), match.group("name")
        entities = dict(part.split("-", 1) for part in prefix.split("_") if "-" in part)
        row = rows.setdefault(prefix, {
            "participant_id": f"sub-{entities['sub']}",
            "session_id": f"ses-{entities['ses']}" if "ses" in entities else "n/a",
            "source": prefix})
        row[name] = round(mask_volume_mm3(path), 3)
        if name not in structures:
            structures.append(name)
    return list(rows.values()), structures


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
    values = {s: [_number(r.get(s)) for r in rows] for s in structures}
    scores = {s: robust_z(v) for s, v in values.items()}
    flags = {s: np.abs(np.nan_to_num(z)) > Z_LIMIT for s, z in scores.items()}
    distribution = None
    if structures:
        png = figures.volume_distributions(values, flags,
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
    sections = ([("distributions", "Distributions")] if distribution else []) + [
        ("summary", "Summary"), ("outliers", "Outliers"), ("volumes", "Volumes")]
    text = render("group.html.j2", title=f"Neuroverse3D group report ({len(rows)} images)",
                  sections=sections, distribution=distribution, summary=summary,
                  flagged=flagged, rows=table, structures=structures)
    return write_text_atomic(output_dir / "group.html", text)


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

"""The group page: ``<output_dir>/group.html`` with per-structure volume distributions.

Outliers are values with a robust z-score ``|z| > 3``, where ``z = (v - median) / (1.4826 MAD)``
(the MAD scaled to the standard deviation of a normal distribution; the plain standard
deviation when the MAD is 0). Unlike the mean/SD score, it can flag a subject in small groups
and is not masked by the outlier itself.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from . import figures
from .common import esc, figure, page, table, write_text_atomic

Z_LIMIT = 3.0


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


def write_group_report(output_dir, rows: List[Dict], structures: List[str]) -> Path:
    """Write ``group.html`` (and ``figures/group_desc-volumes.png``); return the page's path.

    ``rows``: dicts with ``participant_id``, ``session_id``, ``source`` and one volume (mm^3)
    per name in ``structures``, as in ``group_volumes.tsv``.
    """
    output_dir = Path(output_dir)
    values = {s: [_number(r.get(s)) for r in rows] for s in structures}
    scores = {s: robust_z(v) for s, v in values.items()}
    flags = {s: np.abs(np.nan_to_num(z)) > Z_LIMIT for s, z in scores.items()}
    sections = []
    if structures:
        png = figures.volume_distributions(values, flags,
                                           output_dir / "figures" / "group_desc-volumes.png",
                                           labels=[r.get("source", "") for r in rows])
        sections.append(("distributions", "Distributions",
                         figure(png.relative_to(output_dir).as_posix(),
                                "volume per structure (mm³), one point per image; red: "
                                "|robust z| > 3")))
    summary = []
    for name in structures:
        data = np.asarray(values[name])
        finite = data[np.isfinite(data)]
        summary.append((name, finite.size, f"{np.median(finite):,.0f}" if finite.size else "n/a",
                        f"{finite.min():,.0f}" if finite.size else "n/a",
                        f"{finite.max():,.0f}" if finite.size else "n/a",
                        int(flags[name].sum())))
    sections.append(("summary", "Summary", table(
        ["structure", "n", "median (mm³)", "min", "max", "outliers"], summary,
        numeric=(1, 2, 3, 4, 5))))

    body, flagged = [], []
    for index, row in enumerate(rows):
        subject = str(row.get("participant_id", ""))
        link = f"{subject}.html"
        cell = ("html", f'<a href="{esc(link)}">{esc(subject)}</a>') \
            if (output_dir / link).is_file() else subject
        line = [cell, row.get("session_id", "n/a"), row.get("source", "")]
        for name in structures:
            value, z = values[name][index], scores[name][index]
            text = "n/a" if not np.isfinite(value) else f"{value:,.0f}"
            if flags[name][index]:
                flagged.append((cell, row.get("source", ""), name, f"{z:+.1f}"))
                line.append(("html", f'<span class="outlier" title="robust z = {z:+.1f}">'
                                     f"{esc(text)}</span>"))
            else:
                line.append(text)
        body.append(line)
    volumes = table(["participant", "session", "image"] + [f"{s} (mm³)" for s in structures],
                    body, numeric=tuple(range(3, 3 + len(structures))))
    outliers = (table(["participant", "image", "structure", "robust z"], flagged)
                if flagged else '<p class="ok">No value with |robust z| &gt; 3.</p>')
    sections += [("outliers", "Outliers", outliers +
                  '<p class="note">z = (volume - median) / (1.4826 MAD), per structure.</p>'),
                 ("volumes", "Volumes", volumes +
                  '<p class="note">Native-space volumes from the <code>desc-&lt;name&gt;_mask'
                  "</code> files; the same numbers as <code>group_volumes.tsv</code>.</p>")]
    return write_text_atomic(output_dir / "group.html",
                             page(f"Neuroverse3D group report ({len(rows)} images)", sections))

"""Group level: per-structure volumes of every image's native-space masks, and the group page.

``build_group_report(output_dir)`` writes ``group_volumes.tsv`` (one row per image, one column
per structure, mm^3) and ``group.html`` (distributions, outliers, links to subject reports).
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from ..workflows.errors import MissingInputError
from ..workflows.reports import mask_volume_mm3, write_group_report
from ..workflows.reports.common import write_text_atomic

MASK_PATTERN = re.compile(r"^(?P<prefix>sub-[^_]+(?:_ses-[^_]+)?.*?)_desc-(?P<name>[A-Za-z0-9]+)_mask\.nii(\.gz)?$")


def collect_volumes(output_dir: Path):
    """Rows ``{participant_id, session_id, source, <structure>: mm^3}`` from native masks."""
    rows, structures = {}, []
    for path in sorted(Path(output_dir).glob("sub-*/**/anat/*_mask.nii*")):
        match = MASK_PATTERN.match(path.name)
        if not match or "_space-" in path.name:
            continue
        prefix, name = match.group("prefix"), match.group("name")
        entities = dict(part.split("-", 1) for part in prefix.split("_") if "-" in part)
        row = rows.setdefault(prefix, {"participant_id": f"sub-{entities['sub']}",
                                       "session_id": f"ses-{entities['ses']}" if "ses" in entities else "n/a",
                                       "source": prefix})
        row[name] = round(mask_volume_mm3(path), 3)
        if name not in structures:
            structures.append(name)
    return list(rows.values()), structures


def write_volumes_tsv(output_dir: Path, rows, structures) -> Path:
    """``group_volumes.tsv``: participant_id, session_id, source, one column per structure."""
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=["participant_id", "session_id", "source"] +
                            list(structures), delimiter="\t", restval="n/a", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(Path(output_dir) / "group_volumes.tsv", stream.getvalue())


def build_group_report(output_dir) -> Path:
    """Write ``group_volumes.tsv`` and ``group.html`` under ``output_dir``; return the page."""
    output_dir = Path(output_dir)
    rows, structures = collect_volumes(output_dir)
    if not rows:
        raise MissingInputError(f"{output_dir}: no participant masks found; run the participant "
                                "level with a segmentation context first")
    target = write_volumes_tsv(output_dir, rows, structures)
    print(f"neuroverse3d: wrote {target} ({len(rows)} rows, structures: {', '.join(structures)})")
    page = write_group_report(output_dir, rows, structures)
    print(f"neuroverse3d: wrote {page}")
    return page


def run_group(bids_dir: Path, output_dir: Path, args) -> int:
    build_group_report(output_dir)
    return 0

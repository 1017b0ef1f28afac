"""Group level: per-structure volumes of every participant's native-space masks."""
from __future__ import annotations

import csv
import os
import re
import tempfile
from pathlib import Path

import nibabel as nb
import numpy as np

from ..workflows.errors import MissingInputError

MASK_PATTERN = re.compile(r"^(?P<prefix>sub-[^_]+(?:_ses-[^_]+)?.*?)_desc-(?P<name>[A-Za-z0-9]+)_mask\.nii(\.gz)?$")


def collect_volumes(output_dir: Path):
    """Rows ``{participant_id, session_id, source, <structure>: mm^3}`` from native masks."""
    rows, structures = {}, []
    for path in sorted(output_dir.glob("sub-*/**/anat/*_mask.nii*")):
        match = MASK_PATTERN.match(path.name)
        if not match or "_space-" in path.name:
            continue
        img = nb.load(str(path))
        voxel_mm3 = float(np.prod(img.header.get_zooms()[:3]))
        volume = float(np.count_nonzero(np.asanyarray(img.dataobj))) * voxel_mm3
        prefix, name = match.group("prefix"), match.group("name")
        entities = dict(part.split("-", 1) for part in prefix.split("_") if "-" in part)
        row = rows.setdefault(prefix, {"participant_id": f"sub-{entities['sub']}",
                                       "session_id": f"ses-{entities['ses']}" if "ses" in entities else "n/a",
                                       "source": prefix})
        row[name] = round(volume, 3)
        if name not in structures:
            structures.append(name)
    return list(rows.values()), structures


def run_group(bids_dir: Path, output_dir: Path, args) -> int:
    rows, structures = collect_volumes(output_dir)
    if not rows:
        raise MissingInputError(f"{output_dir}: no participant masks found; run the participant "
                                "level with a segmentation context first")
    columns = ["participant_id", "session_id", "source"] + structures
    handle, tmp = tempfile.mkstemp(prefix=".group_volumes.", dir=output_dir)
    with os.fdopen(handle, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, delimiter="\t", restval="n/a")
        writer.writeheader()
        writer.writerows(rows)
    target = output_dir / "group_volumes.tsv"
    os.replace(tmp, target)
    print(f"neuroverse3d: wrote {target} ({len(rows)} rows, structures: {', '.join(structures)})")
    return 0

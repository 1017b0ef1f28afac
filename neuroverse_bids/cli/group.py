"""Group level: per-structure volumes of every image's native-space masks, and the group page.

Writes ``group_volumes.tsv`` (one row per image, one column per structure, mm^3) and
``group.html`` (distributions, outliers, links to subject reports); see
:mod:`neuroverse_bids.workflows.reports.group`.
"""
from __future__ import annotations

from ..config import RunConfig
from ..workflows.reports.group import build_group_report


def run_group(config: RunConfig) -> int:
    written = build_group_report(config.execution.output_dir)
    print(f"neuroverse3d: wrote {written['table']} ({written['rows']} rows, structures: "
          f"{', '.join(written['structures'])})")
    print(f"neuroverse3d: wrote {written['page']}")
    return 0

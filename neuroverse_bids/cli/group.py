"""Group level: per-structure volumes of every image's native-space masks, and the group page.

Writes ``group_volumes.tsv`` (one row per image, one column per structure, mm^3) and
``group.html`` (distributions, outliers, links to subject reports); see
:mod:`neuroverse_bids.workflows.reports.group`.
"""
from __future__ import annotations

import logging

from ..config import RunConfig
from ..quality import run_quality
from ..self_evaluation import run_self_evaluation
from ..workflows.errors import NeuroverseError
from ..workflows.reports.group import build_group_report

LOGGER = logging.getLogger("neuroverse3d")


def run_group(config: RunConfig) -> int:
    output_dir = config.execution.output_dir
    mode, suggest = config.workflow.self_evaluation, config.workflow.suggest_labels
    if suggest and mode == "off":
        LOGGER.warning("--suggest-labels needs the self-evaluation; it is off, so nothing is "
                       "suggested")
    if mode != "off":
        try:  # the quality estimate and suggestions are fitted on the self-evaluation's cases
            evaluation = run_self_evaluation(output_dir, force=mode == "on" or bool(suggest))
            if evaluation is not None:
                run_quality(output_dir, evaluation, suggest=suggest)
        except NeuroverseError as error:
            if mode == "on":
                raise
            LOGGER.warning("self-evaluation skipped: %s", error)
    written = build_group_report(output_dir)
    print(f"neuroverse3d: wrote {written['table']} ({written['rows']} rows, structures: "
          f"{', '.join(written['structures'])})")
    print(f"neuroverse3d: wrote {written['page']}")
    return 0

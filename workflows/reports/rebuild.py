"""Rebuild the reports of an existing output folder without running anything (``--reports-only``).

Subject pages are rendered again from the facts the report nodes saved
(``sub-<label>/figures/sub-<label>_report.json``) and the crash files now in ``logs/``; the
group page from the native masks, when the group level made one before. No figure is redrawn
(a missing one is named on the page) and no node result is read from the work folder (only a
crash file's pointer to the inputs report of its failed node, when that is still there).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional

from ..errors import MissingInputError
from .subject import facts_path, render_subject_report


def _subjects_with_reports(output_dir: Path) -> List[str]:
    found = {p.name[4:] for p in output_dir.glob("sub-*") if p.is_dir()
             and facts_path(output_dir, p.name[4:]).is_file()}
    return sorted(found)


def rebuild_reports(output_dir, participants: Optional[Iterable[str]] = None) -> List[Path]:
    """Render the subject pages (and ``group.html`` when it exists) again; return their paths.

    ``participants``: labels (with or without ``sub-``); default: every subject with saved
    report facts. A named participant without facts still gets a page when crash files of its
    nodes are in ``logs/`` (the errors); with neither, :class:`MissingInputError` names it.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise MissingInputError(f"{output_dir}: no such output folder; give the folder of a "
                                "previous participant run")
    subjects = ([p[4:] if p.startswith("sub-") else p for p in participants]
                if participants is not None else _subjects_with_reports(output_dir))
    if not subjects:
        raise MissingInputError(f"{output_dir}: no saved report facts "
                                "(sub-<label>/figures/sub-<label>_report.json); run the "
                                "participant level first")
    pages = [render_subject_report(output_dir, subject) for subject in subjects]
    if (output_dir / "group.html").is_file():
        from .group import build_group_report

        pages.append(build_group_report(output_dir)["page"])
    return pages

"""HTML reports of the BIDS-App: one page per subject with SVG reportlets, and a group page."""
from .common import is_nonempty_image, mask_volume_mm3, report_figures
from .crash import crash_files, summarise_crash
from .group import build_group_report, robust_z, write_group_report
from .rebuild import rebuild_reports
from .subject import read_facts, render_subject_report

__all__ = ["build_group_report", "crash_files", "is_nonempty_image", "mask_volume_mm3",
           "read_facts", "rebuild_reports", "render_subject_report", "report_figures",
           "robust_z", "summarise_crash", "write_group_report"]

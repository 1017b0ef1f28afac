"""HTML reports of the BIDS-App: one page per subject and a group page (figures as PNG)."""
from .common import is_nonempty_image, mask_volume_mm3, report_figures
from .group import robust_z, write_group_report
from .subject import build_subject_report, collect_subject_outputs, crash_files

__all__ = ["build_subject_report", "collect_subject_outputs", "crash_files",
           "is_nonempty_image", "mask_volume_mm3", "report_figures", "robust_z",
           "write_group_report"]

"""Shared pieces of the HTML reports: mask volumes, figure checks, the Jinja2 page templates."""
from __future__ import annotations

import re
from pathlib import Path
from typing import List

import nibabel as nb
import numpy as np

from ..niftiio import write_text_atomic  # noqa: F401 - the reports' writer

_SRC = re.compile(r"""<(?:img[^>]*\ssrc|object[^>]*\sdata)=["']([^"']+)["']""", re.IGNORECASE)

#: the methods boilerplate (CC0): the text may be copied into manuscripts unchanged
CITATION = ("Hu J, et al. Neuroverse3D: Developing In-Context Learning Universal Model for "
            "Neuroimaging in 3D. Proceedings of the IEEE/CVF International Conference on "
            "Computer Vision (ICCV), 2025. arXiv:2503.02410.")
TEMPLATES = Path(__file__).parent / "templates"


def mask_volume_mm3(path) -> float:
    """Volume of a mask in mm^3: voxels > 0 times the voxel volume (from the header zooms)."""
    img = nb.load(str(path))
    voxel_mm3 = float(np.prod(img.header.get_zooms()[:3]))
    return float(np.count_nonzero(np.asanyarray(img.dataobj))) * voxel_mm3


def _thousands(value) -> str:
    """``1234.5`` -> ``"1,234"`` (a missing or non-finite value: ``"n/a"``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{number:,.0f}" if np.isfinite(number) else "n/a"


def render(page: str, **context) -> str:
    """Render one of the Jinja2 page templates in ``templates/`` (HTML-escaped values)."""
    import jinja2

    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                                     autoescape=True, undefined=jinja2.StrictUndefined,
                                     trim_blocks=True, lstrip_blocks=True)
    environment.filters["thousands"] = _thousands
    return environment.get_template(page).render(citation=CITATION, **context)


def report_figures(html_file) -> List[Path]:
    """The image files an HTML report shows (``<img src>``, ``<object data>``), resolved next
    to the page."""
    html_file = Path(html_file)
    return [(html_file.parent / src).resolve() for src in _SRC.findall(html_file.read_text())]


def is_nonempty_image(path) -> bool:
    """True for a PNG (decodable, > 1x1, not one flat colour) or an SVG with drawing content."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    if path.suffix == ".svg":
        text = path.read_text(errors="replace")
        return "<svg" in text and any(t in text for t in ("<path", "<image", "<rect", "<use"))
    import matplotlib.image as mpimg

    try:
        pixels = mpimg.imread(str(path))
    except Exception:  # not a readable image
        return False
    if pixels.ndim < 2 or min(pixels.shape[:2]) < 2:
        return False
    channels = pixels.reshape(pixels.shape[0] * pixels.shape[1], -1)
    return float(np.ptp(channels, axis=0).max()) > 0

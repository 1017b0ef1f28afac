"""Shared pieces of the HTML reports: mask volumes, figure checks, page layout, methods text."""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Iterable, List

import nibabel as nb
import numpy as np

from ..niftiio import write_text_atomic  # noqa: F401 - the reports' writer

#: image formats the reports write and link
FIGURE_SUFFIXES = (".png", ".svg")
_SRC = re.compile(r"""<img[^>]*\ssrc=["']([^"']+)["']""", re.IGNORECASE)

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#222}
nav{position:sticky;top:0;background:#263238;padding:.4em 1em;z-index:2}
nav a{color:#eceff1;margin-right:1.2em;text-decoration:none;font-size:.95em}
main{max-width:1100px;margin:auto;padding:0 1em 3em}
h1{margin-top:.8em} h2{border-bottom:2px solid #cfd8dc;padding-bottom:.2em;margin-top:1.6em}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #cfd8dc;background:#000}
figcaption{font-size:.9em;color:#455a64}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #cfd8dc;padding:.25em .6em;text-align:left}
th{background:#eceff1} td.num{text-align:right;font-variant-numeric:tabular-nums}
.outlier{background:#ffcdd2;font-weight:bold} .ok{color:#2e7d32} .bad{color:#c62828}
.note{color:#607d8b;font-style:italic} pre{background:#f5f5f5;padding:.6em;overflow-x:auto}
blockquote{border-left:4px solid #90a4ae;margin:1em 0;padding:.2em 1em;background:#fafafa}
"""

#: the methods boilerplate (CC0): the text may be copied into manuscripts unchanged
CITATION = ("Hu J, et al. Neuroverse3D: Developing In-Context Learning Universal Model for "
            "Neuroimaging in 3D. Proceedings of the IEEE/CVF International Conference on "
            "Computer Vision (ICCV), 2025. arXiv:2503.02410.")


def mask_volume_mm3(path) -> float:
    """Volume of a mask in mm^3: voxels > 0 times the voxel volume (from the header zooms)."""
    img = nb.load(str(path))
    voxel_mm3 = float(np.prod(img.header.get_zooms()[:3]))
    return float(np.count_nonzero(np.asanyarray(img.dataobj))) * voxel_mm3


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def table(header, rows: Iterable[Iterable], numeric=()) -> str:
    """An HTML table (``header`` None: no header row); cells are escaped unless given as
    ``("html", markup)``."""
    def cell(index, value, tag):
        cls = ' class="num"' if index in numeric and tag == "td" else ""
        text = value[1] if isinstance(value, tuple) and value[0] == "html" else esc(value)
        return f"<{tag}{cls}>{text}</{tag}>"

    head = "" if header is None else \
        "<thead><tr>" + "".join(cell(i, h, "th") for i, h in enumerate(header)) + "</tr></thead>"
    body = "".join("<tr>" + "".join(cell(i, v, "td") for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def figure(src: str, caption: str, alt: str = "") -> str:
    return (f'<figure><img src="{esc(src)}" alt="{esc(alt or caption)}" loading="lazy">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def page(title: str, sections: List[tuple]) -> str:
    """A whole HTML page: ``sections`` are ``(anchor, heading, body_html)``."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{esc(a)}"><h2>{esc(h)}</h2>{b}</section>'
                   for a, h, b in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><nav>{nav}</nav>"
            f"<main><h1>{esc(title)}</h1>{body}</main></body></html>\n")


def report_figures(html_file) -> List[Path]:
    """The image files an HTML report links (``<img src>``), resolved next to the page."""
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

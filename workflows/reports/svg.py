"""SVG reportlets: matplotlib figures saved as SVG, and the two-layer "flicker" of nipreps.

A flicker is one SVG holding two drawings of the same size and cuts (e.g. the template and the
image registered to it). The top layer's opacity is animated by CSS alone (no JavaScript), so
the page stays a static file: the animation is paused until the pointer rests on the figure,
as in fMRIPrep's reports.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..niftiio import write_text_atomic

#: the top layer's class; a page (or a test) can hide it to see the bottom layer alone
FOREGROUND = "nv-foreground"
FLICKER_CSS = f"""
@keyframes nv-flicker {{ 0%, 49.99% {{ opacity: 1; }} 50%, 100% {{ opacity: 0; }} }}
.{FOREGROUND} {{ animation: nv-flicker 2s linear 0s infinite paused; }}
svg:hover .{FOREGROUND} {{ animation-play-state: running; }}
"""
_OPEN = re.compile(r"<svg\b[^>]*>", re.S)
_SIZE = re.compile(r'\s(width|height|viewBox)="([^"]*)"')


def figure_svg(figure) -> str:
    """A matplotlib figure as SVG text: reproducible ids, no date (same figure, same bytes)."""
    import io

    import matplotlib
    import matplotlib.pyplot as plt

    stream = io.StringIO()
    try:
        with matplotlib.rc_context({"svg.hashsalt": "neuroverse3d", "svg.fonttype": "path"}):
            figure.savefig(stream, format="svg", facecolor=figure.get_facecolor(),
                           metadata={"Date": None})
    finally:
        plt.close(figure)
    return stream.getvalue()


def save_svg(figure, out_svg) -> Path:
    """Write a matplotlib figure to ``out_svg`` atomically; return the path."""
    out_svg = Path(out_svg)
    out_svg.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(out_svg, figure_svg(figure))


def _parts(svg_text: str):
    """(attributes of the root ``<svg>`` we keep, its inner markup)."""
    opening = _OPEN.search(svg_text)
    end = svg_text.rfind("</svg>")
    if opening is None or end < opening.end():
        raise ValueError("not an SVG document")
    attributes = dict(_SIZE.findall(opening.group(0)))
    return attributes, svg_text[opening.end():end]


def _prefix_ids(markup: str, prefix: str) -> str:
    """Give every ``id`` (and its references) a prefix, so two drawings can share a document."""
    markup = re.sub(r'\bid="', f'id="{prefix}', markup)
    markup = re.sub(r"url\(#", f"url(#{prefix}", markup)
    return re.sub(r'(\b(?:xlink:)?href=")#', rf"\1#{prefix}", markup)


def flicker_svg(bottom: str, top: str, out_svg, titles=("", "")) -> Path:
    """Write one SVG with ``bottom`` and ``top`` (SVG texts of equal size) as two layers.

    ``top`` is shown first; resting the pointer on the figure alternates the layers every
    second. ``titles``: tooltips of the two layers.
    """
    size, bottom_inner = _parts(bottom)
    _, top_inner = _parts(top)
    header = " ".join(f'{key}="{value}"' for key, value in size.items())
    tips = [f"<title>{t}</title>" if t else "" for t in titles]
    text = (f'<?xml version="1.0" encoding="utf-8" standalone="no"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" '
            f'xmlns:xlink="http://www.w3.org/1999/xlink" version="1.1" {header}>\n'
            f"<style>{FLICKER_CSS}</style>\n"
            f'<g class="nv-background">{tips[0]}{_prefix_ids(bottom_inner, "bg-")}</g>\n'
            f'<g class="{FOREGROUND}">{tips[1]}{_prefix_ids(top_inner, "fg-")}</g>\n</svg>\n')
    out_svg = Path(out_svg)
    out_svg.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(out_svg, text)

#!/usr/bin/env python3
"""Render report pages in headless Chromium and save screenshots (PNG) to look at.

    python scripts/screenshot_report.py OUTPUT_DIR/sub-01.html SHOTS_DIR

Writes ``SHOTS_DIR/<page>.png`` (the page as a reader sees it first), and for every flicker
reportlet of the page two PNGs, ``<figure>_top.png`` and ``<figure>_bottom.png``: the SVG as it
is (top layer shown) and with its top layer hidden, i.e. the two frames the flicker alternates.
Needs Debian's ``chromium`` (or ``CHROMIUM=/path/to/binary``); exits 66 without it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

from neuroverse_bids.workflows.reports import report_figures
from neuroverse_bids.workflows.reports.svg import FOREGROUND

WINDOW = (1280, 2000)


def chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or \
        shutil.which("chromium-browser")
    if not found:
        raise FileNotFoundError("chromium not found: apt-get install chromium (Debian) or set "
                                "CHROMIUM=/path/to/chromium")
    return found


def screenshot(page: Path, out_png: Path, window=WINDOW, timeout: float = 120) -> Path:
    """One headless Chromium screenshot of ``page`` (a local file) into ``out_png``."""
    out_png = Path(out_png).absolute()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nv3d-chromium-") as profile:
        command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                   "--disable-background-networking", "--disable-component-update",
                   "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
                   f"--screenshot={out_png}", f"--window-size={window[0]},{window[1]}",
                   Path(page).absolute().as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not out_png.is_file():
        raise RuntimeError(f"chromium failed on {page} ({result.returncode}): "
                           f"{result.stderr[-2000:]}")
    return out_png


def hide_top_layer(svg: Path, out_svg: Path) -> Path:
    """A copy of a flicker SVG that shows its bottom layer only."""
    text = svg.read_text()
    rule = f".{FOREGROUND} {{ animation: none !important; opacity: 0 !important; }}"
    out_svg.write_text(text.replace("</style>", rule + "</style>", 1))
    return out_svg


def screenshot_report(page, shots_dir) -> List[Path]:
    """The page's screenshot, then both frames of each of its flicker SVGs."""
    page, shots_dir = Path(page), Path(shots_dir)
    shots = [screenshot(page, shots_dir / f"{page.stem}.png")]
    for svg in report_figures(page):
        if svg.suffix != ".svg" or FOREGROUND not in svg.read_text():
            continue
        shots.append(screenshot(svg, shots_dir / f"{svg.stem}_top.png", window=(1280, 900)))
        with tempfile.TemporaryDirectory() as tmp:
            bottom = hide_top_layer(svg, Path(tmp) / svg.name)
            shots.append(screenshot(bottom, shots_dir / f"{svg.stem}_bottom.png",
                                    window=(1280, 900)))
    return shots


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 64
    try:
        shots = screenshot_report(Path(argv[0]), Path(argv[1]))
    except FileNotFoundError as error:
        print(f"screenshot_report: {error}", file=sys.stderr)
        return 66
    print("\n".join(str(s) for s in shots))
    return 0


if __name__ == "__main__":
    sys.exit(main())

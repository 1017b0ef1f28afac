#!/usr/bin/env python3
"""Render report pages in headless Chromium and save screenshots (PNG) to look at.

    python scripts/screenshot_report.py OUTPUT_DIR/sub-01.html SHOTS_DIR

Writes ``SHOTS_DIR/<page>.png`` (the page as a reader sees it first), and for every flicker
reportlet of the page two PNGs, ``<figure>_top.png`` and ``<figure>_bottom.png``: the two
frames its CSS animation alternates, taken 0.5 s and 1.5 s into the animation's cycle.
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


def flicker_frame(svg: Path, seconds: float, out_svg: Path) -> Path:
    """A copy of a flicker SVG whose own animation runs and is ``seconds`` into its cycle when
    the page opens (as if the pointer had rested on it that long): 0.5 s shows the top layer,
    1.5 s the bottom one."""
    rule = (f".{FOREGROUND} {{ animation-play-state: running !important; "
            f"animation-delay: {-seconds}s !important; }}")
    out_svg.write_text(svg.read_text().replace("</style>", rule + "</style>", 1))
    return out_svg


def screenshot_report(page, shots_dir) -> List[Path]:
    """The page's screenshot, then both frames of each of its flicker SVGs."""
    page, shots_dir = Path(page), Path(shots_dir)
    shots = [screenshot(page, shots_dir / f"{page.stem}.png")]
    for svg in report_figures(page):
        if svg.suffix != ".svg" or FOREGROUND not in svg.read_text():
            continue
        for layer, seconds in (("top", 0.5), ("bottom", 1.5)):
            with tempfile.TemporaryDirectory() as tmp:
                frame = flicker_frame(svg, seconds, Path(tmp) / svg.name)
                shots.append(screenshot(frame, shots_dir / f"{svg.stem}_{layer}.png",
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

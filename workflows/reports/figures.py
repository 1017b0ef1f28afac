"""Report figures (PNG, matplotlib Agg backend, nilearn slicers).

Every function writes one PNG atomically and returns its path. Images are drawn in world (RAS)
coordinates, so oblique or non-RAS volumes show in the usual orientation; masks are drawn as
outlines at 0.5. Mosaics show sagittal (x), coronal (y) and axial (z) rows of ``cuts`` slices.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: reports are drawn without a display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from ..niftiio import write_atomic  # noqa: E402

#: outline colours, one per structure, cycled
COLOURS = ("#ff1744", "#00e5ff", "#ffea00", "#76ff03", "#ff9100", "#d500f9")
COLOUR_NAMES = ("red", "cyan", "yellow", "green", "orange", "purple")
DPI = 90


def _save(figure, out_png, facecolor="black") -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(out_png, lambda tmp: figure.savefig(tmp, dpi=DPI, facecolor=facecolor))
    finally:
        plt.close(figure)
    return out_png


def _load(image):
    import nibabel as nb

    img = nb.load(str(image)) if isinstance(image, (str, os.PathLike)) else image
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    return nb.Nifti1Image(data, img.affine)


def _has_voxels(img) -> bool:
    return bool(np.any(np.asanyarray(img.dataobj) > 0.5))


def _anat(img, figure, rect, mode, cuts, title=None, vmax=None):
    from nilearn import plotting

    data = np.asanyarray(img.dataobj)
    if vmax is None:
        inside = data[data > 0]
        vmax = float(np.percentile(inside, 99.5)) if inside.size else 1.0
    return plotting.plot_anat(img, display_mode=mode, cut_coords=cuts, figure=figure, axes=rect,
                              title=title, annotate=True, draw_cross=False, colorbar=False,
                              dim=0, vmin=0, vmax=vmax or 1.0, black_bg=True)


def outline_mosaic(image, masks: Dict[str, object], out_png, cuts: int = 6,
                   title: Optional[str] = None) -> Path:
    """``image`` with each mask's outline (``{name: image}``), sagittal/coronal/axial rows."""
    img = _load(image)
    figure = plt.figure(figsize=(cuts * 1.6, 3 * 1.6 + 0.3), facecolor="black")
    rows = (("x", 2 / 3), ("y", 1 / 3), ("z", 0.0))
    for index, (mode, bottom) in enumerate(rows):
        display = _anat(img, figure, [0, bottom, 1, 1 / 3 - 0.01], mode, cuts,
                        title=title if index == 0 else None)
        for (name, mask), colour in zip(masks.items(), COLOURS * 8):
            mask_img = _load(mask)
            if _has_voxels(mask_img):
                display.add_contours(mask_img, levels=[0.5], colors=[colour], linewidths=1.2)
    return _save(figure, out_png)


def before_after(before, after, out_png, cuts: int = 6, labels=("before", "after")) -> Path:
    """Two rows of axial slices at the same cuts: ``before`` (e.g. the input) and ``after``."""
    from nilearn.plotting import find_cut_slices

    first, second = _load(before), _load(after)
    coords = list(find_cut_slices(first, direction="z", n_cuts=cuts))
    figure = plt.figure(figsize=(cuts * 1.6, 2 * 1.6 + 0.3), facecolor="black")
    for img, bottom, label in ((first, 0.5, labels[0]), (second, 0.0, labels[1])):
        _anat(img, figure, [0, bottom, 1, 0.49], "z", coords, title=label)
    return _save(figure, out_png)


def context_pair(image, labels: Sequence, out_png, title: Optional[str] = None) -> Path:
    """A thumbnail of one context pair: the image with its label outlines (orthogonal view)."""
    img = _load(image)
    figure = plt.figure(figsize=(4.8, 1.9), facecolor="black")
    display = _anat(img, figure, [0, 0, 1, 1], "ortho", None, title=title)
    for label, colour in zip(labels, COLOURS * 8):
        label_img = _load(label)
        if _has_voxels(label_img):
            display.add_contours(label_img, levels=[0.5], colors=[colour], linewidths=1)
    return _save(figure, out_png)


def volume_distributions(values: Dict[str, Sequence[float]], flags: Dict[str, Sequence[bool]],
                         out_png, labels: Optional[Sequence[str]] = None,
                         units: str = "mm$^3$") -> Path:
    """One panel per structure: box plot and jittered points; flagged points in red, named
    by ``labels`` (one per point)."""
    names = list(values)
    columns = min(len(names), 4)
    rows = int(np.ceil(len(names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows),
                                squeeze=False, facecolor="white")
    rng = np.random.default_rng(0)  # fixed jitter: the same table gives the same picture
    for axis, name in zip(axes.flat, names):
        data = np.asarray(values[name], dtype=float)
        bad = np.asarray(flags[name], dtype=bool)
        finite = np.isfinite(data)
        if finite.any():
            axis.boxplot(data[finite], widths=0.5, showfliers=False)
        jitter = 1 + rng.uniform(-0.12, 0.12, data.size)
        axis.scatter(jitter[finite & ~bad], data[finite & ~bad], s=14, color="#1565c0", zorder=3)
        axis.scatter(jitter[finite & bad], data[finite & bad], s=30, color="#c62828",
                     marker="D", zorder=4)
        for index in np.flatnonzero(finite & bad):
            if labels is not None:
                axis.annotate(str(labels[index]), (jitter[index], data[index]), fontsize=8,
                              color="#c62828", xytext=(6, 0), textcoords="offset points",
                              va="center")
        axis.set_title(name)
        axis.set_xticks([])
        axis.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        axis.set_ylabel(units)
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    figure.tight_layout()
    return _save(figure, out_png, facecolor="white")

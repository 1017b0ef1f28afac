"""Report figures (matplotlib Agg backend, nilearn slicers): SVG reportlets, one PNG chart.

Every function writes one file atomically and returns its path. Images are drawn in world (RAS)
coordinates, so oblique or non-RAS volumes show in the usual orientation; masks are drawn as
outlines at 0.5. Mosaics show sagittal (x), coronal (y) and axial (z) rows of ``cuts`` slices;
the brain images stay raster inside the SVG, the outlines are vector paths.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: reports are drawn without a display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.cm  # noqa: E402
import matplotlib.colors  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from ..niftiio import write_atomic  # noqa: E402
from .svg import figure_svg, flicker_svg, save_svg  # noqa: E402

#: outline colours, one per structure, cycled
COLOURS = ("#ff1744", "#00e5ff", "#ffea00", "#76ff03", "#ff9100", "#d500f9")
COLOUR_NAMES = ("red", "cyan", "yellow", "green", "orange", "purple")
DPI = 90
#: heat maps (spread): perceptually uniform
HEAT = "inferno"
#: mosaic rows: sagittal, coronal, axial
ROWS = ("x", "y", "z")


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


def cut_coords(image, count: int, rows: Sequence[str] = ROWS) -> Dict[str, List[float]]:
    """``count`` evenly spaced world coordinates (mm) per axis in ``rows``, inside the
    extent (10% to 90%; the extent spans 99% of the voxels, so stray ones do not widen it) of
    ``image``'s foreground: voxels > 0.5 of a mask, voxels above a quarter of the 99th
    percentile of an intensity image (not its noise)."""
    img = _load(image)
    data = np.asanyarray(img.dataobj)
    binary = bool(np.isin(data, (0, 1)).all())
    positive = data[data > 0]
    level = 0.5 if binary or not positive.size else 0.25 * float(np.percentile(positive, 99))
    ijk = np.argwhere(data > level)
    if ijk.size == 0:  # an empty mask: the whole field of view
        ijk = np.array([[0, 0, 0], np.asarray(data.shape[:3]) - 1])
    world = ijk[:: max(1, len(ijk) // 200_000)] @ img.affine[:3, :3].T + img.affine[:3, 3]
    low, high = np.percentile(world, 0.5, axis=0), np.percentile(world, 99.5, axis=0)
    return {axis: [float(v) for v in np.linspace(low[a] + 0.1 * (high[a] - low[a]),
                                                 high[a] - 0.1 * (high[a] - low[a]), count)]
            for a, axis in enumerate("xyz") if axis in rows}


def _mosaic(image, masks: Dict[str, object], cuts: Dict[str, List[float]], title=None,
            heat: Optional[Dict] = None):
    """A figure: one row of slices per axis of ``cuts``, masks drawn as outlines at 0.5;
    ``heat`` (``img``, ``threshold``, ``vmax``): a heat map over the slices."""
    img = _load(image)
    data = np.asanyarray(img.dataobj)
    inside = data[data > 0]
    vmax = float(np.percentile(inside, 99.5)) if inside.size else 1.0
    outlines = [(m, c) for m, c in zip(map(_load, masks.values()), COLOURS * 8) if _has_voxels(m)]
    rows, count = list(cuts), max(len(c) for c in cuts.values())
    figure = plt.figure(figsize=(count * 1.6, len(rows) * 1.6 + 0.3), facecolor="black")
    height, width = 1 / len(rows), 1 if heat is None else 0.93
    for index, axis in enumerate(rows):
        display = _anat(img, figure, [0, 1 - (index + 1) * height, width, height - 0.01], axis,
                        cuts[axis], title=title if index == 0 else None, vmax=vmax)
        for mask_img, colour in outlines:
            display.add_contours(mask_img, levels=[0.5], colors=[colour], linewidths=1.2)
        if heat is not None:
            display.add_overlay(heat["img"], threshold=heat["threshold"], cmap=HEAT,
                                vmin=0, vmax=heat["vmax"])
    if heat is not None:  # one colour bar beside all rows
        scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, heat["vmax"]), HEAT)
        bar = figure.colorbar(scale, cax=figure.add_axes([0.945, 0.06, 0.015, 0.88]))
        bar.ax.tick_params(colors="white", labelsize=8)
        bar.outline.set_edgecolor("white")
    return figure


def contours(image, masks: Dict[str, object], out_svg, cuts: int = 6,
             rows: Sequence[str] = ROWS, title: Optional[str] = None) -> Path:
    """SVG: ``image`` with the outline of each mask (``{name: image}``, colours in order of
    :data:`COLOURS`), one row of ``cuts`` slices per axis in ``rows``, cut through the masks."""
    union = _union(list(masks.values())) if masks else _load(image)
    return save_svg(_mosaic(image, masks, cut_coords(union, cuts, rows), title), out_svg)


def spread(image, spreads: Sequence[object], out_svg, masks: Dict[str, object] = None,
           cuts: int = 6, rows: Sequence[str] = ROWS, threshold: float = 0.05,
           title: Optional[str] = None) -> Path:
    """SVG: the largest of ``spreads`` (the ensemble members' per-voxel standard deviations,
    one image per structure on ``image``'s grid) as a heat map (:data:`HEAT`, 0 to the
    largest value, one colour bar) over ``image``; voxels below ``threshold`` stay transparent
    so the anatomy shows. Same rows and cuts as :func:`contours` through ``masks`` (else
    through ``image``)."""
    import nibabel as nb

    loaded = [_load(s) for s in spreads]
    largest = np.max([np.asanyarray(s.dataobj) for s in loaded], axis=0)
    heat = nb.Nifti1Image(largest.astype(np.float32), loaded[0].affine)
    vmax = max(float(largest.max()), 2 * threshold)
    union = _union(list(masks.values())) if masks else _load(image)
    figure = _mosaic(image, {}, cut_coords(union, cuts, rows), title,
                     heat={"img": heat, "threshold": threshold, "vmax": vmax})
    return save_svg(figure, out_svg)


def flicker(bottom, top, out_svg, outline=None, cuts: int = 6, rows: Sequence[str] = ROWS,
            titles: Sequence[str] = ("", "")) -> Path:
    """SVG flicker of two images in the same space, drawn at the same cuts (through
    ``outline`` when given, else through ``bottom``), each with ``outline``'s contour."""
    masks = {"outline": outline} if outline is not None else {}
    coords = cut_coords(outline if outline is not None else bottom, cuts, rows)
    layers = [figure_svg(_mosaic(image, masks, coords, title))
              for image, title in ((bottom, titles[0]), (top, titles[1]))]
    return flicker_svg(layers[0], layers[1], out_svg, titles=titles)


def _union(masks):
    """One image: voxels > 0.5 in any of ``masks`` (all on the first one's grid)."""
    import nibabel as nb

    first = _load(masks[0])
    data = np.zeros(first.shape, bool)
    for mask in masks:
        values = np.asanyarray(_load(mask).dataobj)
        if values.shape == data.shape:
            data |= values > 0.5
    return nb.Nifti1Image(data.astype(np.float32), first.affine)


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

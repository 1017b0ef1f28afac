"""Reportlets: the figures and facts of one image and of one context set, from explicit inputs.

:func:`image_reportlets` and :func:`context_reportlet` are what the report nodes
(:mod:`..interfaces.reports`) run: everything they draw or state comes from their arguments
(the source image, the transform, the masks or generated images, the ICL node's ``info``, the
derivatives written), never from the work folder. They return plain dicts ("facts") that the
subject page is rendered from and that are saved beside it, so pages can be rebuilt later.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..derivative_names import parse_bids_name
from . import figures
from .common import mask_volume_mm3


def figures_dir(output_dir, subject: str) -> Path:
    """``<output_dir>/sub-<label>/figures``: the reportlets and the saved facts."""
    return Path(output_dir) / f"sub-{subject}" / "figures"


def source_stem(source_file) -> str:
    """The source's entities without its suffix, e.g. ``sub-01_ses-1_run-2``."""
    name = Path(source_file).name
    return name.split(".")[0].rsplit("_", 1)[0]


def _relative(path, output_dir) -> str:
    return Path(path).relative_to(output_dir).as_posix()


def _dataset_path(source_file, subject: str) -> str:
    """``sub-01/anat/sub-01_T1w.nii.gz``: the source's path inside its BIDS dataset."""
    path = Path(source_file).absolute()
    for parent in path.parents:
        if parent.name == f"sub-{subject}":
            return path.relative_to(parent.parent).as_posix()
    return path.name


def _derivative(derivatives: Sequence[str], **wanted) -> Optional[str]:
    """The native-space derivative (no ``space-``) whose entities include ``wanted``."""
    for path in derivatives:
        try:
            entities = parse_bids_name(path)
        except ValueError:
            continue
        if "space" not in entities and all(entities.get(k) == v for k, v in wanted.items()):
            return path
    return None


def image_reportlets(*, output_dir, source_file, task: str, output_names: Sequence[str],
                     info: Dict, derivatives: Sequence[str], forward_transform=None,
                     template_file=None, template_mask=None, template: str = "template",
                     native_masks: Sequence[str] = (), native_outputs: Sequence[str] = (),
                     native_spread: Sequence[str] = ()) -> Dict:
    """Draw one image's reportlets into ``sub-<label>/figures/``; return its facts.

    Registration: the image resampled into template space through ``forward_transform``,
    flickering against ``template_file`` (outline: ``template_mask``). Segmentation: the
    outlines of ``native_masks`` (one per name, in order) over the native image, and each
    structure's volume (mm^3). Generation: each of ``native_outputs`` flickering against the
    native image. ``derivatives``: the files the run stored for this image (linked from the
    page, so they exist before the page names them). ``native_spread`` (ensembles only, one
    per name): the members' spread, drawn as one heat map (the largest spread across the
    names) at the cuts of the outlines; only then do the facts hold ``spread``.
    """
    from ..geometry import resample

    output_dir = Path(output_dir).absolute()
    entities = parse_bids_name(source_file)
    stem, suffix = source_stem(source_file), entities["suffix"]
    folder = figures_dir(output_dir, entities["sub"])
    derivatives = [str(Path(d).absolute()) for d in derivatives]
    facts = {"source": _dataset_path(source_file, entities["sub"]),
             "source_file": str(source_file), "stem": stem, "suffix": suffix,
             "info": dict(info), "derivatives": [_relative(d, output_dir) for d in derivatives],
             "registration": None, "segmentation": None, "structures": [], "generated": []}

    if forward_transform and template_file:
        with tempfile.TemporaryDirectory(prefix="nv3d-report-") as tmp:
            registered = resample(source_file, template_file, forward_transform,
                                  Path(tmp) / "registered.nii.gz", interpolation="linear")
            svg = figures.flicker(template_file, registered,
                                  folder / f"{stem}_desc-registration_{suffix}.svg",
                                  outline=template_mask or None,
                                  titles=(f"template {template}", f"{stem} in {template} space"))
        facts["registration"] = _relative(svg, output_dir)

    if task == "segmentation":
        masks = dict(zip(output_names, native_masks))
        for name, mask in masks.items():
            stored = _derivative(derivatives, desc=name, suffix="mask")
            facts["structures"].append({
                "name": name, "volume_mm3": round(mask_volume_mm3(mask), 3),
                "file": _relative(stored, output_dir) if stored else None})
        if masks:
            svg = figures.contours(source_file, masks,
                                   folder / f"{stem}_desc-segmentation_{suffix}.svg")
            facts["segmentation"] = _relative(svg, output_dir)
    else:
        for name, generated in zip(output_names, native_outputs):
            stored = _derivative(derivatives, desc=name)
            svg = figures.flicker(source_file, generated,
                                  folder / f"{stem}_desc-{name}_{suffix}.svg",
                                  titles=(f"{stem} (input)", f"{name} (output)"))
            facts["generated"].append({"name": name, "figure": _relative(svg, output_dir),
                                       "file": _relative(stored, output_dir) if stored else None})
    if native_spread:
        masks = dict(zip(output_names, native_masks)) if task == "segmentation" else None
        svg = figures.spread(source_file, list(native_spread),
                             folder / f"{stem}_desc-spread_{suffix}.svg", masks=masks)
        facts["spread"] = _relative(svg, output_dir)
    return facts


def context_reportlet(*, output_dir, subject: str, context_set, grid_reference, task: str,
                      output_names: Sequence[str], suffix: str = "T1w") -> Dict:
    """Draw the first pair of the stacked context set (``context_set``: npz with ``images``
    [L, ...], ``outputs`` [K, L, ...], ``subjects`` [L]) on the model grid (affine of
    ``grid_reference``), as the model saw it; return ``dict(subjects, figure)``.

    A pooled set (``--context-selection similar``, ``--ensemble``) holds the whole pool, the
    subject included; the ICL node excludes it, so the page lists and draws only the others."""
    import nibabel as nb
    import numpy as np

    output_dir = Path(output_dir).absolute()
    with np.load(context_set) as stack:
        pool: List[str] = [str(s) for s in stack["subjects"]]
        keep = [i for i, label in enumerate(pool) if label != subject] or [0]
        subjects = [pool[i] for i in keep]
        image, outputs = stack["images"][keep[0]], stack["outputs"][:, keep[0]]
    affine = nb.load(str(grid_reference)).affine
    image_img = nb.Nifti1Image(image.astype(np.float32), affine)
    out_svg = figures_dir(output_dir, subject) / f"sub-{subject}_desc-context_{suffix}.svg"
    if task == "segmentation":
        masks = {name: nb.Nifti1Image(o.astype(np.float32), affine)
                 for name, o in zip(output_names, outputs)}
        svg = figures.contours(image_img, masks, out_svg, title=f"context sub-{subjects[0]}")
    else:
        svg = figures.flicker(image_img, nb.Nifti1Image(outputs[0].astype(np.float32), affine),
                              out_svg, rows=("z",), titles=("context input", "context output"))
    return {"subjects": subjects, "figure": _relative(svg, output_dir)}

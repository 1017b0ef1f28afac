"""The run's template space and the model grid in it: which template, its files (through
TemplateFlow, never downloading) and the grid reference and mask images the workflow reads."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

from .workflows.plan import TemplateSpace


def resolve_template(requested: Optional[str], model) -> str:
    """``--template``, else the template space the model was trained in, else the default."""
    from .model.spaces import DEFAULT_TEMPLATE

    return requested or (model.metadata.get("grid") or {}).get("template") or DEFAULT_TEMPLATE


def template_space(template_id: str, grid: Dict, work_dir: Path, with_grid_mask: bool = False
                   ) -> Tuple[TemplateSpace, Optional[Path]]:
    """The template's files (:func:`~.workflows.templates.resolve_template_files`) and the
    model grid ``grid`` (``shape``, ``voxel_size_mm``) in it, written under
    ``<work_dir>/grid``; ``with_grid_mask``: also the brain mask on that grid (returned as the
    second value) for strategies that compare images."""
    from .workflows.templates import resolve_template_files

    files = resolve_template_files(template_id, private_home=work_dir / "templateflow")
    folder = work_dir / "grid"
    reference = write_grid_reference(files, grid, folder / f"tpl-{template_id}_grid.nii.gz")
    space = TemplateSpace(name=template_id, t1w=str(files["t1w"]),
                          brain_mask=str(files["brain_mask"]), grid_reference=str(reference))
    mask = (write_grid_mask(space, folder / f"tpl-{template_id}_grid_mask.nii.gz")
            if with_grid_mask else None)
    return space, mask


def write_grid_reference(template_files: Dict, grid: Dict, path: Path) -> Path:
    """The model grid in template space, rewritten only when it changed (keeps caches valid)."""
    import nibabel as nb
    import numpy as np

    from .workflows.geometry import model_grid
    from .workflows.niftiio import write_atomic

    reference = model_grid(nb.load(str(template_files["brain_mask"])), grid["shape"],
                           grid["voxel_size_mm"])
    if path.is_file():
        old = nb.load(str(path))
        if old.shape == reference.shape and np.allclose(old.affine, reference.affine):
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: nb.save(reference, tmp))


def write_grid_mask(space: TemplateSpace, path: Path) -> Path:
    """The template brain mask on the model grid (where image-comparing strategies look)."""
    from .workflows.geometry import resample

    path.parent.mkdir(parents=True, exist_ok=True)
    return resample(space.brain_mask, space.grid_reference, None, path, interpolation="nearest")

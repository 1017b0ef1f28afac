"""Small synthetic test data, drawn with the product's one subject generator.

:func:`phantom_atlas` is a ball phantom standing in for an anatomy source on a tiny grid;
:func:`make_toy_dataset` draws subjects from it with :func:`neuroverse_bids.anatomy.synth.make_subject`
(random affine + smooth deformation, Legendre bias field, noise, the one intensity normaliser)
and writes them as NIfTI files plus a ``neuroverse3d-train`` manifest. Nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import nibabel as nb
import numpy as np
import torch

from neuroverse_bids.anatomy.sources import TISSUE, Atlas
from neuroverse_bids.anatomy.synth import SubjectConfig, make_subject, subject_seed
from neuroverse_bids.model.training.manifest import (DatasetEntry, Manifest, Subject,
                                                     save_manifest)

#: phantom label -> intensity of its T1-like image (index = label; subcortical labels >= 10: 0.7)
T1_TABLE = (0.0, 0.1, 0.2, 0.3, 0.5, 0.9, 0.7)
#: the same tissues with a T2-like contrast (CSF brightest, WM darker than GM)
T2_TABLE = (0.0, 0.05, 0.4, 1.0, 0.6, 0.35, 0.5)
STRUCTURE_T1, STRUCTURE_T2 = 0.7, 0.55
CAUDATE_R, PUTAMEN_L = 15, 16


def ball(shape, centre, radius) -> np.ndarray:
    """Boolean ball of ``radius`` voxels about ``centre`` (voxel coordinates) on a ``shape`` grid."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    return np.sqrt(((grid - np.reshape(centre, (3, 1, 1, 1))) ** 2).sum(0)) <= radius


def _image(dseg: np.ndarray, table, structure: float) -> torch.Tensor:
    image = np.choose(np.clip(dseg, 0, len(table) - 1), table).astype(np.float32)
    image[dseg >= 10] = structure
    return torch.from_numpy(image)


def phantom_atlas(shape: Sequence[int] = (16, 16, 16), voxel_mm: float = 6.0,
                  head: bool = False, t2: bool = False) -> Atlas:
    """Nested balls on a ``shape`` grid: WM core, GM shell, CSF rim, a small Caudate_R (15)
    and Putamen_L (16) beside the centre; with ``head``, the brain shrinks inside a two-layer
    head (labels 1, 2) so that skull stripping has something to remove.

    Radii are in units of ``min(shape) / 16`` voxels. ``t2``: the image has the T2-like
    contrast (same labels), for a registered second modality.
    """
    shape = tuple(int(s) for s in shape)
    unit = min(shape) / 16
    c = np.array(shape) / 2 - 0.5
    layers = ((("head-dark", 7.5), ("head-bright", 6.8), ("CSF", 6.0), ("GM", 5.2), ("WM", 3.5))
              if head else (("CSF", 7.0), ("GM", 6.0), ("WM", 4.0)))
    tissue = np.zeros(shape, np.int16)
    for name, radius in layers:
        tissue[ball(shape, c, radius * unit)] = TISSUE[name]
    dseg = tissue.copy()
    offset, radius = (2.5, 1.5) if head else (3.0, 1.8)
    dseg[ball(shape, c + [0, offset * unit, 0], radius * unit)] = PUTAMEN_L
    dseg[ball(shape, c - [0, offset * unit, 0], radius * unit)] = CAUDATE_R
    image = _image(dseg, T2_TABLE, STRUCTURE_T2) if t2 else _image(dseg, T1_TABLE, STRUCTURE_T1)
    reference = nb.Nifti1Image(np.zeros(shape, np.uint8), np.diag([voxel_mm] * 3 + [1.0]))
    return Atlas("Phantom", image, torch.from_numpy(tissue), torch.from_numpy(dseg), reference)


def make_toy_dataset(root, subjects: int = 6, shape: Sequence[int] = (16, 16, 16), seed: int = 0,
                     name: str = "toy", space: str = "MNI152NLin2009cAsym") -> Path:
    """Write ``subjects`` subjects of the head phantom under ``root``; returns the manifest path.

    Each subject (``sub-XX/anat/sub-XX_{T1w,T2w,dseg,mask}.nii.gz``) is one draw of the subject
    generator; its T2w is the same draw (same generator seed: same deformation, bias and noise)
    of the phantom's T2-like image, so the two modalities are registered. The deformation is
    scaled to the grid (the generator's defaults are for 64^3 grids). Every training task has
    its inputs (labels, brain mask, paired modality, an MNI space).
    """
    root = Path(root)
    t1_atlas, t2_atlas = (phantom_atlas(shape, 1.5, head=True, t2=t2) for t2 in (False, True))
    config = SubjectConfig(deform_voxels=2.0 * min(shape) / 64)
    affine = t1_atlas.reference.affine
    entries = []
    for index in range(subjects):
        sid = f"sub-{index + 1:02d}"
        draw = subject_seed(seed, name, index)
        t1 = make_subject(t1_atlas, "t1", torch.Generator().manual_seed(draw), config)
        t2 = make_subject(t2_atlas, "t1", torch.Generator().manual_seed(draw), config)
        assert torch.equal(t1["dseg"], t2["dseg"])  # one subject, two contrasts
        files = {"T1w": t1["image"], "T2w": t2["image"], "dseg": t1["dseg"],
                 "mask": t1["brain_mask"]}
        folder = root / sid / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        for suffix, volume in files.items():
            nb.save(nb.Nifti1Image(volume.numpy(), affine), str(folder / f"{sid}_{suffix}.nii.gz"))
        rel = f"{sid}/anat/{sid}"
        entries.append(Subject(sid, f"{rel}_T1w.nii.gz", f"{rel}_dseg.nii.gz",
                               f"{rel}_mask.nii.gz", {"T2w": f"{rel}_T2w.nii.gz"}))
    return save_manifest(Manifest([DatasetEntry(name, entries, space)], root), root / "manifest.json")


def load_script(relative: str):
    """A project script that is not a package module (``benchmarks/x.py``, ``scripts/x.py``),
    loaded by path from the repository root."""
    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

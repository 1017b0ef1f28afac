"""Offline anatomy sources and their label maps on a model grid.

Two brains in MNI world coordinates, both installable without internet:

* ``MNI152NLin2009aSym``: the skull-stripped T1w and GM/WM probability maps in nilearn's wheel
  (served through :func:`workflows.templates.fill_templateflow_home`). Labels: CSF (3) = brain
  mask where neither GM nor WM wins, GM (4), WM (5) = argmax of (1 - GM - WM, GM, WM).
* ``Colin27``: Debian's ``mricron-data`` (``ch2.nii.gz`` head, ``ch2bet.nii.gz`` brain,
  ``aal.nii.gz`` AAL atlas). Tissue classes come from a 3-means clustering of the brain's
  intensities (CSF 3, GM 4, WM 5) and of the non-brain head (dark 1, bright 2); twelve AAL
  subcortical structures (10-21) are painted over them.

:func:`atlas_on_grid` brings a source onto the model grid (``workflows.geometry.model_grid`` of
the MNI152 2009a brain mask, the grid the BIDS-App uses with ``--template MNI152NLin2009aSym``):
each class is blurred to the grid's resolution as a soft map, resampled with the one resampler
and the label map is the argmax, so thin structures survive downsampling.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

import nibabel as nb
import numpy as np
import torch
from scipy import ndimage

from ..workflows.errors import MissingInputError
from ..workflows.templates import OFFLINE_TEMPLATE, fill_templateflow_home, get_template

MRICRON_DIRS = ("/usr/share/mricron/templates", "/usr/share/mricron")
MRICRON_FILES = {"head": "ch2.nii.gz", "brain": "ch2bet.nii.gz", "aal": "aal.nii.gz"}

#: the unified label scheme of every generated subject
TISSUE = {"head-dark": 1, "head-bright": 2, "CSF": 3, "GM": 4, "WM": 5}
#: AAL subcortical structures: our label -> (name, AAL value)
AAL_STRUCTURES = {10: ("Hippocampus_L", 37), 11: ("Hippocampus_R", 38),
                  12: ("Amygdala_L", 41), 13: ("Amygdala_R", 42),
                  14: ("Caudate_L", 71), 15: ("Caudate_R", 72),
                  16: ("Putamen_L", 73), 17: ("Putamen_R", 74),
                  18: ("Pallidum_L", 75), 19: ("Pallidum_R", 76),
                  20: ("Thalamus_L", 77), 21: ("Thalamus_R", 78)}
LABEL_NAMES: Dict[int, str] = {**{v: k for k, v in TISSUE.items()},
                               **{k: name for k, (name, _) in AAL_STRUCTURES.items()}}
BRAIN_LABELS = [3, 4, 5, *AAL_STRUCTURES]
SUBCORTICAL = ("Hippocampus", "Amygdala", "Caudate", "Putamen", "Pallidum", "Thalamus")


def structure_groups(labels: Sequence[int]) -> Dict[str, List[int]]:
    """Named evaluation structures (label lists) among ``labels``: brain, tissues, the
    subcortical structures with both hemispheres merged."""
    present = set(int(v) for v in labels)
    groups = {"brain": [v for v in BRAIN_LABELS if v in present]}
    groups.update({name: [v] for name, v in TISSUE.items() if v in present and v >= 3})
    for name in SUBCORTICAL:
        values = [k for k, (n, _) in AAL_STRUCTURES.items() if n.startswith(name) and k in present]
        if values:
            groups[name] = values
    return groups


def resolve_structure(name: str) -> List[int]:
    """Label values of a structure given by group name (``Putamen``) or label name
    (``Putamen_L``), case-insensitive."""
    key = name.lower()
    groups = {k.lower(): v for k, v in structure_groups(LABEL_NAMES).items() if k != "brain"}
    if key in groups:
        return groups[key]
    for value, label in LABEL_NAMES.items():
        if label.lower() == key:
            return [value]
    raise ValueError(f"unknown structure {name!r}; choose from "
                     f"{', '.join(sorted(set(groups) | {n.lower() for n in LABEL_NAMES.values()}))}")


def mricron_dir() -> Path:
    """The folder holding Colin27 and AAL (``$NEUROVERSE3D_MRICRON_DIR`` or Debian's)."""
    candidates = [os.environ.get("NEUROVERSE3D_MRICRON_DIR"), *MRICRON_DIRS]
    for folder in filter(None, candidates):
        if all((Path(folder) / name).is_file() for name in MRICRON_FILES.values()):
            return Path(folder)
    raise MissingInputError("Colin27/AAL not found (ch2.nii.gz, ch2bet.nii.gz, aal.nii.gz); "
                            "install Debian's mricron-data (apt-get install mricron-data) or set "
                            "NEUROVERSE3D_MRICRON_DIR to a folder holding them")


@dataclass
class Source:
    """A brain in MNI world coordinates at its native resolution.

    ``image``: T1w, float; ``tissue``: int label map (tissue classes only); ``structures``:
    label map of structures painted over the tissue (0 elsewhere); ``affine``: voxel -> RAS mm.
    """

    name: str
    image: np.ndarray
    tissue: np.ndarray
    structures: np.ndarray
    affine: np.ndarray
    files: List[str] = field(default_factory=list)


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 30) -> np.ndarray:
    """Sorted cluster centres of 1D ``values`` (Lloyd's algorithm from quantile starts)."""
    values = np.asarray(values, dtype=np.float64)
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        index = np.abs(values[:, None] - centres[None]).argmin(1)
        new = np.array([values[index == j].mean() if np.any(index == j) else centres[j]
                        for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def classify(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre for every value."""
    return np.abs(np.asarray(values, float)[..., None] - centres).argmin(-1)


def load_mni152(work_dir) -> Source:
    """MNI152 2009a (nilearn) with CSF/GM/WM labels; the TemplateFlow copy goes to
    ``work_dir/templateflow``. The T1w is scaled to [0, 1]."""
    home = fill_templateflow_home(Path(work_dir) / "templateflow")
    prefix = home / f"tpl-{OFFLINE_TEMPLATE}" / f"tpl-{OFFLINE_TEMPLATE}_res-1"
    files = {name: f"{prefix}_{name}.nii.gz"
             for name in ("T1w", "desc-brain_mask", "label-GM_probseg", "label-WM_probseg")}
    img = nb.load(files["T1w"])
    t1w, mask, gm, wm = (np.asanyarray(nb.load(path).dataobj, dtype=np.float32)
                         for path in files.values())
    winner = np.stack([1.0 - gm - wm, gm, wm]).argmax(0)
    tissue = np.where(mask > 0, winner + TISSUE["CSF"], 0).astype(np.int16)
    return Source(OFFLINE_TEMPLATE, t1w / t1w.max(), tissue, np.zeros_like(tissue),
                  img.affine, list(files.values()))


def load_colin27(folder=None) -> Source:
    """Colin27 head with 3-means tissue classes and the AAL subcortical structures."""
    folder = Path(folder) if folder else mricron_dir()
    imgs = {key: nb.load(str(folder / name)) for key, name in MRICRON_FILES.items()}
    head, brain_img, aal = (np.asanyarray(imgs[k].dataobj).astype(np.float32)
                            for k in ("head", "brain", "aal"))
    brain = ndimage.binary_fill_holes(brain_img > 0)
    tissue = np.zeros(head.shape, np.int16)
    tissue[brain] = classify(brain_img[brain], kmeans_1d(brain_img[brain], 3)) + TISSUE["CSF"]
    foreground = head > kmeans_1d(head[head > 0], 2)[0] / 2  # air is far below every tissue
    head_mask = ndimage.binary_fill_holes(ndimage.binary_closing(foreground, iterations=2))
    outside = head_mask & ~brain
    tissue[outside] = classify(head[outside], kmeans_1d(head[outside], 2)) + TISSUE["head-dark"]
    structures = np.zeros(head.shape, np.int16)
    for value, (_, aal_value) in AAL_STRUCTURES.items():
        structures[(np.rint(aal) == aal_value) & brain] = value
    return Source("Colin27", head, tissue, structures, imgs["head"].affine,
                  [str(folder / name) for name in MRICRON_FILES.values()])


def grid_reference(shape, voxel_size_mm: float, work_dir) -> nb.Nifti1Image:
    """The model grid of the MNI152 2009a brain mask (what the BIDS-App builds)."""
    from ..workflows.geometry import model_grid

    home = fill_templateflow_home(Path(work_dir) / "templateflow")
    mask = get_template(OFFLINE_TEMPLATE, home=home)["brain_mask"]
    return model_grid(nb.load(str(mask)), shape, voxel_size_mm)


@dataclass
class Atlas:
    """A source on the model grid: torch ``[D, H, W]`` tensors (image float in [0, 1])."""

    name: str
    image: torch.Tensor
    tissue: torch.Tensor
    dseg: torch.Tensor
    reference: nb.Nifti1Image
    files: List[str] = field(default_factory=list)   # the source files (provenance)

    @property
    def labels(self) -> List[int]:
        return [int(v) for v in torch.unique(self.dseg) if v != 0]


def atlas_on_grid(source: Source, reference: nb.Nifti1Image) -> Atlas:
    """Resample ``source`` onto ``reference`` (anti-aliased soft class maps, argmax)."""
    from ..model.intensity import normalise_intensity
    from ..workflows.geometry import resample

    source_mm = float(np.abs(np.linalg.det(source.affine[:3, :3])) ** (1 / 3))
    grid_mm = float(np.abs(np.linalg.det(reference.affine[:3, :3])) ** (1 / 3))
    sigma = max(0.0, 0.42 * (grid_mm / source_mm))  # ~ the grid voxel's box as a Gaussian

    def to_grid(data, tmp):
        smooth = ndimage.gaussian_filter(data.astype(np.float32), sigma) if sigma > 0.5 else data
        img = nb.Nifti1Image(smooth.astype(np.float32), source.affine)
        out = resample(img, reference, None, Path(tmp) / "out.nii.gz", "linear")
        return np.asanyarray(nb.load(str(out)).dataobj).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        image = to_grid(source.image, tmp)
        tissue_values = [0] + sorted(int(v) for v in np.unique(source.tissue) if v)
        tissue = np.asarray(tissue_values)[np.stack(
            [to_grid(source.tissue == v, tmp) for v in tissue_values]).argmax(0)]
        dseg = tissue.copy()
        for value in sorted(int(v) for v in np.unique(source.structures) if v):
            # a structure wins where it covers at least half of the grid voxel
            dseg[to_grid(source.structures == value, tmp) >= 0.5] = value
    dseg[tissue == 0] = 0
    return Atlas(source.name, torch.from_numpy(normalise_intensity(image)),
                 torch.from_numpy(tissue.astype(np.int16)), torch.from_numpy(dseg.astype(np.int16)),
                 reference, list(source.files))

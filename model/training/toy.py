"""A small synthetic dataset for tests and smoke runs: head-like volumes with labels.

Each subject has a random ellipsoid "brain" holding three labelled structures, a bright skull
shell, a brain mask and a registered second contrast ("T2w"). Written as NIfTI files plus a
JSON manifest; nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .manifest import DatasetEntry, Manifest, Subject, save_manifest

T1_INTENSITY = (0.0, 0.45, 0.75, 0.95)   # background-of-brain, then labels 1..3
T2_INTENSITY = (0.0, 0.9, 0.5, 0.25)


def _ellipsoid(grid, centre, radii):
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def make_subject(shape: Sequence[int], rng: np.random.Generator):
    """-> (t1 head, t2 head, labels int16, brain mask uint8), float32 volumes in [0, 1]."""
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    brain = _ellipsoid(grid, rng.uniform(-0.05, 0.05, 3), rng.uniform(0.6, 0.75, 3))
    head = _ellipsoid(grid, (0, 0, 0), (0.9, 0.9, 0.9)) & ~brain
    labels = np.zeros(shape, np.int16)
    for value in (1, 2, 3):
        centre = rng.uniform(-0.3, 0.3, 3)
        labels[_ellipsoid(grid, centre, rng.uniform(0.15, 0.3, 3)) & brain] = value
    smooth = torch.rand(1, 1, 4, 4, 4, generator=torch.Generator().manual_seed(int(rng.integers(1 << 30))))
    texture = F.interpolate(smooth, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0].numpy()
    volumes = []
    for table, skull in ((T1_INTENSITY, 0.6), (T2_INTENSITY, 0.3)):
        vol = np.where(brain, 0.3, 0.0) + np.where(head, skull, 0.0)
        for value in (1, 2, 3):
            vol = np.where(labels == value, table[value], vol)
        vol = vol * (0.85 + 0.3 * texture) + rng.normal(0, 0.01, shape)
        volumes.append(np.clip(vol, 0, 1).astype(np.float32))
    return volumes[0], volumes[1], labels, brain.astype(np.uint8)


def make_toy_dataset(root, subjects: int = 6, shape: Sequence[int] = (16, 16, 16), seed: int = 0,
                     name: str = "toy", space: str = "MNI152NLin2009cAsym") -> Path:
    """Write ``subjects`` synthetic subjects under ``root``; returns the manifest path."""
    import nibabel as nib

    root = Path(root)
    rng = np.random.default_rng(seed)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    entries = []
    for index in range(subjects):
        sid = f"sub-{index + 1:02d}"
        folder = root / sid / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        t1, t2, labels, mask = make_subject(tuple(shape), rng)
        files = {"T1w": t1, "T2w": t2, "dseg": labels, "mask": mask}
        for suffix, data in files.items():
            nib.save(nib.Nifti1Image(data, affine), str(folder / f"{sid}_{suffix}.nii.gz"))
        rel = f"{sid}/anat/{sid}"
        entries.append(Subject(sid, f"{rel}_T1w.nii.gz", f"{rel}_dseg.nii.gz",
                               f"{rel}_mask.nii.gz", {"T2w": f"{rel}_T2w.nii.gz"}))
    return save_manifest(Manifest([DatasetEntry(name, entries, space)], root), root / "manifest.json")

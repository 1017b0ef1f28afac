"""THE synthetic-subject generator: an atlas seen through a random deformation, with a T1w or
a SynthSeg-style image. The training data (``neuroverse3d-make-training-data``), the demo
dataset (``neuroverse3d-demo-data``) and the tests' toy data all draw their subjects here.

A subject is the atlas on its grid seen through a random pose (scale and rotation about the
grid centre) plus a smooth displacement (``model.training.augment.random_smooth_deformation``),
applied with ``warp`` (labels nearest, image trilinear). Its image is either the warped real
T1w (``t1``) or a SynthSeg-style image drawn from the warped label map (``synth``): every label
gets a random mean and standard deviation, then partial-volume blur and gamma. Both then get a
Legendre bias field (``model.degradations.add_bias_field``) and Gaussian noise and go
through the one intensity normaliser. GIN contrast is left to the trainer's augmentation.

Everything is drawn from one ``torch.Generator`` seeded by :func:`subject_seed` (the dataset
seed, the dataset name and the subject index), so a subject is the same whatever the number of
subjects, and subjects of different ``--seed`` values never share a generator seed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
from scipy import ndimage

from ..model.hashing import text_sha256
from ..model.intensity import normalise_intensity
from ..model.training.augment import identity_coords, random_smooth_deformation, rotation_matrix, warp
from ..model.degradations import add_bias_field, uniform
from .sources import BRAIN_LABELS, Atlas

KINDS = ("t1", "synth")


@dataclass
class SubjectConfig:
    """Ranges of the random subject parameters (lengths in grid voxels)."""

    scale: Tuple[float, float] = (0.92, 1.08)        # per axis, about the grid centre
    rotation_deg: float = 8.0                       # per axis, ~ U(-deg, deg)
    deform_voxels: float = 2.0                      # smooth displacement, each component
    deform_points: int = 5                          # control points per axis
    mean: Tuple[float, float] = (0.0, 1.0)          # synth: per-label mean intensity
    std: Tuple[float, float] = (0.01, 0.08)         # synth: per-label standard deviation
    blur_voxels: Tuple[float, float] = (0.0, 0.8)   # synth: partial-volume Gaussian sigma
    log_gamma: float = 0.25                         # synth: gamma = exp(N(0, log_gamma^2))
    bias_scale: Tuple[float, float] = (0.0, 0.3)    # Legendre bias coefficient range, drawn
    noise_std: Tuple[float, float] = (0.0, 0.04)    # Gaussian noise (image in [0, 1])

    def to_dict(self) -> dict:
        return asdict(self)


def subject_seed(seed: int, dataset: str, index: int) -> int:
    """A 62-bit generator seed from (dataset seed, dataset name, subject index)."""
    return int(text_sha256(f"{int(seed)}:{dataset}:{int(index)}", 15), 16)


def random_deformation(shape: Sequence[int], generator: torch.Generator, cfg: SubjectConfig):
    """-> (pose ``[4, 4]``, smooth ``[3, D, H, W]``, displacement ``[3, D, H, W]``), in voxels.

    ``pose`` maps an output voxel p to ``R S (p - c) + c`` (per-axis scale, then rotation,
    about the grid centre c); ``smooth`` is the smooth displacement added to it; ``displacement`` is the
    total, ``out(p) = atlas(p + displacement(p))`` (see ``warp``).
    """
    grid = identity_coords(shape)
    centre = torch.tensor([(s - 1) / 2 for s in shape])
    scale = torch.diag(torch.tensor([uniform(generator, *cfg.scale) for _ in range(3)]))
    angles = [math.radians(uniform(generator, -cfg.rotation_deg, cfg.rotation_deg)) for _ in range(3)]
    matrix = rotation_matrix(angles) @ scale
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = matrix
    pose[:3, 3] = (centre - matrix @ centre).double()
    about = centre.view(3, 1, 1, 1)
    moved = torch.einsum("ij,jdhw->idhw", matrix, grid - about) + about
    smooth = random_smooth_deformation(shape, generator, cfg.deform_voxels, cfg.deform_points)
    return pose, smooth, moved - grid + smooth


def synthesize_image(dseg: torch.Tensor, generator: torch.Generator, cfg: SubjectConfig) -> torch.Tensor:
    """SynthSeg-style image ``[D, H, W]`` from a label map: random Gaussian per label, blur, gamma."""
    image = torch.zeros(dseg.shape)
    for value in torch.unique(dseg).tolist():
        mean, std = uniform(generator, *cfg.mean), uniform(generator, *cfg.std)
        voxels = dseg == value
        image[voxels] = mean + std * torch.randn(int(voxels.sum()), generator=generator)
    sigma = uniform(generator, *cfg.blur_voxels)
    if sigma > 0.05:
        image = torch.from_numpy(ndimage.gaussian_filter(image.numpy(), sigma))
    image = image.clamp_min(0)
    image = image / image.max().clamp_min(1e-6)
    gamma = math.exp(cfg.log_gamma * float(torch.randn((), generator=generator)))
    return image.pow(gamma)


def make_subject(atlas: Atlas, kind: str, generator: torch.Generator,
                 cfg: Optional[SubjectConfig] = None,
                 exclude: Sequence[int] = ()) -> Dict[str, torch.Tensor]:
    """One subject on the atlas grid -> ``image`` float32 [0, 1], ``dseg`` int16, ``brain_mask``
    uint8, and what was drawn: ``pose`` (float64 ``[4, 4]``, output voxel -> atlas voxel before
    the smooth displacement) and ``max_smooth_voxels`` (largest norm of that displacement).

    ``exclude``: label values replaced by the tissue class beneath them *before* the image is
    drawn, so these structures exist neither as labels nor as their own intensity.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown subject kind {kind!r}; choose from {', '.join(KINDS)}")
    cfg = cfg or SubjectConfig()
    dseg = atlas.dseg.clone()
    if exclude:
        hidden = torch.isin(dseg, torch.tensor(list(exclude), dtype=dseg.dtype))
        dseg[hidden] = atlas.tissue[hidden]
    pose, smooth, displacement = random_deformation(dseg.shape, generator, cfg)
    dseg = warp(dseg.float(), displacement, "nearest").round().to(torch.int16)
    if kind == "t1":
        image = warp(atlas.image, displacement, "bilinear").clamp(0, 1)
    else:
        image = synthesize_image(dseg, generator, cfg)
    image = add_bias_field(image, generator, order=3, scale=uniform(generator, *cfg.bias_scale))
    noise = uniform(generator, *cfg.noise_std) * torch.randn(image.shape, generator=generator)
    image = torch.from_numpy(normalise_intensity((image + noise).clamp_min(0).numpy()))
    brain = torch.isin(dseg, torch.tensor(BRAIN_LABELS, dtype=dseg.dtype)).to(torch.uint8)
    return {"image": image, "dseg": dseg, "brain_mask": brain, "pose": pose,
            "max_smooth_voxels": smooth.norm(dim=0).max()}

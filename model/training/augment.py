"""Augmentation of a whole group (context pairs + target) with one random draw.

Volumes are ``[N, D, H, W]`` (N subjects of a group, intensities in [0, 1]). Spatial transforms
move inputs and outputs of every subject together, so geometry agrees inside the group;
intensity transforms change the inputs; label transforms (segmentation only) change the
outputs. One draw of parameters serves the whole group: the task the context shows is the task
the target must solve.

Reusable pieces: :func:`random_smooth_deformation` (displacement field in voxels) and
:func:`warp` (apply it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..degradations import minmax, uniform
from .synthesis import SEGMENTATION


@dataclass
class AugmentConfig:
    """Probabilities (paper values) and ranges of every augmentation."""

    p_affine: float = 0.05
    p_elastic: float = 0.05
    p_flip: float = 0.05
    p_rotation: float = 0.05
    p_shift_scale: float = 0.2
    p_noise: float = 0.1
    p_invert: float = 0.05
    p_gin: float = 0.05
    p_sobel: float = 0.05
    p_mask_invert: float = 0.05
    p_dilate: float = 0.05
    p_erode: float = 0.05
    scale: Tuple[float, float] = (0.9, 1.1)       # affine scale per axis
    shear: float = 0.05                           # affine off-diagonal terms ~ U(-shear, shear)
    translation: float = 0.05                     # fraction of the side length
    rotation_deg: float = 15.0                    # per axis, ~ U(-deg, deg)
    elastic_voxels: float = 3.0                   # max displacement in voxels
    elastic_points: int = 4                       # control points per axis
    intensity_scale: Tuple[float, float] = (0.8, 1.2)
    intensity_shift: Tuple[float, float] = (-0.1, 0.1)
    noise_std: Tuple[float, float] = (0.01, 0.05)
    gin_layers: int = 4
    gin_channels: int = 2

    @classmethod
    def disabled(cls) -> "AugmentConfig":
        return cls(**{name: 0.0 for name in cls.__dataclass_fields__ if name.startswith("p_")})


def _flip(generator: torch.Generator, p: float) -> bool:
    return bool(torch.rand((), generator=generator) < p)


# --------------------------------------------------------------------------------- spatial
def identity_coords(shape: Sequence[int]) -> Tensor:
    """Voxel coordinates ``[3, D, H, W]`` (z, y, x order)."""
    axes = [torch.arange(s, dtype=torch.float32) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def sample_at(volume: Tensor, coords: Tensor, mode: str = "bilinear") -> Tensor:
    """Sample ``volume`` ``[N, D, H, W]`` at voxel coordinates ``[3, D, H, W]``; zeros outside.

    ``mode``: ``bilinear`` (trilinear in 3D) or ``nearest``.
    """
    shape = volume.shape[-3:]
    sizes = torch.tensor([max(s - 1, 1) for s in shape], dtype=coords.dtype).view(3, 1, 1, 1)
    normal = 2.0 * coords / sizes - 1.0
    grid = normal.flip(0).permute(1, 2, 3, 0)[None]  # [1, D, H, W, (x, y, z)]
    grid = grid.expand(volume.shape[0], *grid.shape[1:]).to(volume)
    out = F.grid_sample(volume[:, None], grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out[:, 0]


def random_smooth_deformation(shape: Sequence[int], generator: torch.Generator,
                              max_displacement: float = 3.0, control_points: int = 4) -> Tensor:
    """Smooth random displacement ``[3, D, H, W]`` in voxels, each component in ±max_displacement.

    Uniform random displacements on a ``control_points``^3 lattice, trilinearly upsampled.
    """
    coarse = (torch.rand(3, control_points, control_points, control_points,
                         generator=generator) * 2 - 1) * max_displacement
    return F.interpolate(coarse[None], size=tuple(shape), mode="trilinear", align_corners=True)[0]


def warp(volume: Tensor, displacement: Tensor, mode: str = "bilinear") -> Tensor:
    """``out(p) = volume(p + displacement(p))``; volume ``[D,H,W]`` or ``[N,D,H,W]``."""
    single = volume.dim() == 3
    batch = volume[None] if single else volume
    out = sample_at(batch, identity_coords(batch.shape[-3:]) + displacement, mode)
    return out[0] if single else out


def rotation_matrix(angles_rad: Sequence[float]) -> Tensor:
    """Rotation about the z, y and x axes, composed, ``[3, 3]``."""
    mats = []
    for axis, angle in enumerate(angles_rad):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        m = torch.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        mats.append(m)
    return mats[0] @ mats[1] @ mats[2]


def centred_affine_coords(shape: Sequence[int], matrix: Tensor) -> Tensor:
    """Sampling coordinates ``[3,D,H,W]`` (voxels) of the 3x3 ``matrix`` applied about the
    grid's centre."""
    grid = identity_coords(shape)
    centre = torch.tensor([(s - 1) / 2 for s in shape]).view(3, 1, 1, 1)
    return torch.einsum("ij,jdhw->idhw", matrix, grid - centre) + centre


def random_spatial_transform(shape: Sequence[int], generator: torch.Generator,
                             cfg: AugmentConfig):
    """Draw one transform: (sampling coords ``[3,D,H,W]`` or None, axes to flip)."""
    matrix, offset, coords = torch.eye(3), torch.zeros(3), None
    if _flip(generator, cfg.p_affine):
        scale = torch.tensor([uniform(generator, *cfg.scale) for _ in range(3)])
        shear = (torch.rand(3, 3, generator=generator) * 2 - 1) * cfg.shear
        matrix = (torch.diag(scale) + shear.fill_diagonal_(0)) @ matrix
        offset = torch.tensor([uniform(generator, -cfg.translation, cfg.translation) * s
                               for s in shape])
    if _flip(generator, cfg.p_rotation):
        angles = [math.radians(uniform(generator, -cfg.rotation_deg, cfg.rotation_deg))
                  for _ in range(3)]
        matrix = rotation_matrix(angles) @ matrix
    if not torch.equal(matrix, torch.eye(3)) or offset.any():
        coords = centred_affine_coords(shape, matrix) + offset.view(3, 1, 1, 1)
    if _flip(generator, cfg.p_elastic):
        displacement = random_smooth_deformation(shape, generator, cfg.elastic_voxels, cfg.elastic_points)
        coords = (identity_coords(shape) if coords is None else coords) + displacement
    flips = []
    if _flip(generator, cfg.p_flip):
        flips = [a for a in range(3) if torch.rand((), generator=generator) < 0.5] or [2]
    return coords, flips


def apply_spatial(volume: Tensor, coords, flips, mode: str) -> Tensor:
    if coords is not None:
        volume = sample_at(volume, coords, mode)
    if flips:
        volume = volume.flip([a + volume.dim() - 3 for a in flips])
    return volume


# ------------------------------------------------------------------------------- intensity
def gin(volume: Tensor, generator: torch.Generator, layers: int = 4, channels: int = 2) -> Tensor:
    """GIN random-convolution contrast (Ouyang et al.): a random shallow conv net, same for all N.

    ``[N, D, H, W]`` -> ``[N, D, H, W]`` in [0, 1]: the net's output, rescaled to the input's
    norm, mixed with the input by alpha ~ U(0, 1), then min-max per volume.
    """
    x = volume[:, None]
    width = [1] + [channels] * (layers - 1) + [1]
    for index, (c_in, c_out) in enumerate(zip(width[:-1], width[1:])):
        k = 1 if torch.rand((), generator=generator) < 0.5 else 3
        weight = torch.randn(c_out, c_in, k, k, k, generator=generator) / math.sqrt(c_in * k ** 3)
        bias = torch.randn(c_out, generator=generator) * 0.1
        x = F.conv3d(x, weight.to(x), bias.to(x), padding=k // 2)
        if index < layers - 1:
            x = F.leaky_relu(x, 0.2)
    x = x[:, 0]
    alpha = uniform(generator, 0.0, 1.0)
    norm_in = volume.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    norm_out = x.flatten(1).norm(dim=1).clamp_min(1e-8).view(-1, 1, 1, 1)
    mixed = alpha * x * norm_in / norm_out + (1 - alpha) * volume
    return torch.stack([minmax(v) for v in mixed])


def augment_intensity(inputs: Tensor, generator: torch.Generator, cfg: AugmentConfig) -> Tensor:
    """Shift/scale, Gaussian noise, inversion, GIN on ``[N, D, H, W]``; result in [0, 1]."""
    if _flip(generator, cfg.p_shift_scale):
        scale, shift = uniform(generator, *cfg.intensity_scale), uniform(generator, *cfg.intensity_shift)
        inputs = (inputs * scale + shift).clamp(0, 1)
    if _flip(generator, cfg.p_noise):
        std = uniform(generator, *cfg.noise_std)
        noise = torch.randn(inputs.shape, generator=generator).to(inputs) * std
        inputs = (inputs + noise).clamp(0, 1)
    if _flip(generator, cfg.p_invert):
        inputs = 1.0 - inputs
    if _flip(generator, cfg.p_gin):
        inputs = gin(inputs, generator, cfg.gin_layers, cfg.gin_channels)
    return inputs


# ---------------------------------------------------------------------------------- labels
def sobel_magnitude(masks: Tensor) -> Tensor:
    """3D Sobel gradient magnitude of ``[N, D, H, W]``, divided by its per-volume maximum."""
    derivative = torch.tensor([-1.0, 0.0, 1.0])
    smooth = torch.tensor([1.0, 2.0, 1.0])
    squares = torch.zeros_like(masks)
    for axis in range(3):
        factors = [derivative if a == axis else smooth for a in range(3)]
        kernel = torch.einsum("i,j,k->ijk", *factors)[None, None].to(masks)
        grad = F.conv3d(masks[:, None], kernel, padding=1)[:, 0]
        squares = squares + grad ** 2
    magnitude = squares.sqrt()
    peak = magnitude.flatten(1).amax(1).clamp_min(1e-8).view(-1, 1, 1, 1)
    return magnitude / peak


def dilate(masks: Tensor) -> Tensor:
    """Binary dilation by one voxel (3x3x3 neighbourhood) of ``[N, D, H, W]``."""
    return F.max_pool3d(masks[:, None], 3, stride=1, padding=1)[:, 0]


def erode(masks: Tensor) -> Tensor:
    """Binary erosion by one voxel; voxels outside the volume count as foreground."""
    return 1.0 - dilate(1.0 - masks)


def augment_labels(outputs: Tensor, generator: torch.Generator, cfg: AugmentConfig) -> Tensor:
    """Segmentation task augmentations: Sobel edges, mask inversion, dilation, erosion."""
    if _flip(generator, cfg.p_dilate):
        outputs = dilate(outputs)
    if _flip(generator, cfg.p_erode):
        outputs = erode(outputs)
    if _flip(generator, cfg.p_mask_invert):
        outputs = 1.0 - outputs
    if _flip(generator, cfg.p_sobel):
        outputs = sobel_magnitude(outputs)
    return outputs


def augment_group(inputs: Tensor, outputs: Tensor, task: str, generator: torch.Generator,
                  cfg: AugmentConfig) -> Tuple[Tensor, Tensor]:
    """Augment a group: ``[N, D, H, W]`` inputs and outputs -> same shapes, values in [0, 1]."""
    coords, flips = random_spatial_transform(inputs.shape[-3:], generator, cfg)
    label_mode = "nearest" if task == SEGMENTATION else "bilinear"
    # interpolation weights sum to 1 only up to rounding: clamp back into [0, 1]
    inputs = apply_spatial(inputs, coords, flips, "bilinear").clamp_(0, 1)
    outputs = apply_spatial(outputs, coords, flips, label_mode)
    if label_mode == "bilinear":
        outputs = outputs.clamp_(0, 1)
    inputs = augment_intensity(inputs, generator, cfg)
    if task == SEGMENTATION:
        outputs = augment_labels(outputs, generator, cfg)
    return inputs, outputs

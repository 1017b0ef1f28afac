"""Synthetic degradations of a clean volume, and the one registry of them.

Every degradation takes a volume ``[D, H, W]`` (float, intensities in [0, 1]) and a seeded
``torch.Generator`` and returns a new ``[D, H, W]`` volume in [0, 1]; the same generator state
gives the same result. Parameters follow the Neuroverse3D paper and are configurable through
:class:`SynthesisConfig`.

:data:`DEGRADATIONS` is read by training (restoration tasks and random overlays), by the
BIDS-App's context spec (``--degradation``, the ``desc-`` of restored outputs) and by its ICL
node (synthetic context pairs); it lives beside inference, not in the training package::

    from neuroverse_bids.model.degradations import DEGRADATIONS, degrade
    noisy = degrade("gaussian-noise", clean, torch.Generator().manual_seed(0))
    DEGRADATIONS["gaussian-noise"].restored   # "denoised"
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

@dataclass
class SynthesisConfig:
    """Degradation parameters (paper values by default)."""

    bias_order: int = 3                      # Legendre polynomial degree (total)
    bias_scale: float = 0.3                  # coefficients ~ U(-scale, scale), field = exp(poly)
    noise_std: Tuple[float, float] = (0.15, 0.25)
    salt_pepper_prob: float = 0.04           # fraction of voxels set to 1, same for 0
    perlin_cells: Sequence[int] = (2, 4)     # lattice cells per axis, drawn from this list
    inpaint_fraction: Tuple[float, float] = (0.1, 0.3)
    overlay_prob: float = 0.05               # random task overlapping, per degradation


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One number ~ U(low, high) drawn from ``generator``."""
    return float(low + (high - low) * torch.rand((), generator=generator))


def minmax(volume: Tensor) -> Tensor:
    """Rescale to [0, 1]; clamped, because ``(v - lo) / (hi - lo)`` can round past 1."""
    lo, hi = volume.min(), volume.max()
    return ((volume - lo) / (hi - lo)).clamp_(0, 1) if hi > lo else torch.zeros_like(volume)


def _axis_coords(size: int, dtype=torch.float32) -> Tensor:
    return torch.linspace(-1.0, 1.0, size, dtype=dtype) if size > 1 else torch.zeros(1, dtype=dtype)


def legendre(x: Tensor, degree: int) -> list:
    """``[P_0(x), ..., P_degree(x)]`` by Bonnet's recursion."""
    polys = [torch.ones_like(x), x]
    for n in range(1, degree):
        polys.append(((2 * n + 1) * x * polys[n] - n * polys[n - 1]) / (n + 1))
    return polys[: degree + 1]


def bias_field(shape: Sequence[int], generator: torch.Generator, order: int = 3,
               scale: float = 0.3) -> Tensor:
    """Smooth multiplicative field ``exp(sum c_ijk P_i(z) P_j(y) P_k(x))``, i+j+k <= order."""
    pz, py, px = (legendre(_axis_coords(s), order) for s in shape)
    log_field = torch.zeros(tuple(shape))
    for i in range(order + 1):
        for j in range(order + 1 - i):
            for k in range(order + 1 - i - j):
                c = uniform(generator, -scale, scale)
                log_field += c * pz[i][:, None, None] * py[j][None, :, None] * px[k][None, None, :]
    return torch.exp(log_field)


def add_bias_field(image: Tensor, generator: torch.Generator, order: int = 3,
                   scale: float = 0.3) -> Tensor:
    """Multiply by a random Legendre bias field, rescale so the maximum is 1."""
    biased = image * bias_field(image.shape, generator, order, scale).to(image)
    peak = biased.max()
    return biased / peak if peak > 0 else biased


def add_gaussian_noise(image: Tensor, generator: torch.Generator,
                       std: Tuple[float, float] = (0.15, 0.25)) -> Tensor:
    """Add N(0, s^2) noise, s ~ U(std), then min-max back to [0, 1]."""
    sigma = uniform(generator, *std)
    noise = torch.randn(image.shape, generator=generator) * sigma
    return minmax(image + noise.to(image))


def add_salt_pepper(image: Tensor, generator: torch.Generator, prob: float = 0.04) -> Tensor:
    """Set a fraction ``prob`` of voxels to 1 (salt) and another ``prob`` to 0 (pepper)."""
    u = torch.rand(image.shape, generator=generator).to(image.device)
    out = image.clamp(0, 1)
    out[u < prob] = 1.0
    out[(u >= prob) & (u < 2 * prob)] = 0.0
    return out


def _fade(t: Tensor) -> Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(shape: Sequence[int], generator: torch.Generator, cells: int = 4) -> Tensor:
    """3D gradient (Perlin) noise with ``cells`` lattice cells per axis, values about [-1, 1]."""
    grads = torch.randn(3, cells + 1, cells + 1, cells + 1, generator=generator)
    grads = grads / grads.norm(dim=0, keepdim=True).clamp_min(1e-6)
    index, frac = [], []
    for axis, size in enumerate(shape):
        pos = torch.arange(size, dtype=torch.float32) * cells / size
        cell = pos.floor().long().clamp(max=cells - 1)
        view = [1, 1, 1]
        view[axis] = size
        index.append(cell.view(view))
        frac.append((pos - cell).view(view))
    fades = [_fade(f) for f in frac]
    noise = torch.zeros(tuple(shape))
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                g = grads[:, index[0] + a, index[1] + b, index[2] + c]
                dot = g[0] * (frac[0] - a) + g[1] * (frac[1] - b) + g[2] * (frac[2] - c)
                weight = ((fades[0] if a else 1 - fades[0]) * (fades[1] if b else 1 - fades[1])
                          * (fades[2] if c else 1 - fades[2]))
                noise += weight * dot
    return noise * 2.0


def perlin_mask(shape: Sequence[int], generator: torch.Generator, cells: Sequence[int] = (2, 4),
                fraction: Tuple[float, float] = (0.1, 0.3)) -> Tensor:
    """Boolean blob mask covering a fraction ~ U(fraction) of the volume."""
    n = int(cells[int(torch.randint(len(cells), (1,), generator=generator))])
    noise = perlin_noise(shape, generator, n).flatten()
    keep = uniform(generator, *fraction)
    k = max(1, min(noise.numel(), int(round((1 - keep) * noise.numel()))))
    threshold = noise.kthvalue(k).values
    return (noise > threshold).view(tuple(shape))


def add_inpainting_mask(image: Tensor, generator: torch.Generator, cells: Sequence[int] = (2, 4),
                        fraction: Tuple[float, float] = (0.1, 0.3)) -> Tensor:
    """Zero the voxels under a random Perlin blob mask."""
    mask = perlin_mask(image.shape, generator, cells, fraction).to(image.device)
    return image.masked_fill(mask, 0.0)


def downsample_x2(image: Tensor) -> Tensor:
    """Average-pool by 2 and trilinear-upsample back: a x2 lower resolution (deterministic)."""
    low = F.avg_pool3d(image[None, None], kernel_size=2, stride=2, ceil_mode=True)
    return F.interpolate(low, size=tuple(image.shape), mode="trilinear",
                         align_corners=False)[0, 0].clamp(0, 1)


@dataclass(frozen=True)
class Degradation:
    """One synthetic degradation and the restoration task that undoes it.

    ``name``: the degradation (context spec ``degradation``, ``--degradation``); ``task``: the
    training task whose input it makes (output: the clean image); ``restored``: the ``desc-``
    label of the BIDS-App's restored outputs; ``apply(image, generator, config)``.
    """

    name: str
    task: str
    restored: str
    apply: Callable[[Tensor, torch.Generator, SynthesisConfig], Tensor]


#: name -> :class:`Degradation`, in the order of the training tasks
DEGRADATIONS: Dict[str, Degradation] = {d.name: d for d in (
    Degradation("bias-field", "bias-field", "biascorrected",
                lambda image, g, c: add_bias_field(image, g, c.bias_order, c.bias_scale)),
    Degradation("gaussian-noise", "gaussian-noise", "denoised",
                lambda image, g, c: add_gaussian_noise(image, g, c.noise_std)),
    Degradation("salt-pepper", "salt-pepper", "despeckled",
                lambda image, g, c: add_salt_pepper(image, g, c.salt_pepper_prob)),
    Degradation("inpainting", "inpainting", "inpainted",
                lambda image, g, c: add_inpainting_mask(image, g, c.perlin_cells,
                                                        c.inpaint_fraction)),
    Degradation("downsample-x2", "super-resolution", "superresolved",
                lambda image, g, c: downsample_x2(image)),
)}
#: restoration task -> the degradation that makes its input
TASK_DEGRADATION: Dict[str, Degradation] = {d.task: d for d in DEGRADATIONS.values()}
def degrade(name: str, image: Tensor, generator: torch.Generator,
            config: Optional[SynthesisConfig] = None) -> Tensor:
    """Apply the registered degradation ``name``; deterministic for a seeded generator."""
    if name not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {name!r}; choose from {', '.join(DEGRADATIONS)}")
    return DEGRADATIONS[name].apply(image.float(), generator, config or SynthesisConfig())

"""Training losses and validation metrics.

The released "modified L1" is a smooth L3/L1 loss; for ``d = |pred - target|`` and ``beta``:
``d^3 / (3 beta^2)`` when ``d < beta``, else ``d - 2 beta / 3`` (continuous with a continuous
first derivative at ``d = beta``). Task weights: segmentation 50, generation 1, 2D-to-3D 0.5;
generation tasks add ``gradient_weight`` times the L1 distance of forward differences.
Segmentation may add ``dice_weight`` times a soft Dice loss: the smooth L3/L1 loss is cubic for
errors below ``beta``, so it barely moves a small structure's boundary voxels; Dice does not
depend on how small the structure is.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from .synthesis import SEGMENTATION

TASK_WEIGHTS: Dict[str, float] = {SEGMENTATION: 50.0, "2d-to-3d": 0.5}
GENERATION_WEIGHT = 1.0


def smooth_l3_l1(pred: Tensor, target: Tensor, beta: float = 1.0) -> Tensor:
    """Mean smooth L3/L1 loss over all elements (a scalar)."""
    d = (pred - target).abs()
    small = d.pow(3) / (3 * beta * beta)
    large = d - 2.0 * beta / 3.0
    return torch.where(d < beta, small, large).mean()


def gradient_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Sum over the last three axes of mean |forward difference(pred) - forward difference(target)|."""
    total = pred.new_zeros(())
    for axis in (-3, -2, -1):
        total = total + (pred.diff(dim=axis) - target.diff(dim=axis)).abs().mean()
    return total


def soft_dice_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """``1 - 2 sum(p t) / (sum(p^2) + sum(t^2))`` over ``[B, 1, D, H, W]``, averaged over B.

    The squared denominator keeps it defined for unbounded network outputs; for a binary
    target its minimum (0) is reached exactly at ``pred == target``.
    """
    dims = tuple(range(1, pred.dim()))
    overlap = (pred * target).sum(dims)
    norms = pred.pow(2).sum(dims) + target.pow(2).sum(dims)
    return (1.0 - 2.0 * overlap / (norms + eps)).mean()


def task_weight(task: str) -> float:
    return TASK_WEIGHTS.get(task, GENERATION_WEIGHT)


def task_loss(pred: Tensor, target: Tensor, task: str, gradient_weight: float = 1.0,
              beta: float = 1.0, weights: Optional[Dict[str, float]] = None,
              dice_weight: float = 0.0) -> Tensor:
    """Training loss of one task: ``w_task * (smooth_l3_l1 + [gen] g * gradient_loss)
    + [seg] dice_weight * soft_dice_loss``."""
    weight = (weights or {}).get(task, task_weight(task))
    pred, target = pred.float(), target.float()
    loss = weight * smooth_l3_l1(pred, target, beta)
    if task != SEGMENTATION and gradient_weight:
        loss = loss + weight * gradient_weight * gradient_loss(pred, target)
    if task == SEGMENTATION and dice_weight:
        loss = loss + dice_weight * soft_dice_loss(pred, target)
    return loss


def dice(pred: Tensor, target: Tensor, threshold: float = 0.5, eps: float = 1e-6) -> float:
    """Dice overlap of ``pred > threshold`` and ``target > threshold`` (1 when both are empty)."""
    a, b = pred > threshold, target > threshold
    inter = (a & b).sum().item()
    total = a.sum().item() + b.sum().item()
    return 1.0 if total == 0 else 2.0 * inter / (total + eps)


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB for intensities in [0, data_range]."""
    mse = (pred.float().clamp(0, data_range) - target.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(data_range ** 2 / mse)).item()

"""Calibration and failure prediction for ``neuroverse3d-eval``.

* :class:`Reliability`: predicted probability (the model's output clipped to [0, 1]; for an
  ensemble, the members' mean) against the observed frequency of the structure, in
  :data:`BINS` equal-width bins, accumulated over every scored (target, structure) and
  reported with the expected calibration error ECE = sum_b (n_b / n) |mean p_b - freq_b|.
  Two voxel sets: ``all`` (the whole grid: dominated by far-away background, which every
  method gets right) and ``near`` (within :data:`NEAR_VOXELS` voxels of the true structure:
  where the calibration of a segmentation matters). The set is the same for every method.
* :func:`spearman`: rank correlation (ties averaged) of an uncertainty summary with 1 - Dice.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F

BINS = 10
NEAR_VOXELS = 2
REGIONS = ("near", "all")


class Reliability:
    """Per bin and region: voxel count, sum of predicted probability, sum of truth."""

    def __init__(self, bins: int = BINS):
        self.bins = bins
        self.totals = {region: np.zeros((3, bins)) for region in REGIONS}

    def add(self, predicted: torch.Tensor, truth: torch.Tensor):
        """predicted: raw output ``[D,H,W]``; truth: binary ``[D,H,W]``."""
        probability = predicted.float().clamp(0, 1)
        truth = truth.float()
        size = 2 * NEAR_VOXELS + 1
        near = F.max_pool3d(truth[None, None], size, stride=1, padding=NEAR_VOXELS)[0, 0] > 0
        for region, where in (("near", near), ("all", None)):
            p = probability[where] if where is not None else probability.flatten()
            y = truth[where] if where is not None else truth.flatten()
            index = (p * self.bins).long().clamp_max(self.bins - 1)
            totals = self.totals[region]
            totals[0] += torch.bincount(index, minlength=self.bins).double().numpy()
            totals[1] += torch.bincount(index, weights=p.double(), minlength=self.bins).numpy()
            totals[2] += torch.bincount(index, weights=y.double(), minlength=self.bins).numpy()

    def merged(self, other: "Reliability") -> "Reliability":
        out = Reliability(self.bins)
        for region in REGIONS:
            out.totals[region] = self.totals[region] + other.totals[region]
        return out

    def summary(self) -> Dict[str, dict]:
        """Per region: ECE, voxels, and per bin the mean probability and observed frequency
        (None for empty bins)."""
        out = {}
        for region, (count, p_sum, y_sum) in self.totals.items():
            seen = count > 0
            confidence = np.where(seen, p_sum / np.maximum(count, 1), np.nan)
            frequency = np.where(seen, y_sum / np.maximum(count, 1), np.nan)
            total = count.sum()
            ece = float((count[seen] * np.abs(confidence[seen] - frequency[seen])).sum() / total) \
                if total else float("nan")
            out[region] = {"ece": ece, "voxels": int(total), "count": count.astype(int).tolist(),
                           "confidence": [None if np.isnan(v) else float(v) for v in confidence],
                           "frequency": [None if np.isnan(v) else float(v) for v in frequency]}
        return out


def _ranks(values: Sequence[float]) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):  # ties: the mean rank
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (Pearson correlation of the ranks, ties averaged); NaN if undefined."""
    if len(x) != len(y) or len(x) < 3:
        return float("nan")
    a, b = _ranks(x), _ranks(y)
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b / norm) if norm else float("nan")

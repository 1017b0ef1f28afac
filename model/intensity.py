"""The one intensity normaliser: percentile clip, then min-max to [0, 1]."""
from __future__ import annotations

import numpy as np

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


def normalise_intensity(volume, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE,
                        mask=None) -> np.ndarray:
    """Clip to the [low, high] percentiles (of ``mask`` voxels if given), scale to [0, 1].

    volume: array of any shape; returns float32 of the same shape. A constant volume maps to 0.
    Raises ``ValueError`` on NaN or infinite values.
    """
    data = np.asarray(volume, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise ValueError("volume contains NaN or infinite values")
    sample = data[mask > 0] if mask is not None else data
    lo, hi = np.percentile(sample, [low, high]) if sample.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros_like(data)
    return ((np.clip(data, lo, hi) - lo) / (hi - lo)).astype(np.float32)

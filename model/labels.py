"""Probabilities to labels, in one place: what every output of a segmentation goes through.

``probs`` is ``[K, ...]``: one probability map per structure (the model's sigmoid outputs, not
a softmax: structures may overlap). A structure's mask is its map above the threshold; the
discrete segmentation gives each voxel the structure of largest probability among those above
the threshold, and 0 where none is.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

#: a voxel belongs to a structure where its probability is above this
THRESHOLD = 0.5


def probabilities_to_masks(probs: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """``[K, ...]`` probabilities -> ``[K, ...]`` boolean masks."""
    return np.asarray(probs) > threshold


def probabilities_to_dseg(probs: np.ndarray, values: Optional[Sequence[int]] = None,
                          threshold: float = THRESHOLD) -> np.ndarray:
    """``[K, ...]`` probabilities -> ``[...]`` label map: ``values[k]`` (default ``k + 1``) of
    the most probable structure above ``threshold``, 0 elsewhere; uint8 where the labels fit,
    else uint16."""
    probs = np.asarray(probs)
    values = np.arange(1, len(probs) + 1) if values is None else np.asarray(values)
    labels = values[probs.argmax(axis=0)]
    labels[probs.max(axis=0) <= threshold] = 0
    return labels.astype(np.uint8 if values.max() < 256 else np.uint16)

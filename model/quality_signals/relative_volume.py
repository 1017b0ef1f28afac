"""``relative_volume``: the mask's volume against the contexts', with its sign."""
from __future__ import annotations

import math

from . import QualitySignal, register


def compute(inputs):
    """Per structure ``log((V + 1) / (median context volume + 1))``, V the voxels of the mask:
    positive for a larger structure than the contexts' (a larger structure has relatively
    less boundary, so its Dice tends to be higher), negative for a smaller one."""
    import torch

    from ..labels import THRESHOLD

    shape = tuple(inputs.target.shape)
    means = inputs.result.mean.reshape(-1, *shape)
    labels = torch.as_tensor(inputs.context_labels).reshape(len(means), -1, *shape)
    return [math.log((float((mean > THRESHOLD).sum()) + 1.0)
                     / (float((context > 0.5).flatten(1).sum(1).float().median()) + 1.0))
            for mean, context in zip(means, labels)]


SIGNAL = register(QualitySignal(
    name="relative_volume", compute=compute,
    summary="log of the mask's volume over the median volume of the structure in the context "
            "labels (signed)"))

"""``volume_deviation``: a mask much larger or smaller than the contexts' is suspect."""
from __future__ import annotations

import math

from . import QualitySignal, register


def compute(inputs):
    """Per structure ``|log((V + 1) / (median context volume + 1))|``, V the voxels of the
    mask (mean probability above the threshold); 0 when the volume is the contexts' median."""
    import torch

    from ..labels import THRESHOLD

    target_shape = tuple(inputs.target.shape)
    means = inputs.result.mean.reshape(-1, *target_shape)
    labels = torch.as_tensor(inputs.context_labels).reshape(len(means), -1, *target_shape)
    values = []
    for mean, context in zip(means, labels):
        volume = float((mean > THRESHOLD).sum())
        median = float((context > 0.5).flatten(1).sum(1).float().median())
        values.append(abs(math.log((volume + 1.0) / (median + 1.0))))
    return values


SIGNAL = register(QualitySignal(
    name="volume_deviation", compute=compute,
    summary="|log| of the mask's volume over the median volume of the structure in the "
            "context labels"))

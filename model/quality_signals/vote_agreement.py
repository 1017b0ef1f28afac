"""``vote_agreement``: does the mask look like what the context labels say, voxel by voxel?"""
from __future__ import annotations

from . import QualitySignal, register


def compute(inputs):
    """Per structure, the Dice of the mask with the majority vote of the context labels (on
    the model grid, where every context is registered): low where the target's structure is
    unlike the contexts' or the mask is off."""
    import torch

    from ..labels import THRESHOLD

    shape = tuple(inputs.target.shape)
    labels = torch.as_tensor(inputs.context_labels).float()
    means = inputs.result.mean.reshape(-1, *shape)
    labels = labels.reshape(len(means), -1, *shape)
    values = []
    for mean, context in zip(means, labels):
        mask, vote = mean > THRESHOLD, context.mean(0) > 0.5
        total = int(mask.sum() + vote.sum())
        values.append(1.0 if total == 0 else 2.0 * int((mask & vote).sum()) / total)
    return values


SIGNAL = register(QualitySignal(
    name="vote_agreement", compute=compute,
    summary="the Dice of the mask with the majority vote of the context labels"))

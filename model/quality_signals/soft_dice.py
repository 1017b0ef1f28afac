"""``soft_dice``: the Dice the probability map expects of its own mask."""
from __future__ import annotations

from . import QualitySignal, register


def compute(inputs):
    """Per structure ``2 sum(p [p > t]) / (sum(p) + sum([p > t]))`` of the mean probability p
    (t the mask threshold): the expected Dice of the mask if p were calibrated; 1 when both
    sums are 0."""
    from ..labels import THRESHOLD

    means = inputs.result.mean.reshape(-1, *tuple(inputs.target.shape))
    values = []
    for mean in means:
        p = mean.float().clamp(0, 1)
        mask = (p > THRESHOLD).float()
        total = float(p.sum() + mask.sum())
        values.append(1.0 if total == 0 else 2.0 * float((p * mask).sum()) / total)
    return values


SIGNAL = register(QualitySignal(
    name="soft_dice", compute=compute,
    summary="2 sum(p [p > 0.5]) / (sum p + sum [p > 0.5]) of the probability map: the Dice "
            "it expects of its own mask"))

"""``disagreement``: how much the ensemble members disagree on the structure's voxels."""
from __future__ import annotations

from . import QualitySignal, register


def compute(inputs):
    """1 - the members' pooled pairwise Dice (:func:`..ensemble.structure_uncertainty`);
    0 for one member."""
    from ..ensemble import structure_uncertainty

    return [s["disagreement"] for s in structure_uncertainty(inputs.result)]


SIGNAL = register(QualitySignal(
    name="disagreement", compute=compute,
    summary="1 - the pooled pairwise Dice of the ensemble members' masks (0 for one member)"))

"""``boundary_spread``: the members' spread on the structure's edge."""
from __future__ import annotations

from . import QualitySignal, register


def compute(inputs):
    """The mean per-voxel spread in the mask's boundary band
    (:func:`..ensemble.structure_uncertainty`); 0 for one member."""
    from ..ensemble import structure_uncertainty

    return [s["boundary_spread"] for s in structure_uncertainty(inputs.result)]


SIGNAL = register(QualitySignal(
    name="boundary_spread", compute=compute,
    summary="the mean spread of the ensemble members in the mask's boundary band (0 for one "
            "member)"))

"""``volume_deviation``: a mask much larger or smaller than the contexts' is suspect."""
from __future__ import annotations

from . import QualitySignal, register
from .relative_volume import compute as relative_volume


def compute(inputs):
    """Per structure ``|relative_volume|``: 0 when the mask's volume is the contexts' median."""
    return [abs(value) for value in relative_volume(inputs)]


SIGNAL = register(QualitySignal(
    name="volume_deviation", compute=compute,
    summary="|log| of the mask's volume over the median volume of the structure in the "
            "context labels"))

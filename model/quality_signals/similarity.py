"""``similarity``: how alike the target and its contexts look (one value for all structures)."""
from __future__ import annotations

from . import QualitySignal, register


def compute(inputs):
    """The mean normalised cross-correlation of the target with each context image used
    (:func:`..selection.ncc`, inside the similarity mask)."""
    from ..selection import ncc

    contexts = inputs.contexts
    value = sum(ncc(inputs.target, contexts[m], inputs.mask)
                for m in range(len(contexts))) / max(len(contexts), 1)
    return [value] * len(inputs.result.mean.reshape(-1, *inputs.target.shape))


SIGNAL = register(QualitySignal(
    name="similarity", compute=compute,
    summary="the mean normalised cross-correlation of the target with its context images on "
            "the model grid"))

"""``local_similarity``: how alike the target and its contexts look around the structure."""
from __future__ import annotations

from . import QualitySignal, register

#: voxels the mask is grown by to take in the structure's surroundings
MARGIN_VOXELS = 3


def compute(inputs):
    """Per structure, the mean NCC of the target with each context image inside the mask grown
    by :data:`MARGIN_VOXELS` (the whole grid for an empty mask)."""
    import torch.nn.functional as F

    from ..labels import THRESHOLD
    from ..selection import ncc

    shape = tuple(inputs.target.shape)
    values = []
    for mean in inputs.result.mean.reshape(-1, *shape):
        size = 2 * MARGIN_VOXELS + 1
        grown = F.max_pool3d((mean > THRESHOLD).float()[None, None], size, stride=1,
                             padding=MARGIN_VOXELS)[0, 0] > 0
        region = grown.numpy() if bool(grown.any()) else None
        values.append(sum(ncc(inputs.target, image, region) for image in inputs.contexts)
                      / max(len(inputs.contexts), 1))
    return values


SIGNAL = register(QualitySignal(
    name="local_similarity", compute=compute,
    summary=f"the mean normalised cross-correlation of the target with its context images "
            f"within {MARGIN_VOXELS} voxels of the mask"))

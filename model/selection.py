"""Context selection: which labelled pool subjects a target gets as its context pairs.

>>> ranked = rank_pool(target, pool_images, ids, mask=brain)     # [(id, score)], best first
>>> sets = context_sets([i for i, _ in ranked], size=4, members=3)   # 3 distinct 4-subsets

``similar`` ranks the whole pool by normalised cross-correlation (NCC) with the target on the
model grid: every image is intensity-normalised (:func:`.intensity.normalise_intensity`, the
same as the network sees), then z-scored inside the mask (the template brain mask on the
model grid, or the target's nonzero voxels when none is given), and the score is the mean
product of the two z-scores, in [-1, 1]. NCC needs nothing but the images, is invariant to a
linear change of contrast, and scores how well the pair's anatomy lines up with the target's
voxel by voxel, which is what the network's fusion uses (the evaluation in
``evaluation/selection_ensemble/`` measures it against random draws). Ranking is
deterministic: ties (equal scores) are broken by the subject label.

:func:`context_sets` turns an ordering of the pool (the similarity ranking, or a seeded
random permutation) into K distinct context sets of L subjects: disjoint consecutive windows
while the pool allows (member 0 is the first L of the ordering: the top L, or today's random
draw), then further distinct subsets in lexicographic order of their positions in the
ordering (so that the best-ranked subjects are reused first).
"""
from __future__ import annotations

import itertools
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .intensity import normalise_intensity



def _zscore(image, mask: np.ndarray) -> Optional[np.ndarray]:
    """The normalised image's voxels inside ``mask``, z-scored (None when constant there)."""
    values = normalise_intensity(np.asarray(image, dtype=np.float32))[mask].astype(np.float64)
    values -= values.mean()
    norm = math.sqrt(float(values @ values))
    return None if norm == 0 else values / norm


def similarity_mask(target, mask=None) -> np.ndarray:
    """Boolean ``[D,H,W]`` voxels that count: ``mask > 0`` (e.g. the template brain mask on
    the model grid) or, without a mask, the target's nonzero voxels."""
    target = np.asarray(target)
    chosen = np.asarray(mask) > 0 if mask is not None else target != 0
    if chosen.shape != target.shape:
        raise ValueError(f"similarity mask is {list(chosen.shape)} but the target is "
                         f"{list(target.shape)}")
    if chosen.sum() < 2:
        raise ValueError("the similarity mask holds fewer than 2 voxels")
    return chosen


def ncc(target, image, mask=None) -> float:
    """Normalised cross-correlation of two ``[D,H,W]`` images inside the mask, in [-1, 1]
    (0 when either is constant there)."""
    chosen = similarity_mask(target, mask)
    a, b = _zscore(target, chosen), _zscore(image, chosen)
    return 0.0 if a is None or b is None else float(a @ b)


def rank_pool(target, pool_images: Sequence, ids: Sequence[str], mask=None
              ) -> List[Tuple[str, float]]:
    """Rank the pool for ``target`` by NCC, best first; ties broken by subject label.

    target ``[D,H,W]``; pool_images: L volumes ``[D,H,W]`` on the target's grid (a tensor, an
    array or a sequence read one at a time, so memory stays that of one volume); ids: the
    subject label of each -> ``[(id, score)]``.
    """
    if len(pool_images) != len(ids):
        raise ValueError(f"{len(pool_images)} pool images but {len(ids)} subject labels")
    target = np.asarray(torch.as_tensor(target), dtype=np.float32)
    chosen = similarity_mask(target, mask)
    reference = _zscore(target, chosen)
    scores = []
    for index, subject in enumerate(ids):
        image = np.asarray(torch.as_tensor(pool_images[index]), dtype=np.float32)
        if image.shape != target.shape:
            raise ValueError(f"pool image {subject} is {list(image.shape)} but the target is "
                             f"{list(target.shape)}; resample it to the target's grid")
        values = _zscore(image, chosen)
        scores.append(0.0 if reference is None or values is None else float(reference @ values))
    return sorted(zip(map(str, ids), scores), key=lambda item: (-item[1], item[0]))


def distinct_sets(pool: int, size: int) -> int:
    """How many distinct context sets of ``size`` subjects a pool of ``pool`` allows."""
    return math.comb(pool, size) if 0 < size <= pool else 0


def check_request(pool: int, size: int, members: int = 1) -> Optional[str]:
    """None if ``members`` distinct sets of ``size`` fit a pool of ``pool``; else why not."""
    if members < 1:
        return f"the ensemble needs at least 1 member, got {members}"
    if size > pool:
        return f"{size} contexts were asked for but the labelled pool holds only {pool} subjects"
    if members > distinct_sets(pool, size):
        return (f"an ensemble of {members} needs {members} distinct context sets of {size}, but "
                f"a pool of {pool} labelled subjects allows only {distinct_sets(pool, size)}")
    return None


def context_sets(ordering: Sequence[str], size: int, members: int = 1) -> List[List[str]]:
    """``members`` distinct context sets of ``size`` subjects from an ordering of the pool:
    disjoint windows ``ordering[kL:(k+1)L]`` first, then the remaining subsets in
    lexicographic order of positions. Raises ``ValueError`` when the pool is too small."""
    problem = check_request(len(ordering), size, members)
    if problem:
        raise ValueError(problem)
    windows = [tuple(range(k * size, (k + 1) * size)) for k in range(len(ordering) // size)]
    chosen: List[tuple] = []
    for positions in itertools.chain(windows, itertools.combinations(range(len(ordering)), size)):
        if len(chosen) == members:
            break
        if positions not in chosen:
            chosen.append(positions)
    return [[str(ordering[p]) for p in positions] for positions in chosen]

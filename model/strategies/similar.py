"""``similar``: the labelled subjects most similar to the target (NCC on the model grid)."""
from __future__ import annotations

from . import SelectionStrategy, register


def order(ids, *, target=None, pool_images=None, mask=None, **_):
    """The pool ranked by normalised cross-correlation with ``target`` inside ``mask``, best
    first (:func:`~..selection.rank_pool`); scores ``{id: NCC}``."""
    from ..selection import rank_pool

    if target is None or pool_images is None:
        raise ValueError("similar selection needs the target and the pool images")
    ranked = rank_pool(target, pool_images, ids, mask)
    return [i for i, _ in ranked], dict(ranked)


STRATEGY = register(SelectionStrategy(
    name="similar", order=order, compares_images=True, stacks_all=True,
    summary="the labelled subjects most similar to the target by normalised cross-correlation "
            "on the model grid (inside the template brain mask)"))

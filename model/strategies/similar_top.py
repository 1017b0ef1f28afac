"""``similar-top``: like ``similar``, with every ensemble member near the top of the ranking.

``similar`` takes members as disjoint windows of the ranking, so with K members of L the last
member uses the subjects ranked (K-1)L+1..KL, often no better than a random draw. Here member
k takes the window that starts at rank k * stride (stride = max(1, L // K)): the members
overlap, but they stay among the top L + (K-1) * stride subjects and still differ in at least
``stride`` subjects each (the diversity that lets an ensemble average out one poor context).
With one member it is ``similar``.
"""
from __future__ import annotations

from typing import List, Sequence

from . import SelectionStrategy, register
from .similar import order


def sliding_windows(ordering: Sequence[str], size: int, members: int = 1) -> List[List[str]]:
    """Member k: ``ordering[k*stride : k*stride + size]``, stride ``max(1, size // members)``;
    ``ValueError`` when the ordering is too short for the last window."""
    stride = max(1, size // max(members, 1))
    needed = (members - 1) * stride + size
    if members < 1 or needed > len(ordering):
        raise ValueError(f"{members} overlapping context sets of {size} (stride {stride}) need "
                         f"{needed} ranked subjects, the pool holds {len(ordering)}")
    return [[str(s) for s in ordering[k * stride: k * stride + size]] for k in range(members)]


STRATEGY = register(SelectionStrategy(
    name="similar-top", order=order, sets=sliding_windows, compares_images=True,
    stacks_all=True,
    summary="the most similar labelled subjects (as similar), with ensemble members as "
            "overlapping windows of the ranking (stride L/K) so that every member stays near "
            "the top"))

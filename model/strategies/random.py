"""``random``: a seeded draw (the default)."""
from __future__ import annotations

from . import SelectionStrategy, register, seeded_ordering


def order(ids, *, seed: int = 0, ordering=None, **_):
    """The caller's own seeded draw (``ordering()``, e.g. the run's seeded pool), else a
    seeded permutation of ``ids``; no scores."""
    return (list(ordering()) if ordering is not None else seeded_ordering(ids, seed)), None


STRATEGY = register(SelectionStrategy(
    name="random", summary="a seeded random draw of the labelled subjects", order=order))

"""Context-selection strategies: which labelled pool subjects each target gets as context.

A strategy is one module of this package that calls :func:`register` with a
:class:`SelectionStrategy`; the registry finds every module here, so adding a strategy adds one
file and nothing else. The command line's choices (``--context-selection``), the context spec's
``selection``, the ICL node, the evaluation, the README's table (:func:`docs_table`) and the
report read the registry. Strategy modules import nothing heavy
at module level (``--help`` reads the registry without torch or NumPy).

    from neuroverse_bids.model.strategies import get_strategy, strategy_names
    order, scores = get_strategy("similar").order(ids, target=t, pool_images=p, mask=m, seed=0)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..registry import Registry

#: (ids, target=, pool_images=, mask=, seed=, ordering=) -> (pool ordering, {id: score} or None)
Order = Callable[..., Tuple[List[str], Optional[Dict[str, float]]]]


@dataclass(frozen=True)
class SelectionStrategy:
    """``name`` (the spelling users write); ``summary`` (one sentence: help, docs, report);
    ``compares_images``: it reads the target and the pool images on the model grid (the app
    then gives it the template brain mask there); ``order``: the pool in the order the context
    sets are taken from (:func:`~..selection.context_sets`: disjoint windows first);
    ``stacks_all``: a run stacks every labelled subject for it (else the first K*L+1 of the
    seeded shuffle, enough for K disjoint sets whichever target is left out); ``sets``:
    ``(ordering, size, members) -> members`` context sets (None: :func:`~..selection.context_sets`,
    disjoint windows of the ordering first)."""

    name: str
    summary: str
    order: Order
    compares_images: bool = False
    stacks_all: bool = False
    sets: Optional[Callable[[Sequence[str], int, int], List[List[str]]]] = None

    def choose(self, ids: Sequence[str], size: int, members: int = 1, **inputs):
        """``members`` context sets of ``size`` out of ``ids`` and the scores (or None);
        ``inputs``: what :attr:`order` reads (target, pool_images, mask, seed, ordering)."""
        from ..selection import context_sets

        ordering, scores = self.order(ids, **inputs)
        return (self.sets or context_sets)(ordering, size, members), scores


_REGISTRY: Registry[SelectionStrategy] = Registry(__name__, __path__, "selection", first="random")
#: add a strategy (a second strategy of the same name is an error)
register = _REGISTRY.register


def strategies() -> Dict[str, SelectionStrategy]:
    """Every registered strategy by name (``random`` first, then alphabetical)."""
    return _REGISTRY.all()


def strategy_names() -> Tuple[str, ...]:
    return _REGISTRY.names()


def get_strategy(name: str) -> SelectionStrategy:
    """The strategy ``name``; ``ValueError`` naming the choices otherwise."""
    return _REGISTRY.get(name)


def select(selection: str, ids: Sequence[str], size: int, members: int = 1, *,
           target=None, pool_images: Optional[Sequence] = None, mask=None,
           ordering: Optional[Callable[[], Sequence[str]]] = None, seed: int = 0):
    """Context sets for one target -> ``(sets, scores)``: the registered strategy
    ``selection`` orders the pool and takes its sets. ``ordering``: the caller's own seeded
    draw (for ``random``); scores: the strategy's ``{id: score}`` of every pool subject, or
    None."""
    return get_strategy(selection).choose(ids, size, members, target=target,
                                          pool_images=pool_images, mask=mask, seed=seed,
                                          ordering=ordering)


def docs_table() -> str:
    """The strategies as a Markdown table (the README's and ``--list-selections``')."""
    return _REGISTRY.docs_table(("selection", "what it does"))


def seeded_ordering(ids: Sequence[str], seed: int) -> List[str]:
    """The pool in a seeded random order (torch's ``randperm``)."""
    import torch

    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    return [str(ids[i]) for i in order]

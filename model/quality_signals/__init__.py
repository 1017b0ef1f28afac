"""Quality signals: per-structure numbers, computed beside every segmentation, that a quality
estimate (:mod:`..quality`) maps to a predicted Dice.

A signal is one module of this package that calls :func:`register` with a
:class:`QualitySignal`; the registry (:class:`..registry.Registry`) finds every module here,
so adding a signal adds one file and nothing else: the ICL node records it in the masks'
sidecars, the self-evaluation in its cases and the quality estimate fits on it. Signal modules
import nothing heavy at module level.

    signals = compute_signals(SignalInputs(result, target, contexts, context_labels), names)
    # {structure: {signal name: value}}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..registry import Registry


@dataclass(frozen=True)
class SignalInputs:
    """What one segmentation leaves to judge it by: ``result`` (the
    :class:`..ensemble.EnsembleResult`: mean/std/votes ``[K,D,H,W]``, ``members``), the
    ``target`` ``[D,H,W]``, the context images used ``[M,D,H,W]`` and their labels
    ``[K,M,D,H,W]`` (all on the model grid), and the similarity ``mask`` (or None)."""

    result: object
    target: object
    contexts: object
    context_labels: object
    mask: Optional[object] = None


@dataclass(frozen=True)
class QualitySignal:
    """``name`` (column and sidecar key); ``summary`` (one sentence for the docs); ``compute``:
    :class:`SignalInputs` -> one float per structure."""

    name: str
    summary: str
    compute: Callable[[SignalInputs], List[float]]


_REGISTRY: Registry[QualitySignal] = Registry(__name__, __path__, "quality signal")
#: add a signal (a second signal of the same name is an error)
register = _REGISTRY.register


def signals() -> Dict[str, QualitySignal]:
    """Every registered signal by name (alphabetical)."""
    return _REGISTRY.all()


def signal_names() -> Tuple[str, ...]:
    return _REGISTRY.names()


def compute_signals(inputs: SignalInputs, names: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """``{structure: {signal: value}}`` of every registered signal, values rounded to 6
    decimals (they land in JSON sidecars and TSVs)."""
    table = {name: {} for name in names}
    for signal in signals().values():
        for name, value in zip(names, signal.compute(inputs)):
            table[name][signal.name] = round(float(value), 6)
    return table


def docs_table() -> str:
    """The signals as a Markdown table (the README's)."""
    return _REGISTRY.docs_table(("signal", "what it measures"))

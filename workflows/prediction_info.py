"""What an ICL node reports of its prediction, as one typed record.

The node writes :meth:`PredictionInfo.to_dict` (a plain dict crosses Nipype and lands in the
report facts); the sidecar writer and the report pages read it back with
:meth:`PredictionInfo.from_dict`. A field is named here and nowhere else.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional


#: the fields of a node that chose its context sets out of a pool
POOL_FIELDS = ("selection", "ensemble", "context_sets", "similarity", "uncertainty")


@dataclass(frozen=True)
class PredictionInfo:
    """``model``: the checkpoint's file name; ``precision``/``precision_reason``: what ran and
    why; ``mini_context_size``: APSP pairs per chunk; ``context_subjects``: every context
    subject used; ``seconds_*``: model loading and inference (s). Chosen out of a pool:
    ``selection`` (strategy), ``ensemble`` members, ``context_sets`` (each member's subjects),
    ``similarity`` (``{subject: score}`` of the used subjects, for strategies that score) and
    ``uncertainty`` (``{structure: {"disagreement", "boundary_spread"}}``). Segmentations:
    ``quality_signals`` (``{structure: {signal: value}}``, :mod:`...model.quality_signals`)
    and ``context_similarity`` (``{subject: NCC}`` of the target to each subject of its
    context set)."""

    model: Optional[str] = None
    model_sha256: Optional[str] = None
    precision: Optional[str] = None
    precision_reason: Optional[str] = None
    device: Optional[str] = None
    mini_context_size: Optional[object] = None
    context_subjects: List[str] = field(default_factory=list)
    seconds_load: Optional[float] = None
    seconds_inference: Optional[float] = None
    selection: Optional[str] = None
    ensemble: int = 1
    context_sets: Optional[List[List[str]]] = None
    similarity: Optional[Dict[str, float]] = None
    uncertainty: Optional[Dict[str, Dict[str, float]]] = None
    quality_signals: Optional[Dict[str, Dict[str, float]]] = None
    context_similarity: Optional[Dict[str, float]] = None

    def to_dict(self) -> dict:
        """JSON-ready; the pool fields only for a node that chose out of a pool, the quality
        fields only for a node that recorded them."""
        info = asdict(self)
        if not self.pooled:
            for name in POOL_FIELDS:
                info.pop(name)
        for name in ("quality_signals", "context_similarity"):
            if info[name] is None:
                info.pop(name)
        return info

    @classmethod
    def from_dict(cls, info: Optional[dict]) -> "PredictionInfo":
        """The record of a node's ``info`` (keys it does not know are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (info or {}).items() if k in known and v is not None})

    @property
    def pooled(self) -> bool:
        """Whether the node chose its context sets out of a pool."""
        return bool(self.context_sets)

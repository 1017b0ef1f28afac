"""Leave-one-out self-evaluation of a labelled context pool: how well the model segments each
structure here, measured on the pool itself before anyone checks a result.

>>> cases = leave_one_out(predictor, images, labels, ids, size=8, selection="random")
>>> summary = summarise(cases, names)     # per structure: expected Dice and its interval

Each labelled subject is segmented from the others, exactly as a target would be (the same
strategy, context size and ensemble), on the model grid where the pool is already registered:
no new registration. A case records the Dice against the subject's own label and every
registered quality signal (:mod:`.quality_signals`: the ensemble's disagreement, the
similarity of the subject to its contexts, ...), which :class:`.quality.QualityModel` fits on.
Cost: N predictions of
``members`` x ``size`` context pairs for a pool of N (for N = 20 at 64^3 on two CPU cores,
about a minute with the bundled model).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from .ensemble import predict_from_pool
from .labels import THRESHOLD
from .quality_signals import SignalInputs, compute_signals


@dataclass(frozen=True)
class Case:
    """One (subject, structure) of the pool segmented from the others."""

    subject: str
    structure: str
    dice: float
    contexts: str              # the context subjects, comma-separated
    signals: Dict[str, float] = field(default_factory=dict)   # {signal name: value}

    def to_dict(self) -> dict:
        """One flat row: subject, structure, dice, contexts, then one column per signal."""
        return {"subject": self.subject, "structure": self.structure, "dice": self.dice,
                "contexts": self.contexts, **self.signals}


def dice_score(probability: torch.Tensor, truth: torch.Tensor) -> float:
    """Dice of ``probability > THRESHOLD`` vs ``truth > 0.5`` (1 when both are empty)."""
    a, b = probability > THRESHOLD, truth > 0.5
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def leave_one_out(predictor, images: torch.Tensor, labels: torch.Tensor, ids: Sequence[str],
                  names: Sequence[str], size: int, selection: str = "random",
                  members: int = 1, seed: int = 0, mask=None,
                  calibration=None, on_result=None) -> List[Case]:
    """Segment every pool subject from the others.

    images ``[N,D,H,W]`` (intensity-normalised, on the model grid); labels ``[K,N,D,H,W]``
    (K structures, named ``names``); ``size`` contexts per member (at most N - 1);
    ``selection``/``members``/``seed``/``mask`` as the run's ICL nodes use them;
    ``calibration``: a :class:`.quality.ProbabilityCalibration` that accumulates every case's
    probability map against its truth; ``on_result(index, result)``: called with each
    subject's :class:`.ensemble.EnsembleResult` (benchmarks keep the maps).
    """
    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    ids = [str(s) for s in ids]
    size = min(size, len(ids) - 1)
    if size < 1:
        raise ValueError("self-evaluation needs at least 2 labelled subjects")
    cases = []
    for index, subject in enumerate(ids):
        result, sets, _ = predict_from_pool(
            predictor, images[index], images, labels, ids, size, members, selection,
            seed=seed, mask=mask, exclude=[subject])
        if on_result is not None:
            on_result(index, result)
        used = list(dict.fromkeys(s for chosen in sets for s in chosen))
        where = [ids.index(s) for s in used]
        signals = compute_signals(SignalInputs(result, images[index], images[where],
                                               labels[:, where], mask), names)
        for k, name in enumerate(names):
            cases.append(Case(subject, name, dice_score(result.mean[k], labels[k, index]),
                              ",".join(used), signals[name]))
            if calibration is not None:
                calibration.add(name, result.mean[k], labels[k, index])
    return cases


def mean_interval(values: Sequence[float], seed: int = 0, resamples: int = 2000,
                  level: float = 0.9) -> Dict[str, float]:
    """The mean of ``values`` and a bootstrap percentile interval of the Dice a new subject
    gets: the ``level`` interval of the values themselves when there are at least 5, else of
    their resampled means (a small pool cannot say more)."""
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    if len(values) >= 5:
        ordered = sorted(values)
        low = ordered[max(0, math.floor((1 - level) / 2 * len(values)))]
        high = ordered[min(len(values) - 1, math.ceil((1 + level) / 2 * len(values)) - 1)]
    else:
        rng = random.Random(seed)
        means = sorted(sum(rng.choice(values) for _ in values) / len(values)
                       for _ in range(resamples))
        low, high = means[int((1 - level) / 2 * resamples)], means[int((1 + level) / 2 * resamples) - 1]
    return {"expected_dice": mean, "interval_low": low, "interval_high": high}


def summarise(cases: Sequence[Case], names: Sequence[str], low_dice: float = 0.6,
              seed: int = 0) -> List[dict]:
    """One row per structure: ``structure``, ``expected_dice`` (the mean leave-one-out Dice),
    ``interval_low``/``interval_high`` (the 90 % range a new subject's Dice falls in), ``n``
    (cases), ``worst_subject`` and ``warning`` (a sentence where the expected Dice is below
    ``low_dice``, else "")."""
    rows = []
    for name in names:
        mine = [c for c in cases if c.structure == name]
        if not mine:
            continue
        row = {"structure": name, **{k: round(v, 4) for k, v in
                                     mean_interval([c.dice for c in mine], seed).items()},
               "n": len(mine), "worst_subject": min(mine, key=lambda c: c.dice).subject}
        row["warning"] = (f"expected Dice {row['expected_dice']:.2f} is low: check these "
                          "results, or label more subjects like the worst ones"
                          if row["expected_dice"] < low_dice else "")
        rows.append(row)
    return rows


def expected_for(rows: Sequence[dict], structure: str) -> Optional[float]:
    """The expected Dice of ``structure`` in :func:`summarise`'s rows (None if absent)."""
    return next((r["expected_dice"] for r in rows if r["structure"] == structure), None)

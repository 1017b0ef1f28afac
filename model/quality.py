"""Per-subject quality estimate and probability calibration, fitted on the leave-one-out
cases of the dataset itself (:mod:`.self_evaluation`): nothing learned elsewhere is assumed to
transfer.

>>> model = QualityModel.fit(cases)                  # cases: Case (structure, dice, signals)
>>> model.predict("Hippocampus", {"similarity": 0.8, ...})   # predicted Dice, interval
>>> calibration = ProbabilityCalibration()            # filled by leave_one_out(calibration=)
>>> calibration.fit().apply("Hippocampus", probability)

**Quality model.** Predicted Dice of structure s for a subject with signals x:
``expected_s + sum_j w_sj (x_j - mean_sj) / scale_j``: the structure's expected Dice (its mean
leave-one-out Dice) moved by the subject's signals relative to that structure's cases.
``scale_j`` is the signal's pooled within-structure standard deviation. The weights come in two
ridge steps, as there are few cases per structure: pooled weights ``w_j`` of the within-structure
Dice deviations on the standardised signal deviations over every structure (penalty
:data:`RIDGE`), then per structure weights shrunk towards them (penalty :data:`SHRINK`:
``argmin |y_s - Z_s w|^2 + SHRINK n_s |w - w_pooled|^2``), so that a signal may matter more, or
the other way, for one structure where its cases say so. Signals that do not vary (disagreement
with one member) get no weight. The interval is the prediction +- 1.645 x the root mean square
error of the model's own leave-one-subject-out predictions of the cases (90 %, clipped to
[0, 1]): an honest width even for a small pool, where the in-sample residuals are near 0.

**Calibration.** Per structure, voxels of the leave-one-out probability maps are binned by
predicted probability (:data:`CALIBRATION_BINS` equal bins on [0, 1]); the observed frequency
per bin is made non-decreasing (pool-adjacent-violators, weighted by voxel counts: isotonic
regression on the binned data), and a probability is mapped by linear interpolation between
the bins' (mean probability, fitted frequency) points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

#: ridge penalty of the pooled weights on the standardised signals, relative to the cases
RIDGE = 0.1
#: penalty pulling a structure's weights towards the pooled ones, relative to its cases (0.3:
#: the best within-structure rank correlation of 0.3, 1 and 3 in a pilot at L = 2 on the
#: label maps of ``benchmarks/quality_estimate.py``; 0 would fit each structure alone)
SHRINK = 0.3
#: the normal quantile of a 90 % interval
Z90 = 1.6449
CALIBRATION_BINS = 20


@dataclass(frozen=True)
class QualityModel:
    """The fitted estimate; see the module docstring. ``expected``/``centres``: per structure
    the mean Dice and the mean of each signal over its cases; ``scales``: per signal;
    ``weights``: per structure, per signal; ``pooled``: the weights shared by all structures
    (per signal); ``residual_sd``: the cross-validated error of a prediction; ``cases``: how
    many it was fitted on."""

    expected: Dict[str, float]
    centres: Dict[str, Dict[str, float]]
    scales: Dict[str, float]
    weights: Dict[str, Dict[str, float]]
    pooled: Dict[str, float]
    residual_sd: float
    cases: int

    @classmethod
    def fit(cls, cases: Sequence, ridge: float = RIDGE, shrink: float = SHRINK,
            cross_validate: bool = True) -> "QualityModel":
        """Fit on leave-one-out cases (objects with ``subject``, ``structure``, ``dice`` and
        ``signals``); ``cross_validate``: measure ``residual_sd`` by refitting without each
        subject in turn (else the in-sample residuals)."""
        if not cases:
            raise ValueError("the quality estimate needs leave-one-out cases")
        structures = list(dict.fromkeys(c.structure for c in cases))
        names = sorted({n for c in cases for n in c.signals})
        expected, centres = {}, {}
        for s in structures:
            mine = [c for c in cases if c.structure == s]
            expected[s] = sum(c.dice for c in mine) / len(mine)
            centres[s] = {n: sum(c.signals.get(n, 0.0) for c in mine) / len(mine) for n in names}
        x = torch.tensor([[c.signals.get(n, 0.0) - centres[c.structure][n] for n in names]
                          for c in cases], dtype=torch.float64).reshape(len(cases), len(names))
        y = torch.tensor([c.dice - expected[c.structure] for c in cases], dtype=torch.float64)
        sd = x.pow(2).mean(0).sqrt()
        used = sd > 1e-9
        scales = {n: float(sd[j]) if used[j] else 0.0 for j, n in enumerate(names)}
        kept = [n for j, n in enumerate(names) if used[j]]
        z = x[:, used] / sd[used]
        eye = torch.eye(len(kept), dtype=torch.float64)
        pooled = torch.linalg.solve(z.T @ z + ridge * len(cases) * eye, z.T @ y) if kept \
            else torch.zeros(0, dtype=torch.float64)
        weights, residual = {}, y.clone()
        for s in structures:
            rows = torch.tensor([c.structure == s for c in cases])
            zs, ys, n = z[rows], y[rows], int(rows.sum())
            own = torch.linalg.solve(zs.T @ zs + shrink * n * eye,
                                     zs.T @ ys + shrink * n * pooled) if kept else pooled
            residual[rows] = ys - zs @ own
            weights[s] = {**{name: 0.0 for name in names}, **dict(zip(kept, own.tolist()))}
        dof = max(len(cases) - len(structures) * (1 + len(kept)), 1)
        model = cls(expected, centres, scales, weights,
                    {**{name: 0.0 for name in names}, **dict(zip(kept, pooled.tolist()))},
                    math.sqrt(float(residual.pow(2).sum()) / dof), len(cases))
        subjects = list(dict.fromkeys(c.subject for c in cases))
        if not cross_validate or len(subjects) < 3:
            return model
        errors = []
        for subject in subjects:
            others = [c for c in cases if c.subject != subject]
            refit = cls.fit(others, ridge, shrink, cross_validate=False)
            errors += [refit.predict(c.structure, c.signals)["predicted_dice"] - c.dice
                       for c in cases if c.subject == subject and c.structure in refit.expected]
        return replace(model, residual_sd=math.sqrt(sum(e * e for e in errors) / len(errors)))

    def predict(self, structure: str, signals: Mapping[str, float]) -> Dict[str, float]:
        """``{predicted_dice, interval_low, interval_high}`` for one subject's structure
        (signals it lacks count as the structure's mean); ``KeyError`` for a structure the
        cases did not hold."""
        centre = self.centres[structure]
        shift = sum(w * (signals.get(n, centre[n]) - centre[n]) / self.scales[n]
                    for n, w in self.weights[structure].items() if w and self.scales[n])
        value = min(max(self.expected[structure] + shift, 0.0), 1.0)
        half = Z90 * self.residual_sd
        return {"predicted_dice": value, "interval_low": max(value - half, 0.0),
                "interval_high": min(value + half, 1.0)}

    def to_dict(self) -> dict:
        return {"Expected": self.expected, "Centres": self.centres, "Scales": self.scales,
                "Weights": self.weights, "PooledWeights": self.pooled,
                "ResidualSD": self.residual_sd, "Cases": self.cases}


def _isotonic(values: List[float], weights: List[float]) -> List[float]:
    """Pool-adjacent-violators: the non-decreasing sequence closest to ``values`` in
    weighted least squares."""
    blocks: List[Tuple[float, float, int]] = []      # (mean, weight, length)
    for v, w in zip(values, weights):
        blocks.append((v, w, 1))
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (a, wa, na), (b, wb, nb) = blocks[-2], blocks[-1]
            blocks[-2:] = [((a * wa + b * wb) / (wa + wb), wa + wb, na + nb)]
    return [mean for mean, _, n in blocks for _ in range(n)]


@dataclass
class ProbabilityCalibration:
    """Binned voxel statistics per structure (:meth:`add`), then the fitted monotone maps
    (:meth:`fit`, :meth:`apply`)."""

    bins: int = CALIBRATION_BINS
    totals: Dict[str, torch.Tensor] = field(default_factory=dict)     # [3, bins] float64
    points: Dict[str, Tuple[List[float], List[float]]] = field(default_factory=dict)

    def add(self, structure: str, probability: torch.Tensor, truth: torch.Tensor):
        """Accumulate one map ``[D,H,W]`` (probabilities) against its binary truth."""
        p = torch.as_tensor(probability).float().clamp(0, 1).flatten()
        y = (torch.as_tensor(truth) > 0.5).double().flatten()
        index = (p * self.bins).long().clamp_max(self.bins - 1)
        counts = torch.stack([torch.bincount(index, minlength=self.bins).double(),
                              torch.bincount(index, weights=p.double(), minlength=self.bins),
                              torch.bincount(index, weights=y, minlength=self.bins)])
        self.totals[structure] = self.totals.get(structure, 0) + counts

    def fit(self) -> "ProbabilityCalibration":
        """The isotonic map of each structure from its accumulated bins."""
        for structure, (count, p_sum, y_sum) in self.totals.items():
            seen = count > 0
            means = (p_sum[seen] / count[seen]).tolist()
            fitted = _isotonic((y_sum[seen] / count[seen]).tolist(), count[seen].tolist())
            self.points[structure] = (means, fitted)
        return self

    def apply(self, structure: str, probability) -> torch.Tensor:
        """The calibrated map of ``probability`` (any shape); unchanged for a structure
        without a fitted map."""
        p = torch.as_tensor(probability).float().clamp(0, 1)
        if structure not in self.points:
            return p
        xs, ys = (torch.tensor(v, dtype=torch.float32) for v in self.points[structure])
        if len(xs) == 1:
            return torch.full_like(p, float(ys[0]))
        index = torch.searchsorted(xs, p.contiguous()).clamp(1, len(xs) - 1)
        x0, x1, y0, y1 = xs[index - 1], xs[index], ys[index - 1], ys[index]
        t = ((p - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
        return y0 + t * (y1 - y0)

    def to_dict(self) -> dict:
        """Per structure the map's points: ``{"Probability": [...], "Frequency": [...]}``."""
        return {s: {"Probability": [round(v, 6) for v in xs],
                    "Frequency": [round(v, 6) for v in ys]}
                for s, (xs, ys) in self.points.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Sequence[float]]]
                  ) -> "ProbabilityCalibration":
        calibration = cls()
        calibration.points = {s: (list(v["Probability"]), list(v["Frequency"]))
                              for s, v in data.items()}
        return calibration


def expected_gain(predicted_dice: float, nearest_similarity: float) -> float:
    """What labelling one subject buys for itself: ``(1 - its predicted mean Dice) x
    (1 - its NCC to the nearest labelled subject)`` (0 for NCC >= 1): a subject the model
    segments badly and that no labelled subject resembles gains most."""
    return max(1.0 - predicted_dice, 0.0) * max(1.0 - nearest_similarity, 0.0)


def rank_suggestions(candidates: Mapping[str, Tuple[float, float]], count: int,
                     similarity: Optional[Mapping[Tuple[str, str], float]] = None) -> List[dict]:
    """The ``count`` unlabelled subjects to label next, best first (greedy).

    candidates: ``{subject: (predicted mean Dice, NCC to the nearest labelled subject)}``.
    similarity: ``{(a, b): NCC}`` between candidates (either order), optional. The gain of
    labelling i sums, over every unlabelled j it would resemble more than j's nearest labelled
    subject does, ``(1 - predicted Dice of j) x (NCC(i, j) - NCC to j's nearest labelled)``;
    with NCC(i, i) = 1 the term of i itself is :func:`expected_gain`, and without
    ``similarity`` it is the only term. After each pick, the nearest-labelled NCC of every
    candidate is updated as if the pick were labelled. -> rows ``{subject, expected_gain,
    predicted_dice, nearest_similarity, why}``; ties are broken by the subject label."""
    pairs = dict(similarity or {})

    def ncc(a: str, b: str) -> Optional[float]:
        return 1.0 if a == b else pairs.get((a, b), pairs.get((b, a)))

    nearest = {s: near for s, (_, near) in candidates.items()}
    rows, left = [], sorted(candidates)
    while left and len(rows) < max(count, 0):
        gains = {}
        for i in left:
            served = {j: ncc(i, j) - nearest[j] for j in candidates
                      if ncc(i, j) is not None and ncc(i, j) > nearest[j]}
            gains[i] = (sum((1.0 - candidates[j][0]) * gain for j, gain in served.items()),
                        len(served) - (i in served))
        pick = min(left, key=lambda i: (-gains[i][0], i))
        dice, near = candidates[pick][0], nearest[pick]
        others = gains[pick][1]
        rows.append({"subject": pick, "expected_gain": round(gains[pick][0], 4),
                     "predicted_dice": round(dice, 4), "nearest_similarity": round(near, 4),
                     "why": f"predicted mean Dice {dice:.2f}; its most similar labelled "
                            f"subject has NCC {near:.2f}" + (
                                f"; it resembles {others} other unlabelled subject"
                                f"{'s' if others != 1 else ''} more than any labelled one"
                                if others else "")})
        left.remove(pick)
        for j in candidates:
            value = ncc(pick, j)
            if value is not None:
                nearest[j] = max(nearest[j], value)
    return rows


def representative_picks(candidates: Sequence[str], count: int,
                         similarity: Mapping[Tuple[str, str], float],
                         nearest: Mapping[str, float]) -> List[Tuple[str, float, int]]:
    """The ``count`` unlabelled subjects that, labelled, would bring the others closest to a
    labelled subject: greedy facility location on NCC. Each pick maximises
    ``sum_j max(0, NCC(i, j) - best_j)`` over the other unpicked candidates j, where ``best_j``
    starts at j's NCC to its nearest labelled subject (``nearest``) and rises with each pick;
    ties go to the smaller label. similarity: ``{(a, b): NCC}`` (either order; a missing pair
    counts as -1). -> ``[(subject, gain, candidates it brings closer)]``, best first.

    Simulated on held-out anatomy (``benchmarks/label_suggestions.py``), adding these beat
    adding random subjects in every round, where adding the subjects the pool serves worst
    (low predicted quality, far from the labelled set) did not."""
    def ncc(a: str, b: str) -> float:
        return similarity.get((a, b), similarity.get((b, a), -1.0))

    best, picks = dict(nearest), []
    for _ in range(min(count, len(candidates))):
        left = [c for c in candidates if c not in {p for p, _, _ in picks}]
        gains = {}
        for i in left:
            served = [max(0.0, ncc(i, j) - best[j]) for j in left if j != i]
            gains[i] = (sum(served), sum(1 for v in served if v > 0))
        pick = min(gains, key=lambda c: (-gains[c][0], c))
        picks.append((pick, gains[pick][0], gains[pick][1]))
        best = {j: max(best[j], ncc(pick, j)) for j in candidates}
    return picks

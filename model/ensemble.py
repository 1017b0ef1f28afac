"""Context ensembles: K predictions from K context sets, kept as running sums.

>>> result = predict_ensemble(predictor, target, members)   # members: [(images, labels)] * K
>>> result.mean, result.std                                 # [K_s, D, H, W] float32 each
>>> summaries = structure_uncertainty(result)               # per structure, see below
>>> result, sets, scores = predict_from_pool(predictor, target, images, labels, ids, size=4,
...                                          members=3, selection="similar", exclude=["01"])

Members run one after the other; only three running tensors are kept (Welford's mean and
sum of squared deviations in float32, and the count of members that call a voxel foreground,
uint8), so memory is that of about three predictions whatever K. ``K = 1`` returns the
member itself, bit for bit. The spread is the
population standard deviation of the members' outputs per voxel (0 for one member).

An optional left-right flipped member (``flip=True``) runs one more prediction with the
target and every context pair mirrored along the first grid axis (left-right on the model
grid, which is centred on the template) and mirrors its output back.

Per-structure summaries (:func:`structure_uncertainty`), both scalars in [0, 1];
``disagreement`` is the one for QC (:data:`QC_SUMMARY`): on held-out subjects its Spearman
correlation with 1 - Dice was 0.91, that of ``boundary_spread`` -0.12
(``evaluation/selection_ensemble/``):

* ``boundary_spread``: the mean spread in the boundary band of the ensemble mask (voxels
  within one voxel of its surface, inside or out): where the members disagree on the edge.
* ``disagreement``: 1 - the members' pooled pairwise Dice, from the vote counts c_v (how many
  of the K members call voxel v foreground): pairwise intersections sum to
  ``sum c(c-1)/2`` and pairwise sizes to ``(K-1) sum c``, so pooled Dice =
  ``sum c(c-1) / ((K-1) sum c)`` without keeping any member.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .labels import THRESHOLD  # foreground, as the app's masks and the Dice
from .strategies import select

SUMMARIES = ("disagreement", "boundary_spread")
QC_SUMMARY = "disagreement"


class RunningMoments:
    """Welford's running mean and spread of same-shaped tensors, plus foreground votes."""

    def __init__(self):
        self.count = 0
        self.mean: Optional[Tensor] = None
        self._squares: Optional[Tensor] = None
        self.votes: Optional[Tensor] = None

    def add(self, value: Tensor):
        value = torch.as_tensor(value).float()
        if self.mean is None:
            self.mean, self._squares = torch.zeros_like(value), torch.zeros_like(value)
            self.votes = torch.zeros(value.shape, dtype=torch.uint8)
        if self.count == 255:
            raise ValueError("at most 255 ensemble members")
        self.count += 1
        if self.count == 1:  # the first member is the mean, bit for bit (even -0.0)
            self.mean.copy_(value)
        else:
            delta = value - self.mean
            self.mean += delta / self.count
            self._squares += delta * (value - self.mean)
        self.votes += (value > THRESHOLD).to(torch.uint8)

    @property
    def std(self) -> Tensor:
        """Population standard deviation across the members so far (0 for one member)."""
        return (self._squares.clamp_min(0) / self.count).sqrt()


@dataclass
class EnsembleResult:
    """mean, std: float32 ``[D,H,W]`` or ``[K_s,D,H,W]`` (as one prediction); votes: uint8 of
    the same shape (members above :data:`THRESHOLD`); members: how many ran."""

    mean: Tensor
    std: Tensor
    votes: Tensor
    members: int


def single_member(mean: Tensor) -> EnsembleResult:
    """One plain prediction as a one-member :class:`EnsembleResult` (spread 0)."""
    mean = torch.as_tensor(mean).float()
    return EnsembleResult(mean, torch.zeros_like(mean), (mean > THRESHOLD).to(torch.uint8), 1)


def _flipped(volumes):
    """Mirror ``[..., D, H, W]`` volumes (a tensor, or a sequence of them) along D."""
    if isinstance(volumes, Tensor):
        return volumes.flip(-3)
    return _LazyFlip(volumes)


class _LazyFlip:
    """A sequence of volumes (or of sequences of them), mirrored only when read."""

    def __init__(self, volumes):
        self.volumes = volumes

    def __len__(self):
        return len(self.volumes)

    def __getitem__(self, index):
        item = self.volumes[index]
        if isinstance(item, (Tensor, np.ndarray)):
            return torch.as_tensor(item).flip(-3)
        return _LazyFlip(item)


def predict_ensemble(predictor, target: Tensor, members: Iterable[Tuple[object, object]],
                     flip: bool = False, on_member: Optional[Callable[[int, Tensor], None]] = None,
                     **predict_kwargs) -> EnsembleResult:
    """Run ``predictor.predict`` once per (context_images, context_labels) member, one after
    the other, and keep only the running sums.

    target ``[D,H,W]``; members: an iterable of (images ``[L,D,H,W]`` or a sequence, labels
    ``[L,...]`` or ``[K_s,L,...]`` or sequences), as :meth:`Predictor.predict` takes them.
    flip: add one member with everything mirrored left-right (the last member's contexts).
    on_member(index, output): called with each member's output (e.g. to score it).
    A member that fails raises; nothing partial is returned.
    """
    moments = RunningMoments()
    last = None
    for index, (images, labels) in enumerate(members):
        output = predictor.predict(target, images, labels, **predict_kwargs)
        if on_member is not None:
            on_member(index, output)
        moments.add(output)
        last = (images, labels)
    if last is None:
        raise ValueError("an ensemble needs at least one member")
    if flip:
        images, labels = last
        output = predictor.predict(torch.as_tensor(target).flip(-3), _flipped(images),
                                   _flipped(labels), **predict_kwargs).flip(-3)
        if on_member is not None:
            on_member(moments.count, output)
        moments.add(output)
    return EnsembleResult(moments.mean, moments.std, moments.votes, moments.count)


def predict_from_pool(predictor, target: Tensor, images: Tensor, labels: Tensor,
                      ids: Sequence[str], size: int, members: int = 1,
                      selection: str = "random", *, ordering: Optional[Sequence[str]] = None,
                      seed: int = 0, mask=None, exclude: Sequence[str] = (), flip: bool = False,
                      **predict_kwargs):
    """Select ``members`` context sets of ``size`` pairs out of a labelled pool for one target
    (:func:`.strategies.select`) and run them as an ensemble.

    images ``[N,D,H,W]``, labels ``[N,...]`` or ``[K_s,N,...]`` (the pool), ids: the N subject
    labels; exclude: subjects never used (the target itself); ordering: for ``random``, the
    caller's order of the pool (member 0 = its first ``size``), default seeded by ``seed``.
    -> (:class:`EnsembleResult`, the sets as lists of ids, ``{id: score}`` or None).
    """
    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    where = {str(s): i for i, s in enumerate(ids)}
    excluded = {str(s) for s in exclude}
    pool = [str(s) for s in ids if str(s) not in excluded]
    order = None if ordering is None else [str(s) for s in ordering if str(s) not in excluded]
    sets, scores = select(selection, pool, size, members, target=target, mask=mask, seed=seed,
                          pool_images=[images[where[s]] for s in pool],
                          ordering=(lambda: order) if order is not None else None)

    def member(subjects):
        index = [where[s] for s in subjects]
        return images[index], labels[index] if labels.dim() == 4 else labels[:, index]

    result = predict_ensemble(predictor, target, (member(s) for s in sets), flip=flip,
                              **predict_kwargs)
    return result, sets, scores


def boundary_band(mask: Tensor) -> Tensor:
    """Boolean ``[D,H,W]``: voxels within one voxel (26-neighbourhood) of the mask's surface,
    on either side (dilation minus erosion)."""
    volume = mask.float()[None, None]
    dilated = F.max_pool3d(volume, 3, stride=1, padding=1)
    eroded = -F.max_pool3d(-volume, 3, stride=1, padding=1)
    return (dilated - eroded)[0, 0] > 0


def structure_uncertainty(result: EnsembleResult) -> Sequence[Dict[str, float]]:
    """Per structure ``{boundary_spread, disagreement}`` (see the module docstring); a single
    ``[D,H,W]`` result gives a list of one. Both are 0 for one member or an empty mask."""
    means, stds, votes = (t[None] if t.dim() == 3 else t
                          for t in (result.mean, result.std, result.votes))
    summaries = []
    for mean, std, count in zip(means, stds, votes):
        band = boundary_band(mean > THRESHOLD)
        spread = float(std[band].mean()) if band.any() else 0.0
        count = count.double()
        total = float(count.sum())
        agreement = (float((count * (count - 1)).sum()) / ((result.members - 1) * total)
                     if result.members > 1 and total > 0 else 1.0)
        summaries.append({"boundary_spread": spread, "disagreement": 1.0 - agreement})
    return summaries

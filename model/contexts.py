"""The context set as the predictor reads it: stacked tensors, or volumes read chunk by chunk.

>>> pairs = ContextPairs(images, labels, target_shape=(128, 128, 128))
>>> images_n, labels_n = pairs.take(structures=[0, 0], contexts=[3, 4])   # [n, D, H, W] each

A tensor (or array) holds all L volumes in memory; a sequence (a list, or any object with
``__len__`` and ``__getitem__`` that loads volume i on demand, e.g. from a file) is read only
when the pair's chunk runs, so that the memory of a prediction stays flat in L.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor


def _is_stacked(volumes) -> bool:
    return isinstance(volumes, (Tensor, np.ndarray))


class ContextPairs:
    """L context images and K label sets over them (the structures).

    images: ``[L, D, H, W]`` or a sequence of L ``[D, H, W]`` volumes. labels: ``[L, D, H, W]``
    or ``[K, L, D, H, W]``; or a sequence of L volumes (one structure), or of K such sequences.
    ``single`` tells whether labels were given for one structure without the K axis.
    """

    def __init__(self, images, labels, target_shape: Sequence[int]):
        self.shape = tuple(int(s) for s in target_shape)
        self.images = torch.as_tensor(images) if _is_stacked(images) else images
        if _is_stacked(labels):
            labels = torch.as_tensor(labels)
            self.single = labels.dim() == 4
            self.labels = labels[None] if self.single else labels
            structures = self.labels.shape[0]
        else:
            self.single = _is_stacked(labels[0]) if len(labels) else True
            self.labels = [labels] if self.single else labels
            structures = len(self.labels)
        self.pairs, self.structures = len(self.images), structures
        self._check()

    def _check(self):
        problem = None
        if self.pairs < 1:
            problem = "no context pairs"
        elif isinstance(self.images, Tensor) and self.images.dim() != 4:
            problem = f"context_images must be [L,D,H,W]; got {list(self.images.shape)}"
        elif any(len(labels) != self.pairs for labels in self.labels):
            problem = f"every label set must hold one volume per context image ({self.pairs})"
        elif isinstance(self.labels, Tensor) and self.labels.dim() != 5:
            problem = (f"context_labels must be [L,D,H,W] or [K,L,D,H,W]; got "
                       f"{list(self.labels.shape)}")
        if problem is None:
            for name, volumes in (("context_images", self.images), ("context_labels", self.labels)):
                if isinstance(volumes, Tensor) and tuple(volumes.shape[-3:]) != self.shape:
                    problem = (f"{name} volumes are {list(volumes.shape[-3:])} but the target is "
                               f"{list(self.shape)}; resample the pairs to the target's grid")
        if problem:
            raise ValueError(problem)

    def _volume(self, volume, what: str) -> Tensor:
        volume = torch.as_tensor(volume)
        if tuple(volume.shape) != self.shape:
            raise ValueError(f"{what} is {list(volume.shape)} but the target is "
                             f"{list(self.shape)}; resample it to the target's grid")
        return volume

    def take(self, structures: List[int], contexts: List[int]) -> Tuple[Tensor, Tensor]:
        """Images ``[n, D, H, W]`` of ``contexts`` and labels ``[n, D, H, W]`` of the
        (structure, context) pairs, loading lazily given volumes now."""
        if isinstance(self.images, Tensor):
            images = self.images[contexts]
        else:
            images = torch.stack([self._volume(self.images[c], f"context image {c}")
                                  for c in contexts])
        if isinstance(self.labels, Tensor):
            labels = self.labels[structures, contexts]
        else:
            labels = torch.stack([self._volume(self.labels[k][c], f"label set {k}, context {c}")
                                  for k, c in zip(structures, contexts)])
        return images, labels

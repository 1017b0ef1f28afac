"""Task synthesis: a training task's input/output pair made on the fly from clean volumes.

The degradations themselves (and their registry) are :mod:`..degradations`; this module
names the tasks and makes their pairs.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..degradations import DEGRADATIONS, TASK_DEGRADATION, SynthesisConfig, degrade

SEGMENTATION = "segmentation"


def central_slices(image: Tensor) -> Tensor:
    """Keep only the three central orthogonal slices; every other voxel is 0."""
    out = torch.zeros_like(image)
    d, h, w = (s // 2 for s in image.shape)
    out[d], out[:, h], out[:, :, w] = image[d], image[:, h], image[:, :, w]
    return out


#: generation tasks made from one clean image (restoration: input degraded, output clean)
RESTORATION_TASKS = tuple(TASK_DEGRADATION)
#: generation tasks that need more than the image
SPECIAL_TASKS = ("2d-to-3d", "skull-stripping", "modality-transform")
GENERATION_TASKS = RESTORATION_TASKS + SPECIAL_TASKS
TASKS = (SEGMENTATION,) + GENERATION_TASKS


def draw_overlay(task: str, generator: torch.Generator, prob: float = 0.05) -> list:
    """Random task overlapping: each degradation (except the task's own) with probability ``prob``.

    Drawn once per group, so that every pair of a context set shows the same task.
    """
    own = TASK_DEGRADATION[task].name if task in TASK_DEGRADATION else None
    return [name for name in DEGRADATIONS
            if torch.rand((), generator=generator) < prob and name != own]


def make_pair(task: str, volumes: Dict[str, Tensor], generator: torch.Generator,
              overlay: Sequence[str] = (), config: Optional[SynthesisConfig] = None
              ) -> Tuple[Tensor, Tensor]:
    """One subject's (input, output) for ``task``.

    volumes: ``image`` (required, [0, 1]); ``label`` (binary, segmentation), ``brain_mask``
    (skull stripping), ``paired`` (modality transform). ``overlay`` lists extra degradations
    applied to the input after the task's own.
    """
    cfg = config or SynthesisConfig()
    image = volumes["image"].float()
    if task == SEGMENTATION:
        source, target = image, volumes["label"].float()
    elif task in TASK_DEGRADATION:
        source, target = TASK_DEGRADATION[task].apply(image, generator, cfg), image
    elif task == "2d-to-3d":
        source, target = central_slices(image), image
    elif task == "skull-stripping":
        source, target = image, image * (volumes["brain_mask"] > 0)
    elif task == "modality-transform":
        source, target = image, volumes["paired"].float()
    else:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    for name in overlay:
        source = degrade(name, source, generator, cfg)
    return source, target

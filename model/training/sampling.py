"""Episode sampling: task by rate, dataset uniformly, a group of L+1 subjects, on-the-fly pairs.

An *episode* is a group of ``L + 1`` subjects of one dataset showing one task: inputs and
outputs ``[L+1, D, H, W]`` on the training grid. :func:`rotations` lets every member take a turn
as the target with the other L as its context.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..fileio import read_volume
from ..intensity import normalise_intensity
from .augment import AugmentConfig, augment_group
from .labelmap_synthesis import LabelmapConfig, labelmap_episode
from .manifest import LABELMAP, DatasetEntry, Manifest, Structures, named_structures
from ..degradations import SynthesisConfig
from .synthesis import SEGMENTATION, TASKS, draw_overlay, make_pair

#: sampling rate of each task (segmentation 2, every generation task 1)
DEFAULT_RATES: Dict[str, float] = {task: (2.0 if task == SEGMENTATION else 1.0) for task in TASKS}
MAX_UNION_CLASSES = 10


@dataclass
class Episode:
    task: str
    dataset: str
    subjects: List[str]
    inputs: Tensor    # [L+1, D, H, W] float32 in [0, 1]
    outputs: Tensor   # [L+1, D, H, W] float32
    classes: List[int] = field(default_factory=list)  # segmentation: the foreground classes


class VolumeLoader:
    """Read NIfTI volumes onto the training grid, with a small LRU cache.

    Images are normalised with :func:`normalise_intensity`; label maps stay integers; volumes
    whose shape differs from ``grid`` are resampled (trilinear / nearest).
    """

    def __init__(self, manifest: Manifest, grid: Sequence[int], cache_size: int = 64):
        self.manifest, self.grid, self.cache_size = manifest, tuple(int(g) for g in grid), cache_size
        self._cache: "OrderedDict[tuple, Tensor]" = OrderedDict()

    def __call__(self, path: str, kind: str = "image") -> Tensor:
        key = (path, kind)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        volume = self._read(self.manifest.resolve(path), kind)
        self._cache[key] = volume
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return volume

    def volumes(self, subject, task: str, classes: Sequence[int] = (),
                modality: Optional[str] = None) -> Dict[str, Tensor]:
        """What :func:`make_pair` needs of ``subject`` for ``task``: the image, and the binary
        label of ``classes`` (segmentation), the brain mask (skull stripping) or the paired
        ``modality`` image (modality transform)."""
        volumes = {"image": self(subject.image)}
        if task == SEGMENTATION:
            label = self(subject.label, "label")
            volumes["label"] = torch.isin(label, torch.tensor(list(classes), dtype=label.dtype))
        elif task == "skull-stripping":
            volumes["brain_mask"] = self(subject.brain_mask, "label")
        elif task == "modality-transform":
            volumes["paired"] = self(subject.paired[modality])
        return volumes

    def _read(self, path, kind: str) -> Tensor:
        _, data = read_volume(path)
        if kind == "label":
            volume = torch.from_numpy(np.rint(data).astype(np.int16))
        else:
            volume = torch.from_numpy(normalise_intensity(data))
        if tuple(volume.shape) != self.grid:
            mode = "nearest" if kind == "label" else "trilinear"
            resized = F.interpolate(volume[None, None].float(), size=self.grid, mode=mode,
                                    **({} if mode == "nearest" else {"align_corners": False}))[0, 0]
            volume = resized.round().to(torch.int16) if kind == "label" else resized
        return volume


def _choice(generator: torch.Generator, n: int) -> int:
    return int(torch.randint(n, (1,), generator=generator))


def choose_classes(label: Tensor, generator: torch.Generator) -> List[int]:
    """One class (p=0.5) or a random union of up to 10 of the classes present in ``label``."""
    present = [int(c) for c in torch.unique(label) if c != 0]
    if not present:
        return []
    if torch.rand((), generator=generator) < 0.5:
        return [present[_choice(generator, len(present))]]
    count = 1 + _choice(generator, min(MAX_UNION_CLASSES, len(present)))
    order = torch.randperm(len(present), generator=generator)[:count]
    return sorted(present[i] for i in order.tolist())


def choose_structure(label: Tensor, named: Dict[str, List[int]],
                     generator: torch.Generator) -> List[int]:
    """The label values of one named structure (uniformly) among those present in ``label``."""
    present = set(int(c) for c in torch.unique(label))
    candidates = [sorted(values) for _, values in sorted(named.items())
                  if present.intersection(values)]
    return candidates[_choice(generator, len(candidates))] if candidates else []


class EpisodeSampler:
    """Draw training episodes from a manifest; all randomness comes from the given generator.

    Segmentation shows one label value or a random union of values (:func:`choose_classes`);
    with ``structures`` and ``structure_prob > 0`` it shows, with that probability, one named
    structure of the dataset instead (e.g. brain, GM, a bilateral hippocampus), so that the
    structures users ask for are not left to the chance of a random union. Label-map datasets
    (``kind`` ``labelmap``) synthesise every episode's images from the subjects' label maps
    (:func:`labelmap_episode`, its ranges in ``labelmap``).
    """

    def __init__(self, manifest: Manifest, grid: Sequence[int],
                 synthesis: Optional[SynthesisConfig] = None,
                 augment: Optional[AugmentConfig] = None,
                 rates: Optional[Dict[str, float]] = None,
                 tasks: Optional[Sequence[str]] = None, cache_size: int = 64,
                 structures: Optional[Structures] = None, structure_prob: float = 0.0,
                 labelmap: Optional[LabelmapConfig] = None):
        self.structures, self.structure_prob = structures or {}, float(structure_prob)
        self.labelmap = labelmap or LabelmapConfig()
        self.load = VolumeLoader(manifest, grid, cache_size)
        self.synthesis = synthesis or SynthesisConfig()
        self.augment = augment if augment is not None else AugmentConfig()
        rates = dict(DEFAULT_RATES, **(rates or {}))
        self.by_task: Dict[str, List[DatasetEntry]] = {}
        for dataset in manifest.datasets:
            if len(dataset.subjects) < 2:
                continue
            for task in dataset.supported_tasks():
                if (tasks is None or task in tasks) and rates.get(task, 0) > 0:
                    self.by_task.setdefault(task, []).append(dataset)
        if not self.by_task:
            raise ValueError("no task can be sampled: each dataset needs >= 2 subjects and the "
                             "files its tasks require")
        self.tasks = sorted(self.by_task, key=TASKS.index)
        self.rates = torch.tensor([rates[t] for t in self.tasks], dtype=torch.float64)

    def sample_task(self, generator: torch.Generator) -> str:
        return self.tasks[int(torch.multinomial(self.rates, 1, generator=generator))]

    def choose_segmentation(self, dataset: str, label: Tensor, generator: torch.Generator) -> List[int]:
        """The foreground label values of a segmentation episode (see the class doc)."""
        named = named_structures(self.structures, dataset)
        if named and self.structure_prob > 0 and torch.rand((), generator=generator) < self.structure_prob:
            classes = choose_structure(label, named, generator)
            if classes:
                return classes
        return choose_classes(label, generator)

    def sample(self, generator: torch.Generator, context_size: int,
               task: Optional[str] = None) -> Episode:
        """One episode of ``context_size + 1`` distinct subjects (fewer if the dataset is smaller)."""
        task = task or self.sample_task(generator)
        candidates = self.by_task[task]
        dataset = candidates[_choice(generator, len(candidates))]
        # a dataset smaller than the group gives all its subjects (no subject twice, so the
        # target never sees itself in its context)
        n = min(context_size + 1, len(dataset.subjects))
        picks = torch.randperm(len(dataset.subjects), generator=generator)[:n].tolist()
        subjects = [dataset.subjects[i] for i in picks]
        if dataset.kind == LABELMAP:
            return self._labelmap_sample(task, dataset, subjects, generator)
        modality = None
        if task == "modality-transform":
            names = dataset.paired_modalities()
            modality = names[_choice(generator, len(names))]
        classes: List[int] = []
        if task == SEGMENTATION:
            classes = self.choose_segmentation(dataset.name, self.load(subjects[0].label, "label"),
                                               generator)
        overlay = draw_overlay(task, generator, self.synthesis.overlay_prob)
        inputs, outputs = [], []
        for subject in subjects:
            volumes = self.load.volumes(subject, task, classes, modality)
            source, target = make_pair(task, volumes, generator, overlay, self.synthesis)
            inputs.append(source)
            outputs.append(target)
        inputs, outputs = augment_group(torch.stack(inputs), torch.stack(outputs), task,
                                        generator, self.augment)
        return Episode(task, dataset.name, [s.id for s in subjects], inputs, outputs, classes)

    def _labelmap_sample(self, task: str, dataset: DatasetEntry, subjects, generator) -> Episode:
        """An episode whose images are synthesised from the subjects' label maps."""
        overlay = draw_overlay(task, generator, self.synthesis.overlay_prob)
        labels = [self.load(s.label, "label") for s in subjects]
        inputs, outputs, classes, _ = labelmap_episode(task, labels, generator, self.labelmap,
                                                       self.synthesis, overlay)
        inputs, outputs = augment_group(inputs, outputs, task, generator, self.augment)
        return Episode(task, dataset.name, [s.id for s in subjects], inputs, outputs, classes)


def rotations(inputs: Tensor, outputs: Tensor, targets: Optional[int] = None) -> Dict[str, Tensor]:
    """Every member (or the first ``targets``) takes a turn as target, the others are context.

    ``[N, D, H, W]`` x2 -> target_in/target_out ``[B, 1, D, H, W]``,
    context_in/context_out ``[B, N-1, 1, D, H, W]`` with B = targets or N.
    """
    n = inputs.shape[0]
    if n < 2:
        raise ValueError("a group needs at least 2 members (1 target + 1 context pair)")
    count = n if targets is None else min(int(targets), n)
    others = [[j for j in range(n) if j != t] for t in range(count)]
    index = torch.tensor(others)
    return {"target_in": inputs[:count, None], "target_out": outputs[:count, None],
            "context_in": inputs[index][:, :, None], "context_out": outputs[index][:, :, None]}

"""The evaluation protocol of ``neuroverse3d-eval`` (described in :mod:`.cli`): seeded splits,
seeded context draws, and per episode the model against its baseline (majority vote for Dice,
the degraded input for PSNR).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from ..anatomy.synth import subject_seed
from ..model.training import SEGMENTATION, VolumeLoader, dice, make_pair, psnr
from ..workflows.errors import BadInputError, MissingInputError
from .report import COLUMNS

CONTEXT_SIZES = (1, 2, 4, 8, 16)
DEFAULT_TASKS = ("segmentation", "gaussian-noise", "inpainting")
#: metric -> the baseline method it is compared with
BASELINES = {"dice": "majority-vote", "psnr": "degraded-input"}


def draw_seed(seed: int, *key) -> int:
    """A generator seed for one (dataset, [task,] L, draw, target index) key; the last is an int."""
    return subject_seed(seed, "/".join(str(k) for k in key[:-1]), key[-1])


def split_subjects(ids: Sequence[str], seed: int, test_fraction: float = 0.2):
    """Seeded split -> (pool ids, test ids), both in manifest order; at least one of each."""
    if len(ids) < 2:
        raise BadInputError(f"evaluation needs >= 2 subjects per dataset, got {len(ids)}")
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = min(len(ids) - 1, max(1, int(round(test_fraction * len(ids)))))
    return [ids[i] for i in sorted(order[n_test:])], [ids[i] for i in sorted(order[:n_test])]


def majority_vote(context_labels: torch.Tensor) -> torch.Tensor:
    """``[..., L, D, H, W]`` binary labels -> ``[..., D, H, W]`` float {0, 1}: at least half vote
    (ties count as foreground)."""
    return ((context_labels > 0.5).float().mean(-4) >= 0.5).float()


def load_structures(path: Optional[Path], manifest_path: Path) -> Dict[str, Dict[str, List[int]]]:
    """``structures.json`` (given, or beside the manifest) -> {dataset or "*": {name: values}}."""
    if path is not None and not Path(path).is_file():
        raise MissingInputError(f"{path}: structures file not found")
    path = Path(path or Path(manifest_path).parent / "structures.json")
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {d: {n: [int(v) for v in vs] for n, vs in s.items()} for d, s in data.items()}
    except (ValueError, AttributeError, TypeError) as error:
        raise BadInputError(f"{path}: not a structures file ({{dataset: {{name: [values]}}}}): "
                            f"{error}") from None


def _row(dataset, task, structure, metric, size, subject, draw, method, value, context):
    return dict(zip(COLUMNS, (dataset, task, structure, metric, size, subject, draw, method,
                              float(value), ",".join(context))))


class Evaluator:
    """Runs the protocol with one :class:`Predictor`; ``rows`` collects the results (COLUMNS)."""

    def __init__(self, predictor, manifest, grid, structures=None, tasks=DEFAULT_TASKS,
                 context_sizes=CONTEXT_SIZES, draws: int = 10, seed: int = 0,
                 test_fraction: float = 0.2, max_test_subjects: Optional[int] = None, log=print):
        self.predictor, self.manifest = predictor, manifest
        self.load = VolumeLoader(manifest, grid, cache_size=256)
        self.structures, self.tasks = structures or {}, list(tasks)
        self.context_sizes, self.draws, self.seed = sorted(set(context_sizes)), draws, seed
        self.test_fraction, self.max_test, self.log = test_fraction, max_test_subjects, log
        self.rows: List[dict] = []
        self.skipped: List[str] = []
        self.splits: Dict[str, dict] = {}
        self.predict_seconds: Dict[str, List[float]] = {}

    def _predict(self, task, target, images, labels):
        start = time.perf_counter()
        out = self.predictor.predict(target, images, labels, mini_context_size="auto")
        self.predict_seconds.setdefault(task, []).append(time.perf_counter() - start)
        return out

    def structures_of(self, dataset) -> Dict[str, List[int]]:
        """The named structures of ``dataset``; default one structure per label value."""
        named = self.structures.get(dataset.name, self.structures.get("*"))
        if named:
            return named
        values = torch.unique(self.load(dataset.subjects[0].label, "label")).tolist()
        return {f"label-{int(v)}": [int(v)] for v in values if v != 0}

    def _skip(self, message: str):
        self.skipped.append(message)
        self.log(f"neuroverse3d-eval: skipped {message}")

    def run(self) -> List[dict]:
        for dataset in self.manifest.datasets:
            tasks = [t for t in self.tasks if t in dataset.supported_tasks()]
            missing = [t for t in self.tasks if t not in tasks]
            if missing:
                self._skip(f"{dataset.name}: tasks {', '.join(missing)} (data missing)")
            subjects = {s.id: s for s in dataset.subjects}
            pool, test = split_subjects(list(subjects), draw_seed(self.seed, dataset.name,
                                                                  "split", 0), self.test_fraction)
            test = test[:self.max_test] if self.max_test else test
            self.splits[dataset.name] = {"pool": pool, "test": test}
            sizes = [L for L in self.context_sizes if L <= len(pool)]
            too_big = [L for L in self.context_sizes if L > len(pool)]
            if too_big:
                self._skip(f"{dataset.name}: context sizes {', '.join(map(str, too_big))} "
                           f"(larger than the pool of {len(pool)})")
            for index, target in enumerate(test):
                for size in sizes:
                    for draw in range(self.draws):
                        picks = torch.randperm(len(pool), generator=torch.Generator().manual_seed(
                            draw_seed(self.seed, dataset.name, size, draw, index)))[:size]
                        context = [subjects[pool[i]] for i in picks.tolist()]
                        for task in tasks:
                            self._episode(dataset, task, subjects[target], context, size, draw,
                                          index)
            self.log(f"neuroverse3d-eval: {dataset.name}: {len(test)} test subjects, pool "
                     f"{len(pool)}, tasks {', '.join(tasks) or 'none'}")
        return self.rows

    def _episode(self, dataset, task, target, context, size, draw, index):
        ids = [s.id for s in context]
        if task == SEGMENTATION:
            named = self.structures_of(dataset)
            masks = [torch.stack([torch.isin(self.load(s.label, "label"),
                                             torch.tensor(values, dtype=torch.int16)).float()
                                  for values in named.values()]) for s in [target, *context]]
            truth, labels = masks[0], torch.stack(masks[1:], dim=1)   # [K,...], [K, L, ...]
            images = torch.stack([self.load(s.image) for s in context])
            predicted = self._predict(task, self.load(target.image), images, labels)
            vote = majority_vote(labels)
            for k, name in enumerate(named):
                for method, out in (("model", predicted[k]), ("majority-vote", vote[k])):
                    self.rows.append(_row(dataset.name, task, name, "dice", size, target.id, draw,
                                          method, dice(out, truth[k]), ids))
            return
        generator = torch.Generator().manual_seed(
            draw_seed(self.seed, dataset.name, task, size, draw, index))
        modality = dataset.paired_modalities()[0] if task == "modality-transform" else None
        pairs = [make_pair(task, self.load.volumes(s, task, modality=modality), generator)
                 for s in [target, *context]]
        source, clean = pairs[0]
        predicted = self._predict(task, source, torch.stack([p[0] for p in pairs[1:]]),
                                  torch.stack([p[1] for p in pairs[1:]]))
        for method, out in (("model", predicted), ("degraded-input", source)):
            self.rows.append(_row(dataset.name, task, "n/a", "psnr", size, target.id, draw,
                                  method, psnr(out, clean), ids))

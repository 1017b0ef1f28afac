"""The evaluation protocol of ``neuroverse3d-eval`` (described in :mod:`.cli`): seeded splits,
seeded context draws, and per episode the model against its baseline (majority vote for Dice,
the degraded input for PSNR).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from ..anatomy.synth import subject_seed
from ..model.ensemble import EnsembleResult, RunningMoments, structure_uncertainty
from ..model.selection import check_request, context_sets, rank_pool
from ..model.strategies import get_strategy, seeded_ordering
from ..model.training import SEGMENTATION, VolumeLoader, dice, make_pair, psnr, read_structures
from ..model.training.manifest import named_structures, structures_file
from ..workflows.errors import BadInputError, MissingInputError
from .calibration import Reliability
from .report import COLUMNS

CONTEXT_SIZES = (1, 2, 4, 8, 16)
DEFAULT_TASKS = ("segmentation", "gaussian-noise", "inpainting")
#: metric -> the baseline method it is compared with
BASELINES = {"dice": "majority-vote", "psnr": "degraded-input"}


def method_name(base: str, selection: str = "random", members: int = 1) -> str:
    """``model`` (random, one draw: the paper's protocol), ``model-similar``,
    ``model-ens4``, ``model-similar-ens4``; baselines likewise (``majority-vote-similar``)."""
    return base + (f"-{selection}" if selection != "random" else "") + \
        (f"-ens{members}" if members > 1 else "")


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
    path = structures_file(manifest_path, path)
    if not path.is_file():
        return {}
    try:
        return read_structures(path)
    except ValueError as error:
        raise BadInputError(str(error)) from None


def _row(dataset, task, structure, metric, size, subject, draw, method, value, context):
    return dict(zip(COLUMNS, (dataset, task, structure, metric, size, subject, draw, method,
                              float(value), ",".join(context))))


class Evaluator:
    """Runs the protocol with one :class:`Predictor`; ``rows`` collects the results (COLUMNS)."""

    def __init__(self, predictor, manifest, grid, structures=None, tasks=DEFAULT_TASKS,
                 context_sizes=CONTEXT_SIZES, draws: int = 10, seed: int = 0,
                 test_fraction: float = 0.2, max_test_subjects: Optional[int] = None, log=print,
                 selections: Sequence[str] = ("random",), ensembles: Sequence[int] = (1,),
                 similarity_mask=None, mini_context_size="auto"):
        self.predictor, self.manifest = predictor, manifest
        self.selections, self.ensembles = list(dict.fromkeys(selections)), sorted(set(ensembles))
        self.similarity_mask, self.mini_context_size = similarity_mask, mini_context_size
        #: method -> context size -> :class:`.calibration.Reliability` (segmentation voxels)
        self.reliability: Dict[str, Dict[int, Reliability]] = {}
        self.load = VolumeLoader(manifest, grid, cache_size=256)
        self.structures, self.tasks = structures or {}, list(tasks)
        self.context_sizes, self.draws, self.seed = sorted(set(context_sizes)), draws, seed
        self.test_fraction, self.max_test, self.log = test_fraction, max_test_subjects, log
        self.rows: List[dict] = []
        self.skipped: List[str] = []
        self.splits: Dict[str, dict] = {}
        self.predict_seconds: Dict[str, List[float]] = {}
        #: similar selection: per target and L, the chosen subjects and their NCC scores
        self.selected: List[dict] = []

    def _predict(self, task, target, images, labels):
        start = time.perf_counter()
        out = self.predictor.predict(target, images, labels,
                                     mini_context_size=self.mini_context_size)
        self.predict_seconds.setdefault(task, []).append(time.perf_counter() - start)
        return out

    def structures_of(self, dataset) -> Dict[str, List[int]]:
        """The named structures of ``dataset``; default one structure per label value."""
        named = named_structures(self.structures, dataset.name)
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
            members = max(self.ensembles)
            too_many = [L for L in sizes if check_request(len(pool), L, members)]
            if too_many:
                self._skip(f"{dataset.name}: context sizes {', '.join(map(str, too_many))} "
                           f"(a pool of {len(pool)} has fewer than {members} distinct sets)")
                sizes = [L for L in sizes if L not in too_many]
            for index, target in enumerate(test):
                ranking = None
                for size in sizes:
                    for draw in range(self.draws):
                        ordering = seeded_ordering(pool, draw_seed(self.seed, dataset.name, size,
                                                                   draw, index))
                        sets = [[subjects[i] for i in ids]
                                for ids in context_sets(ordering, size, members)]
                        for task in tasks:
                            if task == SEGMENTATION:
                                if "random" in self.selections:
                                    self._segment(dataset, subjects[target], sets, size, draw,
                                                  "random")
                            else:
                                self._episode(dataset, task, subjects[target], sets[0], size,
                                              draw, index)
                    for selection in [s for s in self.selections if s != "random"]:
                        if SEGMENTATION not in tasks:
                            break
                        strategy = get_strategy(selection)
                        if ranking is None and strategy.compares_images:
                            # once per target: it does not depend on L or the strategy
                            ranking = self._rank(subjects[target], [subjects[i] for i in pool])
                        ordering = (list(ranking) if strategy.compares_images else
                                    seeded_ordering(pool, draw_seed(self.seed, dataset.name,
                                                                    size, 0, index)))
                        chosen = (strategy.sets or context_sets)(ordering, size, members)
                        sets = [[subjects[i] for i in ids] for ids in chosen]
                        self._segment(dataset, subjects[target], sets, size, 0, selection,
                                      ranking if strategy.compares_images else None)
            self.log(f"neuroverse3d-eval: {dataset.name}: {len(test)} test subjects, pool "
                     f"{len(pool)}, tasks {', '.join(tasks) or 'none'}")
        return self.rows

    def _rank(self, target, pool) -> Dict[str, float]:
        """{pool id: NCC with the target}, best first (:func:`.selection.rank_pool`)."""
        ranked = rank_pool(self.load(target.image), [self.load(s.image) for s in pool],
                           [s.id for s in pool], self.similarity_mask)
        return dict(ranked)

    def _masks(self, dataset, subjects) -> List[torch.Tensor]:
        named = self.structures_of(dataset)
        return [torch.stack([torch.isin(self.load(s.label, "label"),
                                        torch.tensor(values, dtype=torch.int16)).float()
                             for values in named.values()]) for s in subjects]

    def _segment(self, dataset, target, sets, size, draw, selection, ranking=None):
        """Segmentation with ensembles of the given context sets (member k: ``sets[k]``):
        members run one by one into running sums; after member K, for every K asked for, the
        mean is scored (Dice, uncertainty summaries, calibration). Member 0 alone is the
        single prediction; its context labels' majority vote is the baseline."""
        named = self.structures_of(dataset)
        truth = self._masks(dataset, [target])[0]                       # [S, D, H, W]
        image = self.load(target.image)
        moments = RunningMoments()
        for k, context in enumerate(sets[:max(self.ensembles)]):
            labels = torch.stack(self._masks(dataset, context), dim=1)  # [S, L, D, H, W]
            images = torch.stack([self.load(s.image) for s in context])
            moments.add(self._predict(SEGMENTATION, image, images, labels))
            ids = [s.id for s in sets[0]]
            if k == 0:
                vote = majority_vote(labels)
                for s, name in enumerate(named):
                    self.rows.append(_row(dataset.name, SEGMENTATION, name, "dice", size,
                                          target.id, draw, method_name("majority-vote",
                                                                       selection),
                                          dice(vote[s], truth[s]), ids))
            if k + 1 not in self.ensembles:
                continue
            method = method_name("model", selection, k + 1)
            result = EnsembleResult(moments.mean, moments.std, moments.votes, moments.count)
            summaries = structure_uncertainty(result)
            reliability = self.reliability.setdefault(method, {}).setdefault(size, Reliability())
            used = ",".join(s.id for context in sets[:k + 1] for s in context)
            for s, name in enumerate(named):
                reliability.add(result.mean[s], truth[s])
                self.rows.append(_row(dataset.name, SEGMENTATION, name, "dice", size, target.id,
                                      draw, method, dice(result.mean[s], truth[s]), [used]))
                if k > 0:
                    for summary, value in summaries[s].items():
                        self.rows.append(_row(dataset.name, SEGMENTATION, name, summary, size,
                                              target.id, draw, method, value, [used]))
        if ranking is not None:
            chosen = [s.id for s in sets[0]]
            self.selected.append({"dataset": dataset.name, "subject": target.id,
                                  "context_size": size, "chosen": chosen,
                                  "scores": [round(ranking[i], 6) for i in chosen]})

    def _episode(self, dataset, task, target, context, size, draw, index):
        ids = [s.id for s in context]
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

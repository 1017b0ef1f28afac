"""Context specifications: what task the context shows and where its pairs come from.

A spec is a JSON file (``--context-spec``) or built from the equivalent flags. ``images``,
``labels`` and ``outputs`` are *selectors*: a ``dataset`` plus BIDS entities (any of
:data:`SELECTOR_KEYS`). ``dataset`` is a name given with ``-d/--derivatives NAME=PATH``, or a
path relative to the spec file's folder; a missing ``dataset`` means the input BIDS dataset. A
missing ``space`` means native space (files without a ``space-`` entity).

Segmentation with fMRIPrep derivatives (each structure becomes one output; a structure is a
dseg name, a list of names or indices (their union), or a per-structure mask ``desc-<mask>_mask``)::

    {"task": "segmentation",
     "images": {"dataset": "fmriprep", "desc": "preproc", "suffix": "T1w"},
     "labels": {"dataset": "fmriprep", "desc": "aseg", "suffix": "dseg"},
     "structures": [{"name": "hippocampus", "dseg": ["Left-Hippocampus", "Right-Hippocampus"]},
                    {"name": "brain", "mask": "brain"}],
     "num_contexts": 8, "seed": 0}

Generation with explicit pairs (e.g. T1w -> T2w from subjects that have both)::

    {"task": "generation", "name": "T2w", "images": {"suffix": "T1w"}, "outputs": {"suffix": "T2w"}}

Generation with synthetic pairs (clean context images degraded on the fly)::

    {"task": "generation", "degradation": "gaussian-noise", "images": {"suffix": "T1w"}}
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Tuple, Union

from .model.strategies import get_strategy, strategy_names
from .model.degradations import DEGRADATIONS  # the one registry (name -> Degradation)
from .workflows.errors import BadInputError, MissingInputError, UsageError

if TYPE_CHECKING:  # annotations only
    from .config import WorkflowConfig

DEFAULT_NUM_CONTEXTS = 8
#: keys of a selector (``images``, ``labels``, ``outputs``): the dataset and BIDS entities
SELECTOR_KEYS = ("dataset", "space", "res", "desc", "label", "ses", "acq", "rec", "run",
                 "suffix", "extension")
#: spec entity key -> pybids entity name (the others are the same)
PYBIDS_NAMES = {"ses": "session", "acq": "acquisition", "rec": "reconstruction"}

DsegLabel = Union[str, int]


@dataclass
class Selector:
    """Files of one dataset with given entities. ``root`` None: the input BIDS dataset."""

    root: Optional[Path] = None
    entities: Dict[str, object] = field(default_factory=dict)   # spec keys (ses, acq, ...)
    dataset: Optional[str] = None                                # as written (name or path)

    @property
    def suffix(self) -> Optional[str]:
        return self.entities.get("suffix")

    def to_dict(self) -> dict:
        return {"dataset": None if self.root is None else str(self.root), **self.entities}


@dataclass
class Structure:
    """One segmentation output: a per-structure mask (``desc-<mask>_mask``) or dseg label(s)."""

    name: str
    mask: Optional[str] = None
    dseg: Optional[Union[DsegLabel, List[DsegLabel]]] = None   # a name, index, or list (union)

    @property
    def dseg_labels(self) -> List[DsegLabel]:
        if self.dseg is None:
            return []
        return list(self.dseg) if isinstance(self.dseg, (list, tuple)) else [self.dseg]


@dataclass
class ContextSpec:
    task: str                                  # "segmentation" | "generation"
    images: Selector = field(default_factory=Selector)
    labels: Optional[Selector] = None          # segmentation: derivatives with masks / dseg
    structures: List[Structure] = field(default_factory=list)
    outputs: Optional[Selector] = None         # generation with explicit pairs
    degradation: Optional[str] = None          # generation with synthetic pairs
    name: Optional[str] = None                 # desc-<name> of generation outputs
    num_contexts: int = DEFAULT_NUM_CONTEXTS
    seed: int = 0
    selection: str = "random"                  # a registered strategy (model.strategies)
    ensemble: int = 1                          # members averaged per target
    source: str = "command line"               # where the spec came from, for messages

    @property
    def image_suffix(self) -> str:
        return self.images.suffix or "T1w"

    @property
    def output_suffix(self) -> Optional[str]:
        return self.outputs.suffix if self.outputs is not None else None

    def to_dict(self) -> dict:
        return {"task": self.task, "images": self.images.to_dict(),
                "labels": self.labels and self.labels.to_dict(),
                "structures": [{k: v for k, v in vars(s).items() if v is not None}
                               for s in self.structures],
                "outputs": self.outputs and self.outputs.to_dict(),
                "degradation": self.degradation, "name": self.name,
                "num_contexts": self.num_contexts, "seed": self.seed,
                # only when asked for: the default run's sidecars stay as they were
                **({"selection": self.selection} if self.selection != "random" else {}),
                **({"ensemble": self.ensemble} if self.ensemble != 1 else {})}

    @property
    def pooled(self) -> bool:
        """Whether each target chooses its contexts out of a pool (similar or an ensemble)."""
        return self.selection != "random" or self.ensemble != 1

    @property
    def output_name(self) -> str:
        """desc-<name> of generation outputs."""
        if self.name:
            return self.name
        if self.degradation:
            return DEGRADATIONS[self.degradation].restored
        return "synth"

    def check(self):
        """Raise a clear error when the spec cannot describe a task."""
        where = self.source
        if self.task not in ("segmentation", "generation"):
            raise UsageError(f"{where}: task must be 'segmentation' or 'generation', got {self.task!r}")
        if self.num_contexts < 1:
            raise UsageError(f"{where}: num_contexts must be >= 1")
        if self.selection not in strategy_names():
            raise UsageError(f"{where}: selection must be one of {', '.join(strategy_names())}, got "
                             f"{self.selection!r}")
        if self.ensemble < 1:
            raise UsageError(f"{where}: ensemble must be >= 1, got {self.ensemble}")
        if self.task == "segmentation":
            if self.labels is None or self.labels.root is None:
                raise UsageError(f"{where}: segmentation needs a labels dataset "
                                 "(\"labels\": {\"dataset\": ...} or --labels-dataset)")
            if not self.structures:
                raise UsageError(f"{where}: name at least one structure (--mask NAME or --dseg-label NAME)")
            names = [s.name for s in self.structures]
            if len(set(names)) != len(names):
                raise UsageError(f"{where}: structure names must be unique, got {names}")
            for s in self.structures:
                if (s.mask is None) == (s.dseg is None):
                    raise UsageError(f"{where}: structure {s.name!r} needs exactly one of 'mask' or 'dseg'")
                if s.dseg is not None and (not s.dseg_labels or not all(
                        isinstance(v, (str, int)) and not isinstance(v, bool) for v in s.dseg_labels)):
                    raise UsageError(f"{where}: structure {s.name!r}: 'dseg' must be a name, an "
                                     "index, or a non-empty list of names/indices")
                if not re.fullmatch(r"[A-Za-z0-9]+", s.name):
                    raise UsageError(f"{where}: structure name {s.name!r} must be alphanumeric "
                                     "(it becomes a BIDS label)")
        else:
            if (self.degradation is None) == (self.output_suffix is None):
                raise UsageError(f"{where}: generation needs either a 'degradation' "
                                 f"({', '.join(DEGRADATIONS)}) or explicit 'outputs' with a suffix")
            if self.degradation is not None and self.degradation not in DEGRADATIONS:
                raise UsageError(f"{where}: unknown degradation {self.degradation!r}; choose one of "
                                 f"{', '.join(DEGRADATIONS)}")
        for selector in (self.images, self.labels, self.outputs):
            if selector is not None and selector.root is not None and not selector.root.is_dir():
                raise MissingInputError(
                    f"{where}: dataset {selector.dataset!r} is neither a name given with "
                    f"-d/--derivatives NAME=PATH nor an existing folder ({selector.root}); pass "
                    f"-d {selector.dataset}=/path/to/it or fix the path")
        return self


def parse_selector(entry, where: str, key: str, root: Path,
                   datasets: Mapping[str, Path]) -> Optional[Selector]:
    """A selector from a spec entry; unknown keys are a :class:`UsageError` naming them."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise UsageError(f"{where}: {key!r} must be an object such as "
                         '{"dataset": "fmriprep", "desc": "aseg", "suffix": "dseg"}')
    unknown = sorted(set(entry) - set(SELECTOR_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {unknown} in {key!r}; allowed: "
                         f"{', '.join(SELECTOR_KEYS)}")
    entities = {k: v for k, v in entry.items() if k != "dataset" and v is not None}
    for name, value in entities.items():
        if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
            raise UsageError(f"{where}: {key}.{name} must be a non-empty string or number, got {value!r}")
    return Selector(root=resolve_dataset(entry.get("dataset"), root, datasets),
                    entities=entities, dataset=entry.get("dataset"))


def resolve_dataset(value, root: Path, datasets: Mapping[str, Path]) -> Optional[Path]:
    """A dataset named with ``-d NAME=PATH``, or a path relative to ``root``; None: the input."""
    if value in (None, ""):
        return None
    if value in datasets:
        return Path(datasets[value]).resolve()
    return (root / value).resolve()


def load_context_spec(path, datasets: Optional[Mapping[str, Path]] = None) -> ContextSpec:
    """Read a context-spec JSON file (see module docstring). ``datasets``: ``-d`` names."""
    path = Path(path)
    datasets = dict(datasets or {})
    if not path.is_file():
        raise MissingInputError(f"{path}: context spec file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a context spec is a JSON object (see the README)")
    root = path.parent
    known = {"task", "images", "labels", "structures", "outputs", "degradation", "name",
             "num_contexts", "seed", "selection", "ensemble"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{path}: unknown keys {unknown}; allowed: {sorted(known)}")
    try:
        structures = [Structure(**s) for s in data.get("structures", [])]
    except TypeError as error:
        raise UsageError(f"{path}: bad structure entry ({error}); each needs 'name' and one of "
                         "'mask' or 'dseg'") from None
    where = str(path)
    spec = ContextSpec(
        task=data.get("task", "segmentation"),
        images=parse_selector(data.get("images") or {}, where, "images", root, datasets),
        labels=parse_selector(data.get("labels"), where, "labels", root, datasets),
        structures=structures,
        outputs=parse_selector(data.get("outputs"), where, "outputs", root, datasets),
        degradation=data.get("degradation"),
        name=data.get("name"),
        num_contexts=int(data.get("num_contexts", DEFAULT_NUM_CONTEXTS)),
        seed=int(data.get("seed", 0)),
        selection=data.get("selection", "random"),
        ensemble=int(data.get("ensemble", 1)),
        source=where,
    )
    return spec.check()


def _dseg_flag(value: str) -> Union[str, List[DsegLabel]]:
    """``--dseg-label NAME`` or ``NAME=LABEL+LABEL`` (a union of names or indices)."""
    if "=" not in value:
        return value
    parts = [p for p in value.split("=", 1)[1].split("+") if p]
    return [int(p) if p.isdigit() else p for p in parts]


def spec_from_config(workflow: "WorkflowConfig", context_seed: Optional[int] = None,
                     derivatives: Optional[Mapping[str, Path]] = None) -> ContextSpec:
    """The run's spec: ``--context-spec`` (if any) with the flags of ``workflow`` overriding
    its values; ``context_seed`` (None: the spec's); ``derivatives``: the ``-d`` names."""
    datasets = dict(derivatives or {})
    flags = workflow
    if flags.context_spec is not None:
        spec = load_context_spec(flags.context_spec, datasets)
    elif (flags.labels_dataset or flags.masks or flags.dseg_labels or flags.degradation
          or flags.output_suffix):
        task = ("segmentation" if (flags.labels_dataset or flags.masks or flags.dseg_labels)
                else "generation")
        spec = ContextSpec(task=task)
    else:
        raise UsageError("no context given: pass --context-spec FILE, or --labels-dataset with --mask/"
                         "--dseg-label for segmentation, or --degradation / --output-suffix for generation")
    if flags.labels_dataset:
        labels = spec.labels or Selector(entities={})
        labels.root = resolve_dataset(str(flags.labels_dataset), Path.cwd(), datasets)
        labels.dataset = str(flags.labels_dataset)
        spec.labels = labels
    if flags.output_suffix:
        spec.outputs = spec.outputs or Selector(entities={})
        spec.outputs.entities["suffix"] = flags.output_suffix
    for key, value in {"degradation": flags.degradation, "num_contexts": flags.num_contexts,
                       "seed": context_seed, "selection": flags.context_selection,
                       "ensemble": flags.ensemble}.items():
        if value is not None:
            setattr(spec, key, value)
    extra = [Structure(name=n, mask=n) for n in flags.masks]
    extra += [Structure(name=n.split("=", 1)[0], dseg=_dseg_flag(n)) for n in flags.dseg_labels]
    if extra:
        spec.structures = extra
    return spec.check()


def pick_context_pool(candidates: List[str], spec: ContextSpec, targets: List[str]) -> List[str]:
    """The labelled subjects a run stacks: a seeded choice, the same whichever targets a run
    processes (so that one participant per job, a SLURM array, shares one cached context set).

    The pool is the first ``ensemble * num_contexts + 1`` of the seeded shuffle of all
    ``candidates`` (all of them when fewer, or for a strategy that ``stacks_all``): enough for
    K disjoint context sets whichever target is left out. Without a pool choice per target
    (``spec.pooled`` false) each target gets the first ``num_contexts`` pool members other than
    itself (:func:`contexts_for`); too few is bad input (exit 65). With it, each ICL node
    chooses its sets; a request the pool cannot serve is a usage error (exit 64).
    """
    pool = sorted(candidates)
    random.Random(spec.seed).shuffle(pool)
    if not get_strategy(spec.selection).stacks_all:
        pool = pool[: spec.ensemble * spec.num_contexts + 1]
    if spec.pooled:
        _check_pooled_request(pool, spec, targets)
        return pool
    chosen = pool
    for target in targets:
        available = [s for s in chosen if s != target]
        if len(available) < spec.num_contexts:
            raise BadInputError(
                f"{spec.source}: {spec.num_contexts} context subjects requested but only "
                f"{len([s for s in pool if s != target])} subjects with complete context pairs are "
                f"available for target sub-{target}; lower --num-contexts or add labelled subjects"
            )
    return chosen


def _check_pooled_request(pool: List[str], spec: ContextSpec, targets: List[str]):
    """Each target's strategy can take its sets out of the pool without it (else exit 64)."""
    from .model.selection import context_sets

    make_sets = get_strategy(spec.selection).sets or context_sets
    for target in targets:
        try:
            make_sets([s for s in pool if s != target], spec.num_contexts, spec.ensemble)
            problem = None
        except ValueError as error:
            problem = str(error)
        if problem:
            raise UsageError(f"{spec.source}: sub-{target}: {problem} (--context-selection "
                             f"{spec.selection}, --ensemble {spec.ensemble}, --num-contexts "
                             f"{spec.num_contexts}); lower --ensemble or --num-contexts, or add "
                             "labelled subjects")


def context_subsets(subjects: List[str], pool: List[str], spec: ContextSpec
                    ) -> Tuple[Dict[str, List[str]], Dict[str, str]]:
    """Distinct context subsets (key -> subjects) and each target's key; with a pool choice
    per target (``spec.pooled``) every target gets the whole pool and its ICL node leaves it
    out."""
    keys, subsets, subset_of = {}, {}, {}
    for subject in subjects:
        chosen = tuple(pool if spec.pooled else contexts_for(subject, pool, spec))
        if chosen not in keys:
            keys[chosen] = f"set{len(keys)}"
            subsets[keys[chosen]] = list(chosen)
        subset_of[subject] = keys[chosen]
    return subsets, subset_of


def contexts_for(target: str, pool: List[str], spec: ContextSpec) -> List[str]:
    """The context subjects of one target: the first ``num_contexts`` pool members but itself."""
    return [s for s in pool if s != target][: spec.num_contexts]



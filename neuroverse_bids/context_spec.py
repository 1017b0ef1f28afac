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
from typing import Dict, List, Mapping, Optional, Union

from .model.selection import SELECTIONS
from .model.degradations import DEGRADATIONS  # the one registry (name -> Degradation)
from .workflows.errors import BadInputError, MissingInputError, UsageError

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
    selection: str = "random"                  # random | similar (model.selection)
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
        if self.selection not in SELECTIONS:
            raise UsageError(f"{where}: selection must be one of {', '.join(SELECTIONS)}, got "
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


def spec_from_args(args) -> Optional[ContextSpec]:
    """Build a spec from the command line; flags override the values of ``--context-spec``."""
    datasets = dict(getattr(args, "derivatives", None) or {})
    if args.context_spec is not None:
        spec = load_context_spec(args.context_spec, datasets)
    elif args.labels_dataset or args.mask or args.dseg_label or args.degradation or args.output_suffix:
        task = "segmentation" if (args.labels_dataset or args.mask or args.dseg_label) else "generation"
        spec = ContextSpec(task=task)
    else:
        raise UsageError("no context given: pass --context-spec FILE, or --labels-dataset with --mask/"
                         "--dseg-label for segmentation, or --degradation / --output-suffix for generation")
    if args.labels_dataset:
        labels = spec.labels or Selector(entities={})
        labels.root = resolve_dataset(str(args.labels_dataset), Path.cwd(), datasets)
        labels.dataset = str(args.labels_dataset)
        spec.labels = labels
    if args.output_suffix:
        spec.outputs = spec.outputs or Selector(entities={})
        spec.outputs.entities["suffix"] = args.output_suffix
    for key, value in {"degradation": args.degradation, "num_contexts": args.num_contexts,
                       "seed": args.context_seed,
                       "selection": getattr(args, "context_selection", None),
                       "ensemble": getattr(args, "ensemble", None)}.items():
        if value is not None:
            setattr(spec, key, value)
    extra = [Structure(name=n, mask=n) for n in args.mask or []]
    extra += [Structure(name=n.split("=", 1)[0], dseg=_dseg_flag(n)) for n in args.dseg_label or []]
    if extra:
        spec.structures = extra
    return spec.check()


def pick_context_pool(candidates: List[str], spec: ContextSpec, targets: List[str]) -> List[str]:
    """Seeded choice of the context subjects, the same whichever targets a run processes.

    The pool is the first ``num_contexts + 1`` of the seeded shuffle of all ``candidates`` (all
    of them when fewer), so that one participant per job (a SLURM array) shares one cached
    context set. Each target gets the first ``num_contexts`` pool members other than itself.
    """
    pool = sorted(candidates)
    random.Random(spec.seed).shuffle(pool)
    chosen = pool[: spec.num_contexts + 1]
    for target in targets:
        available = [s for s in chosen if s != target]
        if len(available) < spec.num_contexts:
            raise BadInputError(
                f"{spec.source}: {spec.num_contexts} context subjects requested but only "
                f"{len([s for s in pool if s != target])} subjects with complete context pairs are "
                f"available for target sub-{target}; lower --num-contexts or add labelled subjects"
            )
    return chosen


def contexts_for(target: str, pool: List[str], spec: ContextSpec) -> List[str]:
    """The context subjects of one target: the first ``num_contexts`` pool members but itself."""
    return [s for s in pool if s != target][: spec.num_contexts]


def describe(spec: ContextSpec) -> Dict[str, object]:
    """A JSON-ready description, for sidecars and reports."""
    return spec.to_dict()

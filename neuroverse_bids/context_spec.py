"""Context specifications: what task the context shows and where its pairs come from.

A spec is a JSON file (``--context-spec``) or built from the equivalent flags. Paths inside a
file are relative to the file's folder; a missing ``dataset`` means the input BIDS dataset.

Segmentation (each structure becomes one output)::

    {"task": "segmentation",
     "images": {"dataset": "bids", "suffix": "T1w"},
     "labels": {"dataset": "derivatives/labels"},
     "structures": [{"name": "brain", "mask": "brain"}, {"name": "GM", "dseg": "GM"}],
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .workflows.errors import BadInputError, MissingInputError, UsageError

DEGRADATIONS = ("gaussian-noise", "salt-pepper", "inpainting", "bias-field", "downsample-x2")
#: desc-<name> of the output of each synthetic-degradation task
RESTORATION_NAMES = {"gaussian-noise": "denoised", "salt-pepper": "despeckled",
                     "inpainting": "inpainted", "bias-field": "biascorrected",
                     "downsample-x2": "superresolved"}
DEFAULT_NUM_CONTEXTS = 8


@dataclass
class Structure:
    """One segmentation output: from a per-structure mask (``desc-<mask>_mask``) or a dseg label."""

    name: str
    mask: Optional[str] = None
    dseg: Optional[str] = None


@dataclass
class ContextSpec:
    task: str                                  # "segmentation" | "generation"
    image_dataset: Optional[Path] = None       # None: the input BIDS dataset
    image_suffix: str = "T1w"
    label_dataset: Optional[Path] = None       # segmentation: derivatives with masks / dseg
    structures: List[Structure] = field(default_factory=list)
    output_dataset: Optional[Path] = None      # generation with explicit pairs
    output_suffix: Optional[str] = None
    degradation: Optional[str] = None          # generation with synthetic pairs
    name: Optional[str] = None                 # desc-<name> of generation outputs
    num_contexts: int = DEFAULT_NUM_CONTEXTS
    seed: int = 0
    source: str = "command line"               # where the spec came from, for messages

    def to_dict(self) -> dict:
        data = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}

    @property
    def output_name(self) -> str:
        """desc-<name> of generation outputs."""
        if self.name:
            return self.name
        if self.degradation:
            return RESTORATION_NAMES[self.degradation]
        return "synth"

    def check(self):
        """Raise a clear error when the spec cannot describe a task."""
        where = self.source
        if self.task not in ("segmentation", "generation"):
            raise UsageError(f"{where}: task must be 'segmentation' or 'generation', got {self.task!r}")
        if self.num_contexts < 1:
            raise UsageError(f"{where}: num_contexts must be >= 1")
        if self.task == "segmentation":
            if self.label_dataset is None:
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
        for path in (self.image_dataset, self.label_dataset, self.output_dataset):
            if path is not None and not Path(path).is_dir():
                raise MissingInputError(f"{where}: dataset folder {path} does not exist")
        return self


def _dataset(entry: dict, root: Path) -> Optional[Path]:
    value = (entry or {}).get("dataset")
    return None if value in (None, "") else (root / value).resolve()


def load_context_spec(path) -> ContextSpec:
    """Read a context-spec JSON file (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: context spec file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: not valid JSON ({error})") from None
    root = path.parent
    known = {"task", "images", "labels", "structures", "outputs", "degradation", "name",
             "num_contexts", "seed"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{path}: unknown keys {unknown}; allowed: {sorted(known)}")
    try:
        structures = [Structure(**s) for s in data.get("structures", [])]
    except TypeError as error:
        raise UsageError(f"{path}: bad structure entry ({error})") from None
    spec = ContextSpec(
        task=data.get("task", "segmentation"),
        image_dataset=_dataset(data.get("images"), root),
        image_suffix=(data.get("images") or {}).get("suffix", "T1w"),
        label_dataset=_dataset(data.get("labels"), root),
        structures=structures,
        output_dataset=_dataset(data.get("outputs"), root),
        output_suffix=(data.get("outputs") or {}).get("suffix"),
        degradation=data.get("degradation"),
        name=data.get("name"),
        num_contexts=int(data.get("num_contexts", DEFAULT_NUM_CONTEXTS)),
        seed=int(data.get("seed", 0)),
        source=str(path),
    )
    return spec.check()


def spec_from_args(args) -> Optional[ContextSpec]:
    """Build a spec from the command line; flags override the values of ``--context-spec``."""
    if args.context_spec is not None:
        spec = load_context_spec(args.context_spec)
    elif args.labels_dataset or args.mask or args.dseg_label or args.degradation or args.output_suffix:
        task = "segmentation" if (args.labels_dataset or args.mask or args.dseg_label) else "generation"
        spec = ContextSpec(task=task)
    else:
        raise UsageError("no context given: pass --context-spec FILE, or --labels-dataset with --mask/"
                         "--dseg-label for segmentation, or --degradation / --output-suffix for generation")
    overrides = {
        "label_dataset": args.labels_dataset and Path(args.labels_dataset).resolve(),
        "degradation": args.degradation,
        "output_suffix": args.output_suffix,
        "num_contexts": args.num_contexts,
        "seed": args.context_seed,
    }
    for key, value in overrides.items():
        if value is not None:
            setattr(spec, key, value)
    extra = [Structure(name=n, mask=n) for n in args.mask or []]
    extra += [Structure(name=n, dseg=n) for n in args.dseg_label or []]
    if extra:
        spec.structures = extra
    return spec.check()


def pick_context_pool(candidates: List[str], spec: ContextSpec, targets: List[str]) -> List[str]:
    """Seeded choice of the context subjects, registered once per run.

    Every target gets ``num_contexts`` subjects other than itself from the returned pool.
    """
    pool = sorted(candidates)
    random.Random(spec.seed).shuffle(pool)
    needed = spec.num_contexts + (1 if any(t in pool[: spec.num_contexts] for t in targets) else 0)
    chosen = pool[:needed]
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

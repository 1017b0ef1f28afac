"""The run configuration: one typed, frozen object built once from the command line.

In the manner of fMRIPrep's ``config.py``: :func:`RunConfig.from_arguments` turns the parsed
command line (flags, ``--config-file`` defaults, ``--participant-label-file``) into sections of
frozen dataclasses; the CLI passes it down and nothing below the CLI sees argparse. Its
:meth:`RunConfig.to_dict` is recorded in the run's provenance
(``logs/neuroverse3d_<run id>_config.json``, key ``Config``).

* :class:`ExecutionConfig` - folders, participants and sessions, BIDS filters and validation,
  derivatives datasets, the context cache, console verbosity;
* :class:`WorkflowConfig` - the context (spec file or flags), the model, the template, sloppy;
* :class:`InferenceConfig` - device, precision, mini-context size and memory budgets;
* :class:`SeedsConfig` - the run's seed and the context seed (which wins for the context);
* :class:`NipypeConfig` - processes, threads, plugin file, stop on first crash.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

from .model.options import InferenceOptions, MiniContextSize, Precision


@dataclass(frozen=True)
class ExecutionConfig:
    """Where the run reads and writes, and for whom. ``participant_label`` None: everyone."""

    bids_dir: Path
    output_dir: Path
    work_dir: Path
    analysis_level: str = "participant"
    participant_label: Optional[Tuple[str, ...]] = None
    session_label: Optional[Tuple[str, ...]] = None
    bids_filter_file: Optional[Path] = None
    skip_bids_validation: bool = False
    #: ``-d NAME=PATH`` datasets a context spec may name
    derivatives: Dict[str, Path] = field(default_factory=dict)
    #: the context cache folder (None: ``<output_dir>/cache/context-sets``) and its size limit
    context_cache: Optional[Path] = None
    context_cache_max_gb: Optional[float] = None
    reports_only: bool = False
    verbose_count: int = 0
    run_id: str = ""


@dataclass(frozen=True)
class WorkflowConfig:
    """What the run computes: the context (a spec file and/or the flags that override it), the
    model (None: the bundled one) and its template space (None: the model's)."""

    context_spec: Optional[Path] = None
    labels_dataset: Optional[Path] = None
    masks: Tuple[str, ...] = ()
    dseg_labels: Tuple[str, ...] = ()
    output_suffix: Optional[str] = None
    degradation: Optional[str] = None
    num_contexts: Optional[int] = None
    context_selection: Optional[str] = None
    ensemble: Optional[int] = None
    model: Optional[Path] = None
    template: Optional[str] = None
    sloppy: bool = False
    #: group level: the leave-one-out self-evaluation (auto: pools of up to 20)
    self_evaluation: str = "auto"
    #: group level: how many unlabelled participants to suggest labelling next (0: none)
    suggest_labels: int = 0


@dataclass(frozen=True)
class InferenceConfig:
    """How each prediction runs. ``mem_gb``: the scheduler's total (``--mem``);
    ``icl_mem_gb``: one ICL node's inference budget (``--icl-mem``, default ``mem_gb``)."""

    device: str = "auto"
    precision: Precision = Precision.AUTO
    mini_context_size: MiniContextSize = "auto"
    mem_gb: Optional[float] = None
    icl_mem_gb: Optional[float] = None

    def options(self, memory_gb: Optional[float] = None) -> InferenceOptions:
        """The predictor's options with a budget of ``memory_gb`` (default: ``icl_mem_gb``,
        else ``mem_gb``)."""
        return InferenceOptions(self.device, self.precision, self.mini_context_size,
                                memory_gb or self.icl_mem_gb or self.mem_gb)


@dataclass(frozen=True)
class SeedsConfig:
    """``random_seed``: every random choice of the run (also Python's, NumPy's, torch's);
    ``context_seed``: the context choice, winning over ``random_seed``; both None: the spec's."""

    random_seed: Optional[int] = None
    context_seed: Optional[int] = None

    @property
    def context(self) -> Optional[int]:
        """The seed of the context choice (None: the spec's, else 0)."""
        return self.context_seed if self.context_seed is not None else self.random_seed


@dataclass(frozen=True)
class NipypeConfig:
    """Nipype execution: ``nprocs`` processes (None: all CPUs), ``omp_nthreads`` threads per
    process (None: ``nprocs``), a plugin settings file (YAML/JSON) instead of MultiProc."""

    nprocs: Optional[int] = None
    omp_nthreads: Optional[int] = None
    use_plugin: Optional[Path] = None
    stop_on_first_crash: bool = False


@dataclass(frozen=True)
class RunConfig:
    execution: ExecutionConfig
    workflow: WorkflowConfig = field(default_factory=WorkflowConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    nipype: NipypeConfig = field(default_factory=NipypeConfig)

    @classmethod
    def from_arguments(cls, args, run_id: str = "") -> "RunConfig":
        """The configuration of the parsed command line ``args`` (``neuroverse3d``'s parser).

        Paths are made absolute; ``--participant-label-file`` is read and added to
        ``--participant-label``; ``-d`` values are parsed (a bad one: exit 64).
        """
        from .bids import parse_derivatives, read_participant_file

        labels = list(args.participant_label or [])
        if args.participant_label_file is not None:
            labels = list(dict.fromkeys(labels + read_participant_file(args.participant_label_file)))
        absolute = (lambda p: None if p is None else Path(p).resolve())
        execution = ExecutionConfig(
            bids_dir=absolute(args.bids_dir), output_dir=absolute(args.output_dir),
            work_dir=absolute(args.work_dir or Path("work")), analysis_level=args.analysis_level,
            participant_label=tuple(labels) or None,
            session_label=tuple(args.session_label) if args.session_label else None,
            bids_filter_file=args.bids_filters, skip_bids_validation=args.skip_bids_validation,
            derivatives=parse_derivatives(args.derivatives),
            context_cache=absolute(args.context_cache),
            context_cache_max_gb=args.context_cache_max_gb, reports_only=args.reports_only,
            verbose_count=args.verbose_count, run_id=run_id)
        workflow = WorkflowConfig(
            context_spec=args.context_spec, labels_dataset=args.labels_dataset,
            masks=tuple(args.mask or ()), dseg_labels=tuple(args.dseg_label or ()),
            output_suffix=args.output_suffix, degradation=args.degradation,
            num_contexts=args.num_contexts, context_selection=args.context_selection,
            ensemble=args.ensemble, model=args.model, template=args.template, sloppy=args.sloppy,
            self_evaluation=args.self_evaluation,
            suggest_labels=args.suggest_labels)
        inference = InferenceConfig(
            device=args.device, precision=Precision(args.precision),
            mini_context_size=args.mini_context_size, mem_gb=args.mem_gb,
            icl_mem_gb=args.icl_mem_gb)
        seeds = SeedsConfig(random_seed=args.random_seed, context_seed=args.context_seed)
        nipype = NipypeConfig(nprocs=args.nprocs, omp_nthreads=args.omp_nthreads,
                              use_plugin=args.use_plugin,
                              stop_on_first_crash=args.stop_on_first_crash)
        return cls(execution, workflow, inference, seeds, nipype)

    def to_dict(self) -> dict:
        """JSON-ready sections (paths as strings, tuples as lists)."""
        def plain(value):
            if isinstance(value, dict):
                return {str(k): plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, Precision):
                return value.value
            return value

        return {name: plain(asdict(getattr(self, name)))
                for name in ("execution", "workflow", "inference", "seeds", "nipype")}

"""What :func:`~.participant.init_main_wf` builds from: one typed, frozen description of a
participant run, made by the BIDS-App from its run configuration and the BIDS layout
(``neuroverse_bids.cli.participant``), or by hand by a developer embedding the workflow."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Sequence, Tuple

from ..model.options import InferenceOptions


@dataclass(frozen=True)
class TemplateSpace:
    """The template (TemplateFlow id) and its files: T1w, brain mask, and the model grid in
    template space (a reference image)."""

    name: str
    t1w: str
    brain_mask: str
    grid_reference: str


@dataclass(frozen=True)
class TaskOutputs:
    """What the run writes: ``task`` (segmentation|generation), one output per name (the
    structures, or the generated image's ``desc``), the source images' suffix, the generated
    images' suffix, and the degradation of synthetic generation pairs (or "")."""

    task: str
    names: Tuple[str, ...]
    source_suffix: str = "T1w"
    generated_suffix: str = ""
    degradation: str = ""


@dataclass(frozen=True)
class EnsemblePlan:
    """Each ICL node chooses its context sets out of a pool: ``selection`` (a registered
    strategy), ``ensemble`` members of ``num_contexts`` pairs, ``similarity_mask`` on the model
    grid (for strategies that compare images; "" for none)."""

    selection: str
    ensemble: int
    num_contexts: int
    similarity_mask: str = ""

    def node_inputs(self) -> dict:
        """Inputs of :class:`~.interfaces.icl.InContextPredict`."""
        inputs = asdict(self)
        if not self.similarity_mask:
            inputs.pop("similarity_mask")
        return inputs


@dataclass(frozen=True)
class IclResources:
    """What the scheduler reserves for each ICL node: memory (GB) and threads."""

    mem_gb: float = 4.0
    n_procs: int = 1


@dataclass(frozen=True)
class MainWorkflowConfig:
    """A participant run. ``targets``: subject -> its native images; ``subsets``: key -> the
    context subjects; ``subset_of``: subject -> its subset's key; ``pairs``: the context pairs
    to register (unused when ``context_pool`` names the stacked pool of the context cache);
    ``static_meta``: what every sidecar says of the run."""

    targets: Dict[str, Sequence[str]]
    subsets: Dict[str, Sequence[str]]
    subset_of: Dict[str, str]
    space: TemplateSpace
    outputs: TaskOutputs
    model: str
    output_dir: str
    inference: InferenceOptions = field(default_factory=InferenceOptions)
    resources: IclResources = field(default_factory=IclResources)
    static_meta: Dict = field(default_factory=dict)
    pairs: Sequence = ()
    context_pool: str = ""
    ensemble: Optional[EnsemblePlan] = None
    sloppy: bool = False
    seed: int = 0

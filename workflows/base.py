"""Neuroverse3D workflows: the context set and the per-image ICL workflow.

The BIDS-App runs :func:`init_context_set_wf` once per context-cache entry, before any
participant workflow (``neuroverse_bids.context_cache.build_pool``, under the cache's lock);
participant workflows then take their context sets out of the cached pool with
:func:`init_cached_context_set_wf`. A host pipeline can also connect
:func:`init_context_set_wf` directly.

``init_neuroverse3d_wf`` is the embeddable piece: give it a native-space image, the template, the
model grid and a context set, get back native- and template-space results and the transforms.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..model.options import InferenceOptions
from .interfaces.geometry import RegisterToTemplate, ResampleToReference
from .interfaces.icl import (InContextPredict, NormaliseIntensity, SelectContextSet,
                             StackContextSet)
from .interfaces.labels import ExtractLabel, ProbabilitiesToMasks
from .plan import EnsemblePlan, IclResources

#: outputnode fields of :func:`init_context_set_wf` beside the subsets: the pairs on the grid
PAIR_FIELDS = ("pair_images", "pair_outputs")


def init_context_pair_wf(*, image: str, outputs: Sequence[str] = (),
                         label_values: Sequence[Optional[int]] = (), task: str = "segmentation",
                         sloppy: bool = False, seed: int = 0, name: str = "context_pair_wf"):
    """Register one context pair to the template and resample it onto the model grid.

    Inputs: ``template_file``, ``grid_reference``. Outputs: ``image`` (grid, not normalised),
    ``outputs`` (list, grid; labels as float {0,1} masks resampled linearly).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["template_file", "grid_reference"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["image", "outputs"]), name="outputnode")
    register = pe.Node(RegisterToTemplate(in_file=image, sloppy=sloppy, seed=seed), name="register")
    image_to_grid = pe.Node(ResampleToReference(in_file=image, interpolation="linear"),
                            name="image_to_grid")
    workflow.connect([
        (inputnode, register, [("template_file", "template")]),
        (inputnode, image_to_grid, [("grid_reference", "reference")]),
        (register, image_to_grid, [("forward_transform", "transform")]),
        (image_to_grid, outputnode, [("out_file", "image")]),
    ])
    if not outputs:
        outputnode.inputs.outputs = []
        return workflow
    extract = pe.MapNode(ExtractLabel(is_mask=task == "segmentation"),
                         iterfield=["in_file", "label_value"], name="extract")
    extract.inputs.in_file = list(outputs)
    extract.inputs.label_value = list(label_values)
    outputs_to_grid = pe.MapNode(ResampleToReference(interpolation="linear"),
                                 iterfield=["in_file"], name="outputs_to_grid")
    workflow.connect([
        (inputnode, outputs_to_grid, [("grid_reference", "reference")]),
        (register, outputs_to_grid, [("forward_transform", "transform")]),
        (extract, outputs_to_grid, [("out_file", "in_file")]),
        (outputs_to_grid, outputnode, [("out_file", "outputs")]),
    ])
    return workflow


def init_neuroverse3d_wf(*, output_names: List[str], task: str, model: str,
                         inference: Optional[InferenceOptions] = None, sloppy: bool = False,
                         seed: int = 0, resources: Optional[IclResources] = None,
                         ensemble: Optional[EnsemblePlan] = None, exclude: Sequence[str] = (),
                         name: str = "neuroverse3d_wf"):
    """In-context prediction for one native-space image.

    Inputs (``inputnode``):
        in_file         native-space image (e.g. a T1w)
        template_file   template image the model grid lives in
        grid_reference  reference image of the model grid (template space)
        context_set     npz from :func:`init_context_set_wf` (images [L,...], outputs [K,L,...])

    Outputs (``outputnode``):
        forward_transform / inverse_transform   affine native -> template and back (ITK .mat)
        template_outputs   K float32 maps on the model grid (probabilities or generated images)
        native_outputs     the same, back in the native grid (linear interpolation)
        native_masks, native_dseg, template_masks, template_dseg   segmentation only (> 0.5)
        info               model name and sha256, precision, mini-context size, timings
        template_spread / native_spread   ensemble > 1: per-voxel standard deviation across
                           the members, on the model grid and back in the native grid
        template_target    the image as the network saw it (model grid, normalised)

    ``inference``: how the ICL node predicts (device, precision, mini-context size, budget).
    ``ensemble``: the node chooses its context sets out of the context set, a pool
    (:class:`~.plan.EnsemblePlan`); ``exclude``: subjects never used as this image's context
    (its own subject). ``resources``: what the scheduler reserves for the ICL node (its memory
    plan for the model grid, and its threads).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(
        fields=["in_file", "template_file", "grid_reference", "context_set"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "forward_transform", "inverse_transform", "template_outputs", "native_outputs",
        "native_masks", "native_dseg", "template_masks", "template_dseg", "info",
        "template_spread", "native_spread", "template_target"]),
        name="outputnode")

    register = pe.Node(RegisterToTemplate(sloppy=sloppy, seed=seed), name="register")
    to_grid = pe.Node(ResampleToReference(interpolation="linear"), name="to_grid")
    normalise = pe.Node(NormaliseIntensity(), name="normalise")
    inference, resources = inference or InferenceOptions(), resources or IclResources()
    icl = pe.Node(InContextPredict(model=model, output_names=list(output_names),
                                   device=inference.device, precision=inference.precision.value,
                                   mini_context_size=inference.mini_context_size,
                                   mem_gb=inference.memory_gb,
                                   quality_signals=task == "segmentation",
                                   **(ensemble.node_inputs() if ensemble else {})),
                  name="icl", mem_gb=resources.mem_gb, n_procs=resources.n_procs)
    if exclude:
        icl.inputs.exclude = list(exclude)
    to_native = pe.MapNode(ResampleToReference(interpolation="linear", invert=True),
                           iterfield=["in_file"], name="to_native")
    workflow.connect([
        (inputnode, register, [("in_file", "in_file"), ("template_file", "template")]),
        (inputnode, to_grid, [("in_file", "in_file"), ("grid_reference", "reference")]),
        (register, to_grid, [("forward_transform", "transform")]),
        (to_grid, normalise, [("out_file", "in_file")]),
        (normalise, icl, [("out_file", "target")]),
        (normalise, outputnode, [("out_file", "template_target")]),
        (inputnode, icl, [("context_set", "context_set")]),
        (icl, to_native, [("out_files", "in_file")]),
        (inputnode, to_native, [("in_file", "reference")]),
        (register, to_native, [("forward_transform", "transform")]),
        (register, outputnode, [("forward_transform", "forward_transform"),
                                ("inverse_transform", "inverse_transform")]),
        (icl, outputnode, [("out_files", "template_outputs"), ("info", "info")]),
        (to_native, outputnode, [("out_file", "native_outputs")]),
    ])
    if ensemble is not None and ensemble.ensemble > 1:
        spread_to_native = pe.MapNode(ResampleToReference(interpolation="linear", invert=True),
                                      iterfield=["in_file"], name="spread_to_native")
        workflow.connect([
            (icl, spread_to_native, [("spread_files", "in_file")]),
            (inputnode, spread_to_native, [("in_file", "reference")]),
            (register, spread_to_native, [("forward_transform", "transform")]),
            (icl, outputnode, [("spread_files", "template_spread")]),
            (spread_to_native, outputnode, [("out_file", "native_spread")]),
        ])
    if task == "segmentation":
        native_masks = pe.Node(ProbabilitiesToMasks(), name="native_masks")
        template_masks = pe.Node(ProbabilitiesToMasks(), name="template_masks")
        workflow.connect([
            (to_native, native_masks, [("out_file", "in_files")]),
            (icl, template_masks, [("out_files", "in_files")]),
            (native_masks, outputnode, [("masks", "native_masks"), ("dseg", "native_dseg")]),
            (template_masks, outputnode, [("masks", "template_masks"), ("dseg", "template_dseg")]),
        ])
    return workflow


def init_context_set_wf(*, pairs: Sequence, subsets: Dict[str, Sequence[str]], task: str,
                        degradation: str = "", sloppy: bool = False, seed: int = 0,
                        name: str = "context_set_wf"):
    """Register every context pair once, then stack one context set per subset of subjects.

    ``pairs``: objects with ``subject``, ``image``, ``outputs``, ``label_values``.
    ``subsets``: key -> ordered subject labels; outputnode has one field ``<key>`` per subset
    (the npz of :class:`StackContextSet`), and the pairs on the model grid, in the order of
    ``pairs`` (what the context cache keeps beside the stack):

        pair_images    each pair's image (not normalised)
        pair_outputs   each pair's outputs (a list per pair; empty without outputs)
    """
    reserved = sorted(set(subsets) & set(PAIR_FIELDS))
    if reserved:
        raise ValueError(f"subset keys {reserved} are outputnode fields of the pairs; "
                         "name the subsets otherwise")
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["template_file", "grid_reference"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[*subsets, *PAIR_FIELDS]),
                         name="outputnode")
    n_pairs = len(pairs)
    pair_images = pe.Node(niu.Merge(n_pairs), name="merge_pair_images")
    pair_outputs = pe.Node(niu.Merge(n_pairs, no_flatten=True), name="merge_pair_outputs")
    workflow.connect([
        (pair_images, outputnode, [("out", "pair_images")]),
        (pair_outputs, outputnode, [("out", "pair_outputs")]),
    ])
    pair_wfs = {}
    for index, pair in enumerate(pairs, start=1):
        pair_wf = init_context_pair_wf(
            image=str(pair.image), outputs=[str(p) for p in pair.outputs],
            label_values=list(pair.label_values), task=task, sloppy=sloppy, seed=seed,
            name=f"context_sub_{pair.subject}_wf")
        workflow.connect([
            (inputnode, pair_wf, [("template_file", "inputnode.template_file"),
                                  ("grid_reference", "inputnode.grid_reference")]),
            (pair_wf, pair_images, [("outputnode.image", f"in{index}")]),
            (pair_wf, pair_outputs, [("outputnode.outputs", f"in{index}")]),
        ])
        pair_wfs[pair.subject] = pair_wf
    for key, subjects in subsets.items():
        n = len(subjects)
        merge_images = pe.Node(niu.Merge(n), name=f"merge_images_{key}")
        merge_outputs = pe.Node(niu.Merge(n, no_flatten=True), name=f"merge_outputs_{key}")
        stack = pe.Node(StackContextSet(subjects=list(subjects), task=task,
                                        degradation=degradation, seed=seed), name=f"stack_{key}")
        for index, subject in enumerate(subjects, start=1):
            workflow.connect([
                (pair_wfs[subject], merge_images, [("outputnode.image", f"in{index}")]),
                (pair_wfs[subject], merge_outputs, [("outputnode.outputs", f"in{index}")]),
            ])
        workflow.connect([
            (merge_images, stack, [("out", "images")]),
            (merge_outputs, stack, [("out", "outputs")]),
            (stack, outputnode, [("context_set", key)]),
        ])
    return workflow


def init_cached_context_set_wf(*, context_pool: str, subsets: Dict[str, Sequence[str]],
                               name: str = "context_set_wf"):
    """One context set per subset of subjects, taken from a stacked pool built beforehand
    (the context cache: :func:`init_context_set_wf` run once for every job).

    ``context_pool``: npz of the pool (images [L,...], outputs [K,L,...], subjects [L]).
    ``subsets``: key -> ordered subject labels; outputnode has one field ``<key>`` per subset.
    """
    workflow = pe.Workflow(name=name)
    outputnode = pe.Node(niu.IdentityInterface(fields=list(subsets)), name="outputnode")
    for key, subjects in subsets.items():
        select = pe.Node(SelectContextSet(context_pool=context_pool, subjects=list(subjects)),
                         name=f"stack_{key}")
        workflow.connect([(select, outputnode, [("context_set", key)])])
    return workflow

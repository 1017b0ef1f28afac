"""The BIDS-App's top-level workflow: one context set per run, one ICL workflow per image."""
from __future__ import annotations

from typing import Dict, List

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from .base import init_cached_context_set_wf, init_context_set_wf, init_neuroverse3d_wf
from .derivatives import DerivativesDataSink
from .interfaces.reports import ImageReportlets, SubjectReport
from .plan import MainWorkflowConfig


def _merge_meta(info, static):
    """Sidecar metadata: the static run description plus what the ICL node reported."""
    from neuroverse_bids.workflows.prediction_info import PredictionInfo  # a Function node

    record = PredictionInfo.from_dict(info)
    meta = dict(static)
    meta.update({
        "Model": {"Name": record.model, "SHA256": record.model_sha256},
        "Precision": record.precision,
        "MiniContextSize": record.mini_context_size,
        "ContextSubjects": record.context_subjects,
    })
    if record.precision_reason:  # requested, or what auto found on this device
        meta["PrecisionReason"] = record.precision_reason
    if record.pooled:  # chosen out of a pool (--context-selection, --ensemble)
        meta["ContextSelection"] = {"Method": record.selection,
                                    "EnsembleSize": record.ensemble,
                                    "ContextSets": record.context_sets,
                                    "SimilarityNCC": record.similarity}
    if record.quality_signals:  # per structure, see model.quality_signals
        meta["QualitySignals"] = record.quality_signals
        meta["ContextSimilarityNCC"] = record.context_similarity
    if record.ensemble > 1:  # per structure, see model.ensemble
        meta["Uncertainty"] = {name: {"BoundarySpread": round(values["boundary_spread"], 6),
                                      "Disagreement": round(values["disagreement"], 6)}
                               for name, values in (record.uncertainty or {}).items()}
    return meta


def _spread_meta(meta, members):
    """A spread map's sidecar: the image's metadata and what the map holds."""
    return dict(meta, Description=(
        f"Per-voxel standard deviation across the {members} ensemble members' predictions "
        "(each from a distinct context set); the mean of the members is the probability map "
        "of the same structure."))


def init_ds_wf(*, output_dir: str, output_names: List[str], task: str, template: str,
               source_suffix: str, generated_suffix: str, static_meta: Dict,
               template_file: str = "", template_mask: str = "", ensemble: int = 1,
               name: str = "ds_wf"):
    """Write one image's results as BIDS derivatives (the central DerivativesDataSink), then
    its reportlets (:class:`ImageReportlets`: figures in ``sub-<label>/figures``).

    Inputs: ``source_file`` and the fields of :func:`init_neuroverse3d_wf`'s outputnode.
    Outputs: ``derivatives`` (the files stored), ``report_facts`` (for :func:`init_report_wf`).
    ``template_file``/``template_mask``: background and outline of the registration flicker.
    ``ensemble`` > 1: also the members' spread maps (``template_spread``/``native_spread``).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "source_file", "forward_transform", "inverse_transform", "template_outputs",
        "native_outputs", "native_masks", "native_dseg", "template_masks", "template_dseg",
        "info", "template_spread", "native_spread", "template_target"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["derivatives", "report_facts"]),
                         name="outputnode")
    meta = pe.Node(niu.Function(function=_merge_meta, input_names=["info", "static"],
                                output_names=["meta"]), name="meta")
    meta.inputs.static = static_meta
    workflow.connect([(inputnode, meta, [("info", "info")])])

    spread_meta = None
    if ensemble > 1:
        spread_meta = pe.Node(niu.Function(function=_spread_meta, input_names=["meta", "members"],
                                           output_names=["meta"]), name="spread_meta")
        spread_meta.inputs.members = ensemble
        workflow.connect([(meta, spread_meta, [("meta", "meta")])])

    def sink(field, entities, node_name, select=None, meta_node=meta):
        node = pe.Node(DerivativesDataSink(base_directory=output_dir, entities=entities),
                       name=node_name, run_without_submitting=True)
        workflow.connect([(inputnode, node, [("source_file", "source_file")]),
                          (meta_node, node, [("meta", "meta")])])
        if select is None:
            workflow.connect([(inputnode, node, [(field, "in_file")])])
        else:
            pick = pe.Node(niu.Select(index=select), name=f"pick_{node_name}")
            workflow.connect([(inputnode, pick, [(field, "inlist")]),
                              (pick, node, [("out", "in_file")])])
        sinks.append(node)
        return node

    sinks = []
    sink("forward_transform", {"from": source_suffix, "to": template, "mode": "image",
                               "suffix": "xfm", "extension": ".mat"}, "ds_xfm_forward")
    sink("inverse_transform", {"from": template, "to": source_suffix, "mode": "image",
                               "suffix": "xfm", "extension": ".mat"}, "ds_xfm_inverse")
    spaces = {"native": {}, "template": {"space": template}}
    for space, extra in spaces.items():
        for index, out_name in enumerate(output_names):
            if task == "segmentation":
                sink(f"{space}_masks", dict(extra, desc=out_name, suffix="mask"),
                     f"ds_{space}_mask_{out_name}", select=index)
                sink(f"{space}_outputs", dict(extra, label=out_name, suffix="probseg"),
                     f"ds_{space}_probseg_{out_name}", select=index)
            else:
                sink(f"{space}_outputs", dict(extra, desc=out_name, suffix=generated_suffix),
                     f"ds_{space}_{out_name}", select=index)
            if spread_meta is not None:
                entities = (dict(extra, label=out_name, desc="spread", suffix="probseg")
                            if task == "segmentation" else
                            dict(extra, desc=f"{out_name}spread", suffix=generated_suffix))
                sink(f"{space}_spread", entities, f"ds_{space}_spread_{out_name}",
                     select=index, meta_node=spread_meta)
        if task == "segmentation" and len(output_names) > 1:
            sink(f"{space}_dseg", dict(extra, suffix="dseg"), f"ds_{space}_dseg")
    if task == "segmentation":  # what the group level compares subjects by (label suggestions)
        target_meta = pe.Node(niu.IdentityInterface(fields=["meta"]), name="target_meta")
        target_meta.inputs.meta = dict(static_meta, Description=(
            "The image as the network saw it: registered to the template, resampled to the "
            "model grid and intensity-normalised to [0, 1]"))
        sink("template_target", {"space": template, "desc": "preproc", "suffix": source_suffix},
             "ds_template_target", meta_node=target_meta)

    # always rerun, as the sinks: content hashing ignores paths, so a cached list would name the
    # files of the output folder of the run that made it
    stored = pe.Node(niu.Merge(len(sinks)), name="stored", run_without_submitting=True,
                     overwrite=True)
    reportlets = pe.Node(ImageReportlets(output_dir=output_dir, task=task,
                                         output_names=list(output_names), template=template),
                         name="reportlets")
    if template_file:
        reportlets.inputs.template_file = template_file
    if template_mask:
        reportlets.inputs.template_mask = template_mask
    outputs = "native_masks" if task == "segmentation" else "native_outputs"
    workflow.connect(
        [(node, stored, [("out_file", f"in{i}")]) for i, node in enumerate(sinks, start=1)] + [
            (stored, reportlets, [("out", "derivatives")]),
            (inputnode, reportlets, [("source_file", "source_file"), ("info", "info"),
                                     ("forward_transform", "forward_transform"),
                                     (outputs, outputs)]),
            (stored, outputnode, [("out", "derivatives")]),
            (reportlets, outputnode, [("facts", "report_facts")]),
        ])
    if spread_meta is not None:  # ensembles: the spread overlay
        workflow.connect([(inputnode, reportlets, [("native_spread", "native_spread")])])
    return workflow


def init_report_wf(*, output_dir: str, subject: str, n_images: int, task: str,
                   output_names: List[str], grid_reference: str, static_meta: Dict,
                   name: str = "report_wf"):
    """One subject's page from its images' reportlet facts and its context set.

    Inputs: ``image0`` ... ``image<n_images - 1>`` (``report_facts`` of :func:`init_ds_wf`),
    ``context_set``. Outputs: ``out_report`` (``sub-<label>.html``), ``out_facts`` (the JSON it
    was rendered from, which :func:`~.reports.rebuild.rebuild_reports` reads).
    """
    workflow = pe.Workflow(name=name)
    fields = [f"image{i}" for i in range(n_images)]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields + ["context_set"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_report", "out_facts"]),
                         name="outputnode")
    images = pe.Node(niu.Merge(n_images), name="images", run_without_submitting=True)
    report = pe.Node(SubjectReport(output_dir=output_dir, subject=subject, task=task,
                                   output_names=list(output_names), static_meta=static_meta,
                                   grid_reference=grid_reference), name="report")
    workflow.connect(
        [(inputnode, images, [(f, f"in{i}") for i, f in enumerate(fields, start=1)])] + [
            (images, report, [("out", "images")]),
            (inputnode, report, [("context_set", "context_set")]),
            (report, outputnode, [("out_report", "out_report"), ("out_facts", "out_facts")]),
        ])
    return workflow


def init_main_wf(config: MainWorkflowConfig, *, name: str = "neuroverse3d_wf"):
    """All participants of a run (:class:`~.plan.MainWorkflowConfig`): per image the ICL
    workflow and the derivatives (with the reportlets), per subject the report page.

    With ``config.context_pool`` (the stacked pool of the context cache) the context pairs are
    not registered here; with ``config.ensemble`` each ICL node chooses its members out of its
    subset, leaving its own subject out.
    """
    space, outputs, ensemble = config.space, config.outputs, config.ensemble
    output_names = list(outputs.names)
    workflow = pe.Workflow(name=name)
    if config.context_pool:
        context_wf = init_cached_context_set_wf(context_pool=config.context_pool,
                                                subsets=config.subsets)
    else:
        context_wf = init_context_set_wf(pairs=config.pairs, subsets=config.subsets,
                                         task=outputs.task, degradation=outputs.degradation,
                                         sloppy=config.sloppy, seed=config.seed)
        context_wf.inputs.inputnode.template_file = space.t1w
        context_wf.inputs.inputnode.grid_reference = space.grid_reference
    members = ensemble.ensemble if ensemble else 1
    static_meta = config.static_meta
    # what the pages show of the run (volatile entries would rerun the report nodes)
    report_meta = {k: static_meta[k] for k in ("ContextSpec", "Template", "Software")
                   if k in static_meta}
    for subject, images in config.targets.items():
        subset = config.subset_of[subject]
        report_wf = init_report_wf(output_dir=config.output_dir, subject=subject,
                                   n_images=len(images), task=outputs.task,
                                   output_names=output_names,
                                   grid_reference=space.grid_reference, static_meta=report_meta,
                                   name=f"report_sub_{subject}_wf")
        workflow.connect([(context_wf, report_wf, [(f"outputnode.{subset}",
                                                    "inputnode.context_set")])])
        for index, image in enumerate(images):
            suffix = f"_{index}" if len(images) > 1 else ""
            icl_wf = init_neuroverse3d_wf(output_names=output_names, task=outputs.task,
                                          model=config.model, inference=config.inference,
                                          sloppy=config.sloppy, seed=config.seed,
                                          resources=config.resources, ensemble=ensemble,
                                          exclude=[subject] if ensemble else (),
                                          name=f"sub_{subject}{suffix}_wf")
            icl_wf.inputs.inputnode.in_file = str(image)
            icl_wf.inputs.inputnode.template_file = space.t1w
            icl_wf.inputs.inputnode.grid_reference = space.grid_reference
            ds_wf = init_ds_wf(output_dir=config.output_dir, output_names=output_names,
                               task=outputs.task, template=space.name,
                               source_suffix=outputs.source_suffix,
                               generated_suffix=outputs.generated_suffix,
                               static_meta=static_meta, template_file=space.t1w,
                               template_mask=space.brain_mask, ensemble=members,
                               name=f"ds_sub_{subject}{suffix}_wf")
            ds_wf.inputs.inputnode.source_file = str(image)
            fields = ["forward_transform", "inverse_transform", "template_outputs",
                      "native_outputs", "info"]
            if outputs.task == "segmentation":
                fields += ["native_masks", "native_dseg", "template_masks", "template_dseg",
                           "template_target"]
            if members > 1:
                fields += ["template_spread", "native_spread"]
            workflow.connect([
                (context_wf, icl_wf, [(f"outputnode.{subset}", "inputnode.context_set")]),
                (icl_wf, ds_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in fields]),
                (ds_wf, report_wf, [("outputnode.report_facts", f"inputnode.image{index}")]),
            ])
    return workflow

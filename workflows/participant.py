"""The BIDS-App's top-level workflow: one context set per run, one ICL workflow per image."""
from __future__ import annotations

from typing import Dict, List, Sequence

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from .base import init_context_set_wf, init_neuroverse3d_wf
from .derivatives import DerivativesDataSink


def _merge_meta(info, static):
    """Sidecar metadata: the static run description plus what the ICL node reported."""
    meta = dict(static)
    meta.update({
        "Model": {"Name": info.get("model"), "SHA256": info.get("model_sha256")},
        "Precision": info.get("precision"),
        "MiniContextSize": info.get("mini_context_size"),
        "ContextSubjects": info.get("context_subjects"),
    })
    if info.get("precision_reason"):  # auto chose float32 over a native reduced precision
        meta["PrecisionReason"] = info["precision_reason"]
    return meta


def init_ds_wf(*, output_dir: str, output_names: List[str], task: str, template: str,
               source_suffix: str, generated_suffix: str, static_meta: Dict,
               name: str = "ds_wf"):
    """Write one image's results as BIDS derivatives (the central DerivativesDataSink).

    Inputs: ``source_file`` and the fields of :func:`init_neuroverse3d_wf`'s outputnode.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "source_file", "forward_transform", "inverse_transform", "template_outputs",
        "native_outputs", "native_masks", "native_dseg", "template_masks", "template_dseg",
        "info"]), name="inputnode")
    meta = pe.Node(niu.Function(function=_merge_meta, input_names=["info", "static"],
                                output_names=["meta"]), name="meta")
    meta.inputs.static = static_meta
    workflow.connect([(inputnode, meta, [("info", "info")])])

    def sink(field, entities, node_name, select=None):
        node = pe.Node(DerivativesDataSink(base_directory=output_dir, entities=entities),
                       name=node_name, run_without_submitting=True)
        workflow.connect([(inputnode, node, [("source_file", "source_file")]),
                          (meta, node, [("meta", "meta")])])
        if select is None:
            workflow.connect([(inputnode, node, [(field, "in_file")])])
        else:
            pick = pe.Node(niu.Select(index=select), name=f"pick_{node_name}")
            workflow.connect([(inputnode, pick, [(field, "inlist")]),
                              (pick, node, [("out", "in_file")])])
        return node

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
        if task == "segmentation" and len(output_names) > 1:
            sink(f"{space}_dseg", dict(extra, suffix="dseg"), f"ds_{space}_dseg")
    return workflow


def init_main_wf(*, targets: Dict[str, Sequence[str]], pairs: Sequence,
                 subsets: Dict[str, Sequence[str]], subset_of: Dict[str, str],
                 template_file: str, grid_reference: str, template: str, model: str,
                 output_names: List[str], task: str, degradation: str, output_dir: str,
                 source_suffix: str, generated_suffix: str, static_meta: Dict,
                 inference: Dict, sloppy: bool, seed: int, name: str = "neuroverse3d_wf"):
    """All participants of a run.

    targets: subject -> its native images; subset_of: subject -> key of its context subset.
    """
    workflow = pe.Workflow(name=name)
    context_wf = init_context_set_wf(pairs=pairs, subsets=subsets, task=task,
                                     degradation=degradation, sloppy=sloppy, seed=seed)
    context_wf.inputs.inputnode.template_file = template_file
    context_wf.inputs.inputnode.grid_reference = grid_reference
    for subject, images in targets.items():
        for index, image in enumerate(images):
            suffix = f"_{index}" if len(images) > 1 else ""
            icl_wf = init_neuroverse3d_wf(output_names=output_names, task=task, model=model,
                                          inference=inference, sloppy=sloppy, seed=seed,
                                          name=f"sub_{subject}{suffix}_wf")
            icl_wf.inputs.inputnode.in_file = str(image)
            icl_wf.inputs.inputnode.template_file = template_file
            icl_wf.inputs.inputnode.grid_reference = grid_reference
            ds_wf = init_ds_wf(output_dir=output_dir, output_names=output_names, task=task,
                               template=template, source_suffix=source_suffix,
                               generated_suffix=generated_suffix, static_meta=static_meta,
                               name=f"ds_sub_{subject}{suffix}_wf")
            ds_wf.inputs.inputnode.source_file = str(image)
            fields = ["forward_transform", "inverse_transform", "template_outputs",
                      "native_outputs", "info"]
            if task == "segmentation":
                fields += ["native_masks", "native_dseg", "template_masks", "template_dseg"]
            workflow.connect([
                (context_wf, icl_wf, [(f"outputnode.{subset_of[subject]}", "inputnode.context_set")]),
                (icl_wf, ds_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in fields]),
            ])
    return workflow

"""Report nodes: each image's reportlets, then the subject's page, from connected inputs only.

Both always run (like the derivatives sink): what they write lives in the output folder, which
the work folder's cache cannot vouch for (another output folder, deleted figures)."""
from __future__ import annotations

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


class _ImageReportletsInputSpec(BaseInterfaceInputSpec):
    output_dir = Directory(mandatory=True, desc="output dataset root (figures go to "
                                                "sub-<label>/figures)")
    source_file = File(exists=True, mandatory=True, desc="the native-space input image")
    task = traits.Enum("segmentation", "generation", mandatory=True)
    output_names = traits.List(traits.Str, mandatory=True, desc="one name per output")
    info = traits.Dict(mandatory=True, desc="the ICL node's info (model, precision, timings)")
    derivatives = InputMultiObject(File(exists=True), mandatory=True,
                                   desc="the derivatives stored for this image")
    forward_transform = File(exists=True, desc="native -> template (ITK .mat)")
    template_file = File(exists=True, desc="template image")
    template_mask = File(exists=True, desc="template brain mask (outline of the flicker)")
    template = traits.Str("template", usedefault=True, desc="template identifier")
    native_masks = InputMultiObject(File(exists=True), desc="segmentation: one mask per name")
    native_outputs = InputMultiObject(File(exists=True), desc="generation: one image per name")
    native_spread = InputMultiObject(File(exists=True), desc="ensembles: the members' per-voxel "
                                                            "spread, one image per name")


class _ImageReportletsOutputSpec(TraitedSpec):
    facts = traits.Dict(desc="what the subject page shows of this image")


class ImageReportlets(SimpleInterface):
    """Draw one image's SVG reportlets (registration flicker, outlines or before/after)."""

    input_spec = _ImageReportletsInputSpec
    output_spec = _ImageReportletsOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        from ..reports.reportlets import image_reportlets

        given = {k: getattr(self.inputs, k) for k in ("forward_transform", "template_file",
                                                      "template_mask", "native_masks",
                                                      "native_outputs", "native_spread")
                 if isdefined(getattr(self.inputs, k))}
        self._results["facts"] = image_reportlets(
            output_dir=self.inputs.output_dir, source_file=self.inputs.source_file,
            task=self.inputs.task, output_names=list(self.inputs.output_names),
            info=dict(self.inputs.info), derivatives=list(self.inputs.derivatives),
            template=self.inputs.template, **given)
        return runtime


class _SubjectReportInputSpec(BaseInterfaceInputSpec):
    output_dir = Directory(mandatory=True, desc="output dataset root")
    subject = traits.Str(mandatory=True, desc="participant label (without sub-)")
    images = traits.List(traits.Dict, mandatory=True, desc="ImageReportlets facts, one per image")
    context_set = File(exists=True, mandatory=True, desc="the subject's stacked context set")
    grid_reference = File(exists=True, mandatory=True, desc="the model grid (its affine)")
    task = traits.Enum("segmentation", "generation", mandatory=True)
    output_names = traits.List(traits.Str, mandatory=True)
    static_meta = traits.Dict(mandatory=True, desc="ContextSpec, Template, Software")


class _SubjectReportOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="sub-<label>.html")
    out_facts = File(exists=True, desc="the facts it was rendered from (JSON, for rebuilding)")


class SubjectReport(SimpleInterface):
    """Draw the context thumbnail, save the subject's facts and render its page."""

    input_spec = _SubjectReportInputSpec
    output_spec = _SubjectReportOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        from ..reports.reportlets import context_reportlet
        from ..reports.subject import render_subject_report, subject_facts, write_facts

        suffix = self.inputs.images[0].get("suffix", "T1w") if self.inputs.images else "T1w"
        context = context_reportlet(
            output_dir=self.inputs.output_dir, subject=self.inputs.subject,
            context_set=self.inputs.context_set, grid_reference=self.inputs.grid_reference,
            task=self.inputs.task, output_names=list(self.inputs.output_names), suffix=suffix)
        facts = subject_facts(subject=self.inputs.subject, images=self.inputs.images,
                              context=context, static_meta=dict(self.inputs.static_meta),
                              task=self.inputs.task, output_names=self.inputs.output_names)
        self._results["out_facts"] = str(write_facts(self.inputs.output_dir, facts))
        self._results["out_report"] = str(render_subject_report(self.inputs.output_dir,
                                                                self.inputs.subject, facts))
        return runtime

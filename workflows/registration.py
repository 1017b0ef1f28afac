"""Affine registration of one image to a template."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from .interfaces.geometry import RegisterToTemplate


def init_template_registration_wf(*, sloppy: bool = False, seed: int = 0,
                                  template_id: str = "template",
                                  name: str = "template_registration_wf"):
    """Register ``in_file`` to ``template`` (rigid, then affine; mutual information).

    Inputs (``inputnode``): ``in_file`` (native image), ``template`` (template image).
    Outputs (``outputnode``): ``forward_transform`` (ITK .mat resampling native images onto the
    template grid), ``inverse_transform`` (the way back), ``registered_file`` (``in_file`` on the
    template grid, float32).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file", "template"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(
        fields=["forward_transform", "inverse_transform", "registered_file"]), name="outputnode")
    register = pe.Node(RegisterToTemplate(sloppy=sloppy, seed=seed, template_id=template_id),
                       name="register")
    workflow.connect([
        (inputnode, register, [("in_file", "in_file"), ("template", "template")]),
        (register, outputnode, [("forward_transform", "forward_transform"),
                                ("inverse_transform", "inverse_transform"),
                                ("registered_file", "registered_file")]),
    ])
    return workflow

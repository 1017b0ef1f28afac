"""Nipype interfaces around :mod:`neuroverse_bids.workflows.geometry` (registration, resampling)."""
from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..geometry import register_affine, resample


def _stem(path) -> str:
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


class _RegisterInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="moving image (e.g. a native T1w)")
    template = File(exists=True, mandatory=True, desc="fixed template image (e.g. its T1w)")
    template_id = traits.Str("template", usedefault=True, desc="name in the transform files")
    moving_space = traits.Str("T1w", usedefault=True, desc="name of the moving space")
    sloppy = traits.Bool(False, usedefault=True, desc="coarse, fast setting (tests, demos)")
    seed = traits.Int(0, usedefault=True, desc="random seed of the metric sampling (>= 0)")


class _RegisterOutputSpec(TraitedSpec):
    forward_transform = File(exists=True, desc="ITK affine .mat: in_file space -> template grid")
    inverse_transform = File(exists=True, desc="ITK affine .mat: template space -> in_file grid")
    registered_file = File(exists=True, desc="in_file resampled onto the template grid (float32)")


class RegisterToTemplate(SimpleInterface):
    """Affine (rigid, then affine; mutual information) registration to a template."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        result = register_affine(inputs.in_file, inputs.template, runtime.cwd,
                                 sloppy=inputs.sloppy, seed=inputs.seed,
                                 moving_space=inputs.moving_space,
                                 fixed_space=inputs.template_id)
        name = f"{_stem(inputs.in_file)}_space-{inputs.template_id}.nii.gz"
        registered = Path(runtime.cwd) / name
        resample(inputs.in_file, inputs.template, result["forward"], registered,
                 interpolation="linear")
        self._results.update(forward_transform=str(result["forward"]),
                             inverse_transform=str(result["inverse"]),
                             registered_file=str(registered))
        return runtime


class _ResampleInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3D image to resample")
    reference = File(exists=True, mandatory=True, desc="image whose grid the output takes")
    transform = InputMultiObject(File(exists=True), desc="ITK .mat file(s), ANTs order; "
                                                         "none: identity")
    invert = traits.Bool(False, usedefault=True, desc="apply the inverse of the transform(s)")
    interpolation = traits.Enum("linear", "nearest", usedefault=True,
                                desc="linear: images/probabilities (float32); nearest: labels")


class _ResampleOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="in_file on the reference grid")


class ResampleToReference(SimpleInterface):
    """The one resampler: images, labels and outputs onto a reference grid."""

    input_spec = _ResampleInputSpec
    output_spec = _ResampleOutputSpec

    def _run_interface(self, runtime):
        inputs = self.inputs
        transforms = list(inputs.transform) if inputs.transform else None
        out = Path(runtime.cwd) / f"{_stem(inputs.in_file)}_resampled.nii.gz"
        self._results["out_file"] = str(resample(
            inputs.in_file, inputs.reference, transforms, out,
            interpolation=inputs.interpolation, invert=inputs.invert))
        return runtime

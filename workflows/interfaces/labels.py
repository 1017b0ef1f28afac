"""Label handling: one structure out of a mask or dseg, and probabilities back to masks."""
from __future__ import annotations


import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ...model.labels import THRESHOLD, probabilities_to_dseg, probabilities_to_masks
from ..niftiio import load_volume, node_file, write_nifti_atomic


class _ExtractInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="mask, dseg or image in native space")
    label_value = traits.Either(None, traits.Int, traits.List(traits.Int), default=None,
                                usedefault=True, desc="dseg index or indices (their union) to "
                                                      "extract; None: a mask (> 0) or an image")
    is_mask = traits.Bool(True, usedefault=True, desc="False: pass an image through unchanged")


class _ExtractOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="float32 binary mask (or the image)")


class ExtractLabel(SimpleInterface):
    """One structure as a float32 {0, 1} volume: ``dseg == index`` or ``mask > 0``."""

    input_spec = _ExtractInputSpec
    output_spec = _ExtractOutputSpec

    def _run_interface(self, runtime):
        if not self.inputs.is_mask:
            self._results["out_file"] = self.inputs.in_file
            return runtime
        img, data = load_volume(self.inputs.in_file)
        value = self.inputs.label_value
        mask = np.isin(np.rint(data), value) if value is not None else data > 0
        self._results["out_file"] = str(write_nifti_atomic(
            mask.astype(np.float32), img, node_file(runtime, "label.nii.gz")))
        return runtime


class _MasksInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="K probability maps")
    threshold = traits.Float(THRESHOLD, usedefault=True)


class _MasksOutputSpec(TraitedSpec):
    masks = traits.List(File(exists=True), desc="K uint8 masks (always a list)")
    dseg = File(exists=True, desc="uint8 labels 1..K (largest probability above threshold)")


class ProbabilitiesToMasks(SimpleInterface):
    """Threshold K probability maps into masks and one discrete segmentation."""

    input_spec = _MasksInputSpec
    output_spec = _MasksOutputSpec

    def _run_interface(self, runtime):
        imgs = [nb.load(f) for f in self.inputs.in_files]
        probs = np.stack([np.asanyarray(i.dataobj, dtype=np.float32) for i in imgs])
        masks = probabilities_to_masks(probs, self.inputs.threshold)
        self._results["masks"] = [
            str(write_nifti_atomic(m.astype(np.uint8), imgs[0], node_file(runtime, f"mask{k}.nii.gz")))
            for k, m in enumerate(masks)]
        dseg = probabilities_to_dseg(probs, threshold=self.inputs.threshold)
        self._results["dseg"] = str(write_nifti_atomic(dseg, imgs[0],
                                                       node_file(runtime, "dseg.nii.gz")))
        return runtime

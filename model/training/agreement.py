"""Agreement of bfloat16 with float32 on a trained model's own validation episodes.

Measured at the end of ``neuroverse3d-train`` and written into the saved model's metadata
(``precision_agreement``), where the Predictor's ``auto`` precision reads it: a model whose
bfloat16 masks or images drift from float32 then runs in float32 (see
``predictor.AGREEMENT_TARGETS``).
"""
from __future__ import annotations

import copy
from typing import Sequence

from ..network import Neuroverse3D
from ..predictor import Predictor
from .losses import dice, psnr
from .sampling import Episode
from .synthesis import SEGMENTATION

PSNR_CAP_DB = 100.0  # identical outputs have infinite PSNR; metadata stays finite JSON


def precision_agreement(model: Neuroverse3D, episodes: Sequence[Episode],
                        precision: str = "bfloat16", device: str = "cpu") -> dict:
    """Worst figures of ``precision`` against float32 over ``episodes`` (first member the
    target, the others its context): ``dice_min`` of the masks (segmentation; both
    thresholded at 0.5) and ``psnr_min_db`` of the outputs (other tasks; both clipped to
    [0, 1]), in the record format of ``checkpoint.record_precision_agreement``."""
    predictors = {p: Predictor(copy.deepcopy(model).float(), device=device, precision=p,
                               mini_context_size=1) for p in ("float32", precision)}
    dices, psnrs = [], []
    for episode in episodes:
        target, images, labels = episode.inputs[0], episode.inputs[1:], episode.outputs[1:]
        reference, low = (predictors[p].predict(target, images, labels)
                          for p in ("float32", precision))
        if episode.task == SEGMENTATION:
            dices.append(dice(low, reference))
        else:
            psnrs.append(min(psnr(low.clamp(0, 1), reference.clamp(0, 1)), PSNR_CAP_DB))
    record = {"measured_on": f"{len(episodes)} validation episodes of neuroverse3d-train",
              "measured_by": "neuroverse3d-train"}
    if dices:
        record["dice_min"] = round(min(dices), 4)
    if psnrs:
        record["psnr_min_db"] = round(min(psnrs), 4)
    return record

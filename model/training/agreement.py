"""Agreement of a reduced precision with float32 on a trained model: the one measurement.

Masks (segmentation) are compared by Dice, generated images by PSNR, and the worst figures
form the record that ``checkpoint.record_precision_agreement`` writes into the model's
metadata, where the Predictor's ``auto`` precision reads it (``predictor.AGREEMENT_TARGETS``).
``neuroverse3d-train`` measures it on its validation episodes at the last step;
``benchmarks/precision_agreement.py`` on held-out subjects, per structure.
"""
from __future__ import annotations

from typing import Iterable, Sequence, Tuple

from torch import Tensor

from ..network import Neuroverse3D
from ..predictor import float32_and
from .losses import dice, psnr
from .sampling import Episode
from .synthesis import SEGMENTATION

PSNR_CAP_DB = 100.0  # identical outputs have infinite PSNR; metadata stays finite JSON


def compare(task: str, low: Tensor, reference: Tensor) -> Tuple[str, float]:
    """``("dice", Dice of the masks)`` for segmentation (both thresholded at 0.5), else
    ``("psnr", PSNR in dB)`` of the outputs clipped to [0, 1] (capped at ``PSNR_CAP_DB``)."""
    if task == SEGMENTATION:
        return "dice", dice(low, reference)
    return "psnr", min(psnr(low.clamp(0, 1), reference.clamp(0, 1)), PSNR_CAP_DB)


def agreement_record(figures: Iterable[Tuple[str, float]], measured_on: str,
                     measured_by: str) -> dict:
    """The worst of ``(metric, value)`` figures as a record: ``dice_min``, ``psnr_min_db``."""
    worst = {}
    for metric, value in figures:
        worst[metric] = min(value, worst.get(metric, value))
    record = {"measured_on": measured_on, "measured_by": measured_by}
    for metric, key in (("dice", "dice_min"), ("psnr", "psnr_min_db")):
        if metric in worst:
            record[key] = round(worst[metric], 4)
    return record


def precision_agreement(model: Neuroverse3D, episodes: Sequence[Episode],
                        precision: str = "bfloat16", device: str = "cpu") -> dict:
    """The record of ``precision`` against float32 over ``episodes`` (first member the
    target, the others its context)."""
    predictors = float32_and(model, precision, device)
    figures = []
    for episode in episodes:
        target, images, labels = episode.inputs[0], episode.inputs[1:], episode.outputs[1:]
        reference, low = (predictors[p].predict(target, images, labels)
                          for p in ("float32", precision))
        figures.append(compare(episode.task, low, reference))
    return agreement_record(figures, f"{len(episodes)} validation episodes of "
                                     "neuroverse3d-train", "neuroverse3d-train")

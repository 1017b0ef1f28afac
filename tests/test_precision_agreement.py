"""bfloat16 vs float32 on a trained model (the bundled default), on held-out anatomy.

Masks: Dice >= 0.99; generated images: PSNR >= 45 dB (bfloat16 output vs float32 output).
Brain masks and generated images meet it; masks of structures with uncertain voxels (tissue
boundaries, small structures) meet it on this sample but not always (see the test's docstring).
Runs ``benchmarks/precision_agreement.py``'s measurement on a small sample; the script itself
reports more subjects and tasks.
"""
import importlib.util
from pathlib import Path

import pytest

from neuroverse_bids.anatomy.dataset import make_training_data
from neuroverse_bids.model import load_checkpoint
from neuroverse_bids.model.pretrained import default_model_path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "precision_agreement.py"


def _script():
    spec = importlib.util.spec_from_file_location("precision_agreement", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows(tmp_path_factory, needs_bf16):
    # seed 2000: subjects never used in training (seed 0) nor in the model's evaluation (1000)
    grid = load_checkpoint(default_model_path()).metadata["grid"]  # the model's own grid
    manifest = make_training_data(tmp_path_factory.mktemp("heldout"), subjects=5, seed=2000,
                                  grid=tuple(grid["shape"]), voxel_size=grid["voxel_size_mm"],
                                  kinds=("t1",))
    return _script().measure(default_model_path(), manifest, contexts=4, targets=1,
                             tasks=("segmentation", "gaussian-noise", "inpainting"))


def test_bfloat16_brain_masks_match_float32_masks(rows):
    brain = [r for r in rows if r["metric"] == "dice" and r["structure"] == "brain"]
    assert len(brain) == 2 and min(r["value"] for r in brain) >= 0.99, brain


def test_bfloat16_masks_of_every_structure_match_float32_masks(rows):
    """On this sample (L=4, one target per source) every mask keeps Dice >= 0.99; not a
    guarantee: bfloat16 outputs differ from float32 by up to ~0.02, so voxels that close to
    0.5 flip, and on the held-out L=8 benchmark one small mask (the Colin27 amygdala) drops to
    0.968 (benchmarks/results/precision_agreement_default_model.md), which is why the model
    file's record keeps ``--precision auto`` in float32."""
    dice = [r for r in rows if r["metric"] == "dice"]
    assert {"GM", "WM", "CSF", "Hippocampus", "Putamen"} <= {r["structure"] for r in dice}
    worst = min(dice, key=lambda r: r["value"])
    assert worst["value"] >= 0.99, worst


def test_bfloat16_images_match_float32_images(rows):
    psnr = [r for r in rows if r["metric"] == "psnr"]
    assert {r["task"] for r in psnr} == {"gaussian-noise", "inpainting"}
    assert len({r["dataset"] for r in psnr}) == 2  # MNI152 and Colin27 anatomy
    worst = min(psnr, key=lambda r: r["value"])
    assert worst["value"] >= 45, worst

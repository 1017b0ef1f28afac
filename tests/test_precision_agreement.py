"""bfloat16 vs float32 on a trained model (the bundled default), on held-out anatomy.

Brain masks: Dice >= 0.99; generated images: PSNR >= 45 dB (bfloat16 output vs float32
output); masks of thin or small structures lose a few boundary voxels (Dice >= 0.97), and the
model file's record then keeps ``--precision auto`` in float32 (see the test's docstring).
Runs ``benchmarks/precision_agreement.py``'s measurement on a small sample; the script itself
reports more subjects and tasks.
"""
import pytest

from neuroverse_bids.anatomy.dataset import make_training_data
from neuroverse_bids.model import load_checkpoint
from neuroverse_bids.model.pretrained import default_model_path
from synthetic import load_script

def _script():
    return load_script("benchmarks/precision_agreement.py")


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


def test_bfloat16_masks_of_every_structure_stay_close_and_auto_follows_the_record(rows):
    """Masks of every structure stay within a few boundary voxels (Dice >= 0.97): bfloat16
    outputs differ from float32 by up to ~0.02, so voxels that close to 0.5 flip, most in thin
    or small masks (CSF, amygdala, pallidum: 0.971-0.99 on the held-out L=8 benchmark,
    benchmarks/results/precision_agreement_default_model.md). Where a mask here misses the
    0.99 that ``--precision auto`` requires, the model file's own record misses it too, so auto
    runs the bundled model in float32."""
    from neuroverse_bids.model.checkpoint import load_checkpoint
    from neuroverse_bids.model.engine.precision import recorded_shortfall

    dice = [r for r in rows if r["metric"] == "dice"]
    assert {"GM", "WM", "CSF", "Hippocampus", "Putamen"} <= {r["structure"] for r in dice}
    worst = min(dice, key=lambda r: r["value"])
    assert worst["value"] >= 0.97, worst
    metadata = load_checkpoint(default_model_path()).metadata
    if worst["value"] < 0.99:
        assert recorded_shortfall(metadata, "bfloat16"), metadata.get("precision_agreement")


def test_bfloat16_images_match_float32_images(rows):
    psnr = [r for r in rows if r["metric"] == "psnr"]
    assert {r["task"] for r in psnr} == {"gaussian-noise", "inpainting"}
    assert len({r["dataset"] for r in psnr}) == 2  # MNI152 and Colin27 anatomy
    worst = min(psnr, key=lambda r: r["value"])
    assert worst["value"] >= 45, worst

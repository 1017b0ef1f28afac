"""Degradations and task synthesis: shape, range, what changes (and what does not),
determinism."""
import pytest
import torch

from neuroverse_bids.model import degradations as deg
from neuroverse_bids.model.training import synthesis as syn

SHAPE = (16, 16, 16)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def image():
    """A smooth positive volume in [0.2, 1] with max 1."""
    z, y, x = torch.meshgrid(*[torch.linspace(0, 1, s) for s in SHAPE], indexing="ij")
    vol = 0.2 + 0.8 * (0.5 + 0.5 * torch.sin(3 * x) * torch.cos(2 * y) * (0.5 + z) / 1.5)
    return vol / vol.max()


@pytest.mark.parametrize("name", sorted(deg.DEGRADATIONS))
def test_registry_shape_range_change_and_determinism(image, name):
    a = deg.degrade(name, image, _gen(1))
    b = deg.degrade(name, image, _gen(1))
    assert a.shape == image.shape and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)  # same seed, same result
    assert (a - image).abs().mean() > 1e-3  # it degrades
    if name != "downsample-x2":  # the only deterministic one
        assert not torch.equal(a, deg.degrade(name, image, _gen(2)))
    assert set(deg.DEGRADATIONS) == {"gaussian-noise", "salt-pepper", "inpainting", "bias-field",
                                     "downsample-x2"}


def test_unknown_degradation_is_refused(image):
    with pytest.raises(ValueError, match="unknown degradation"):
        deg.degrade("blur", image, _gen())


def test_legendre_polynomials_match_closed_forms():
    x = torch.linspace(-1, 1, 7)
    p = deg.legendre(x, 3)
    assert torch.allclose(p[2], (3 * x ** 2 - 1) / 2)
    assert torch.allclose(p[3], (5 * x ** 3 - 3 * x) / 2, atol=1e-6)


def test_bias_field_is_smooth_positive_and_multiplicative(image):
    field = deg.bias_field(SHAPE, _gen(3), order=3, scale=0.3)
    assert field.min() > 0
    log_field = field.double().log()
    assert log_field.std() > 0.05  # not flat
    for axis in range(3):  # a cubic polynomial in the exponent: 4th differences vanish
        assert log_field.diff(n=4, dim=axis).abs().max() < 1e-4
    out = deg.add_bias_field(image, _gen(3))
    ratio = out / image
    assert torch.allclose(ratio / ratio.max(), field / field.max(), atol=1e-5)
    assert out.max() == pytest.approx(1.0)


def test_gaussian_noise_std_in_paper_range():
    flat = torch.full(SHAPE, 0.5)
    stds = []
    for seed in range(4):
        noisy = deg.add_gaussian_noise(flat, _gen(seed))
        assert noisy.min() == 0 and noisy.max() == 1  # min-max rescaled
        # undo the min-max: residual std relative to the range of a 16^3 normal sample
        stds.append(noisy.std().item())
    assert max(stds) - min(stds) < 0.05  # the noise is the only content: similar after rescaling


def test_salt_pepper_sets_the_expected_fraction(image):
    out = deg.add_salt_pepper(image, _gen(4), prob=0.04)
    changed = out != image
    frac_salt = ((out == 1) & changed).float().mean().item()
    frac_pepper = ((out == 0) & changed).float().mean().item()
    assert 0.025 < frac_salt < 0.055 and 0.025 < frac_pepper < 0.055
    assert set(out[changed].unique().tolist()) <= {0.0, 1.0}


def test_inpainting_zeroes_a_blob_and_nothing_else(image):
    mask = deg.perlin_mask(SHAPE, _gen(5), cells=(2,), fraction=(0.2, 0.2))
    assert mask.float().mean().item() == pytest.approx(0.2, abs=0.01)
    out = deg.add_inpainting_mask(image, _gen(5), cells=(2,), fraction=(0.2, 0.2))
    assert torch.equal(out == 0, mask)  # the image has no zeros of its own
    assert torch.equal(out[~mask], image[~mask])
    # blobs, not salt: most masked voxels have a masked neighbour along x
    inner = (mask[:, :, 1:] & mask[:, :, :-1]).sum() / mask.sum()
    assert inner > 0.8


def test_perlin_noise_is_smooth_and_bounded():
    noise = deg.perlin_noise(SHAPE, _gen(6), cells=2)
    assert noise.abs().max() <= 2.0 and noise.std() > 0.05
    assert noise.diff(dim=2).abs().max() < 0.5


def test_downsample_x2_keeps_constant_and_smooths_detail():
    flat = torch.full(SHAPE, 0.7)
    assert torch.allclose(deg.downsample_x2(flat), flat)
    checker = (torch.arange(16)[:, None, None] + torch.arange(16)[None, :, None]
               + torch.arange(16)[None, None, :]) % 2
    out = deg.downsample_x2(checker.float())
    assert out.std() < 0.01  # the x1 checkerboard is beyond the x2 resolution


def test_central_slices_keep_exactly_three_planes(image):
    out = syn.central_slices(image)
    kept = out != 0
    assert kept.sum() == 3 * 16 * 16 - 3 * 16 + 1
    assert torch.equal(out[8], image[8]) and torch.equal(out[:, 8], image[:, 8])
    assert torch.equal(out[:, :, 8], image[:, :, 8])


def test_make_pair_for_every_task(image):
    label = image > 0.6
    mask = torch.zeros(SHAPE, dtype=torch.int16)
    mask[4:12, 4:12, 4:12] = 1
    volumes = {"image": image, "label": label, "brain_mask": mask, "paired": 1 - image}
    for task in syn.TASKS:
        source, target = syn.make_pair(task, volumes, _gen(7))
        assert source.shape == target.shape == SHAPE
        if task == "segmentation":
            assert torch.equal(source, image) and torch.equal(target, label.float())
        elif task == "skull-stripping":
            assert torch.equal(target, image * (mask > 0)) and torch.equal(source, image)
        elif task == "modality-transform":
            assert torch.equal(target, 1 - image)
        else:
            assert torch.equal(target, image) and not torch.equal(source, image)
    with pytest.raises(ValueError, match="unknown task"):
        syn.make_pair("colourise", volumes, _gen())


def test_overlay_is_rare_independent_and_excludes_the_task_itself(image):
    g = _gen(8)
    draws = [syn.draw_overlay("gaussian-noise", g, prob=0.05) for _ in range(2000)]
    assert all("gaussian-noise" not in d for d in draws)
    rate = sum(len(d) for d in draws) / (2000 * 4)
    assert 0.03 < rate < 0.07
    always = syn.draw_overlay("segmentation", _gen(), prob=1.0)
    assert always == list(deg.DEGRADATIONS)
    source, _ = syn.make_pair("segmentation", {"image": image, "label": image > 0.5}, _gen(9),
                              overlay=["salt-pepper"])
    assert not torch.equal(source, image)

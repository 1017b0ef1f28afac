"""Group augmentation: each transform's effect, group consistency, ranges, determinism."""
import dataclasses
import itertools

import pytest
import torch

from neuroverse_bids.model.training import augment as aug

SHAPE = (16, 16, 16)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _only(**probs):
    """An AugmentConfig with every probability 0 except those given."""
    return dataclasses.replace(aug.AugmentConfig.disabled(), **probs)


@pytest.fixture
def group():
    g = _gen(123)
    images = torch.rand(3, *SHAPE, generator=g) * 0.5 + 0.25
    labels = torch.zeros(3, *SHAPE)
    labels[:, 5:11, 4:9, 6:12] = 1
    return images, labels


def test_disabled_config_is_identity(group):
    images, labels = group
    a, b = aug.augment_group(images, labels, "segmentation", _gen(), aug.AugmentConfig.disabled())
    assert torch.equal(a, images) and torch.equal(b, labels)


def test_default_probabilities_are_the_papers():
    cfg = aug.AugmentConfig()
    assert (cfg.p_affine, cfg.p_elastic, cfg.p_flip, cfg.p_rotation) == (0.05,) * 4
    assert (cfg.p_shift_scale, cfg.p_noise, cfg.p_invert, cfg.p_gin) == (0.2, 0.1, 0.05, 0.05)
    assert (cfg.p_sobel, cfg.p_mask_invert, cfg.p_dilate, cfg.p_erode) == (0.05,) * 4


def test_warp_with_zero_displacement_is_identity_and_integer_shift_moves(group):
    images, _ = group
    assert torch.allclose(aug.warp(images, torch.zeros(3, *SHAPE)), images, atol=1e-5)
    shift = torch.zeros(3, *SHAPE)
    shift[2] = 1.0  # out(x) = in(x + 1) along W
    moved = aug.warp(images[0], shift)
    assert torch.allclose(moved[:, :, :-1], images[0][:, :, 1:], atol=1e-5)
    assert torch.all(moved[:, :, -1] == 0)


def test_random_smooth_deformation_is_bounded_smooth_and_seeded():
    d = aug.random_smooth_deformation(SHAPE, _gen(1), max_displacement=3.0, control_points=4)
    assert d.shape == (3, *SHAPE)
    assert d.abs().max() <= 3.0 and d.abs().max() > 0.5
    assert d.diff(dim=1).abs().max() <= 2 * 3.0 / 5 + 1e-5  # piecewise linear between points
    assert torch.equal(d, aug.random_smooth_deformation(SHAPE, _gen(1), 3.0, 4))


@pytest.mark.parametrize("kind", ["p_affine", "p_rotation", "p_elastic", "p_flip"])
def test_spatial_moves_inputs_and_outputs_of_all_members_together(group, kind):
    images, labels = group
    cfg = _only(**{kind: 1.0})
    # outputs equal to inputs under a generation task: they must stay equal after the warp
    a, b = aug.augment_group(images, images.clone(), "bias-field", _gen(2), cfg)
    assert not torch.allclose(a, images, atol=1e-3)  # geometry changed
    assert torch.equal(a, b)
    # one draw for the group: a volume repeated in the group is moved identically
    same = images[:1].repeat(3, 1, 1, 1)
    c, _ = aug.augment_group(same, labels, "segmentation", _gen(2), cfg)
    assert torch.equal(c[0], c[1]) and torch.equal(c[1], c[2])
    # labels stay binary (nearest interpolation) and keep their voxel count roughly
    _, lab = aug.augment_group(images, labels, "segmentation", _gen(2), cfg)
    assert set(lab.unique().tolist()) <= {0.0, 1.0}
    assert 0.5 < lab.sum() / labels.sum() < 1.6


def test_flip_is_exact(group):
    images, labels = group
    a, b = aug.augment_group(images, labels, "segmentation", _gen(3), _only(p_flip=1.0))
    combos = [list(c) for r in (1, 2, 3) for c in itertools.combinations((1, 2, 3), r)]
    assert sum(torch.equal(a, images.flip(c)) and torch.equal(b, labels.flip(c)) for c in combos) == 1


def test_intensity_shift_scale_and_noise_change_inputs_only(group):
    images, labels = group
    for kind in ("p_shift_scale", "p_noise"):
        a, b = aug.augment_group(images, labels, "segmentation", _gen(4), _only(**{kind: 1.0}))
        assert torch.equal(b, labels) and not torch.equal(a, images)
        assert a.min() >= 0 and a.max() <= 1
    a, _ = aug.augment_group(images, labels, "segmentation", _gen(4), _only(p_shift_scale=1.0))
    # an affine map of intensity: correlation with the input stays 1
    corr = torch.corrcoef(torch.stack([a.flatten(), images.flatten()]))[0, 1]
    assert corr > 0.999


def test_inversion_and_gin(group):
    images, labels = group
    a, b = aug.augment_group(images, labels, "segmentation", _gen(5), _only(p_invert=1.0))
    assert torch.allclose(a, 1 - images) and torch.equal(b, labels)
    g1 = aug.gin(images, _gen(6))
    assert g1.shape == images.shape and g1.min() >= 0 and g1.max() <= 1
    assert torch.equal(g1, aug.gin(images, _gen(6)))
    assert not torch.allclose(g1, aug.gin(images, _gen(7)))
    same = aug.gin(images[:1].repeat(2, 1, 1, 1), _gen(6))
    assert torch.equal(same[0], same[1])  # one random network for the whole group


def test_label_augmentations(group):
    _, labels = group
    volume = labels.sum().item()
    dil = aug.dilate(labels)
    ero = aug.erode(labels)
    assert dil.sum() == 3 * (8 * 7 * 8) and ero.sum() == 3 * (4 * 3 * 4)  # one voxel each side
    assert volume == 3 * 6 * 5 * 6
    edges = aug.sobel_magnitude(labels)
    assert edges.max() == 1 and edges.min() == 0
    assert torch.all(edges[:, 8, 6, 9] == 0) and edges[:, 0, 0, 0].sum() == 0  # zero inside and far outside
    assert torch.all(edges[:, 5, 6, 9] > 0)  # non-zero on the boundary
    for kind, expected in (("p_dilate", dil), ("p_erode", ero), ("p_mask_invert", 1 - labels),
                           ("p_sobel", edges)):
        images = torch.rand(3, *SHAPE, generator=_gen(8))
        a, b = aug.augment_group(images, labels, "segmentation", _gen(8), _only(**{kind: 1.0}))
        assert torch.equal(a, images) and torch.allclose(b, expected)
    # not applied to generation tasks
    a, b = aug.augment_group(images, labels, "inpainting", _gen(8), _only(p_mask_invert=1.0))
    assert torch.equal(b, labels)


def test_full_default_augmentation_is_deterministic(group):
    images, labels = group
    cfg = dataclasses.replace(aug.AugmentConfig(), p_affine=0.5, p_elastic=0.5, p_gin=0.5)
    a = aug.augment_group(images, labels, "segmentation", _gen(9), cfg)
    b = aug.augment_group(images, labels, "segmentation", _gen(9), cfg)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].min() >= 0 and a[0].max() <= 1

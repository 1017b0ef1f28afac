"""Losses against hand-computed values; metrics."""
import math

import pytest
import torch

from neuroverse_bids.model.training.losses import (dice, gradient_loss, psnr, smooth_l3_l1,
                                                   soft_dice_loss, task_loss)


def test_smooth_l3_l1_hand_values():
    pred = torch.tensor([0.0, 0.5, -0.5, 2.0, -3.0, 1.0])
    target = torch.zeros(6)
    # d: 0, .5, .5, 2, 3, 1 -> 0, 1/24, 1/24, 4/3, 7/3, 1/3
    expected = (0 + 1 / 24 + 1 / 24 + 4 / 3 + 7 / 3 + 1 / 3) / 6
    assert smooth_l3_l1(pred, target).item() == pytest.approx(expected, rel=1e-6)
    # beta = 2: d^3/12 below 2, d - 4/3 above: d=1 -> 1/12, d=3 -> 5/3
    assert smooth_l3_l1(torch.tensor([1.0, 3.0]), torch.zeros(2), beta=2.0).item() == \
        pytest.approx((1 / 12 + 5 / 3) / 2, rel=1e-6)


def test_smooth_l3_l1_gradient_is_continuous_at_beta():
    d = torch.tensor([1 - 1e-4, 1 + 1e-4], requires_grad=True)
    smooth_l3_l1(d, torch.zeros(2)).backward()
    assert d.grad[0].item() == pytest.approx(d.grad[1].item(), rel=1e-3)


def test_gradient_loss_hand_values():
    pred = torch.zeros(1, 1, 2, 2, 2)
    pred[..., 1, :, :] = 1.0  # step of 1 along D only
    target = torch.zeros_like(pred)
    # forward differences along D are all 1 (4 of them): mean 1; H and W differences are 0
    assert gradient_loss(pred, target).item() == pytest.approx(1.0)
    pred2 = torch.arange(8.0).view(1, 1, 2, 2, 2)  # steps 4 (D), 2 (H), 1 (W)
    assert gradient_loss(pred2, target).item() == pytest.approx(7.0)
    assert gradient_loss(pred2, pred2 + 5).item() == 0.0  # constant offsets do not count


def test_task_weights_and_gradient_term():
    pred = torch.full((1, 1, 2, 2, 2), 0.5)
    target = torch.zeros_like(pred)
    base = 0.5 ** 3 / 3
    assert task_loss(pred, target, "segmentation").item() == pytest.approx(50 * base, rel=1e-6)
    assert task_loss(pred, target, "2d-to-3d", gradient_weight=0).item() == pytest.approx(0.5 * base, rel=1e-6)
    assert task_loss(pred, target, "inpainting").item() == pytest.approx(base, rel=1e-6)  # flat: no gradient term
    ramp = torch.arange(8.0).view(1, 1, 2, 2, 2) / 10
    expected = smooth_l3_l1(ramp, target).item() + 2.0 * 0.7
    assert task_loss(ramp, target, "bias-field", gradient_weight=2.0).item() == pytest.approx(expected, rel=1e-6)
    assert task_loss(pred, target, "segmentation", weights={"segmentation": 1.0}).item() == \
        pytest.approx(base, rel=1e-6)


def test_dice_and_psnr():
    a = torch.tensor([1.0, 1.0, 0.0, 0.0])
    b = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert dice(a, b) == pytest.approx(0.5, rel=1e-5)
    assert dice(torch.zeros(3), torch.zeros(3)) == 1.0
    assert psnr(torch.full((4,), 0.1), torch.zeros(4)) == pytest.approx(20.0, rel=1e-5)
    assert math.isinf(psnr(a, a))


def test_soft_dice_loss_and_its_place_in_the_segmentation_loss():
    target = torch.zeros(2, 1, 2, 2, 2)
    target[:, :, 0] = 1.0
    assert soft_dice_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(torch.zeros_like(target), target).item() == pytest.approx(1.0)
    assert soft_dice_loss(0.5 * target, target).item() == pytest.approx(1 - 1.0 / 1.25, rel=1e-5)
    assert soft_dice_loss(1.5 * target, target).item() > 0  # overshooting costs too
    pred = torch.full_like(target, 0.5)
    plain = task_loss(pred, target, "segmentation").item()
    assert task_loss(pred, target, "segmentation", dice_weight=2.0).item() == \
        pytest.approx(plain + 2.0 * soft_dice_loss(pred, target).item(), rel=1e-6)
    assert task_loss(pred, target, "inpainting", dice_weight=2.0).item() == \
        pytest.approx(task_loss(pred, target, "inpainting").item(), rel=1e-6)

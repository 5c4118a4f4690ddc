from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from monai.losses import DiceLoss

from common.losses import SADiceCELoss, SADiceLoss


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize(("smooth_nr", "smooth_dr"), [(1e-5, 1e-5), (1.0, 1.0)])
def test_equals_monai_batch_dice(include_background, smooth_nr, smooth_dr):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 6, 5, 4, generator=generator)
    labels = torch.randint(0, 4, (3, 1, 6, 5, 4), generator=generator)
    kwargs = dict(
        include_background=include_background, to_onehot_y=True, softmax=True, smooth_nr=smooth_nr, smooth_dr=smooth_dr
    )
    torch.testing.assert_close(SADiceLoss(**kwargs)(logits, labels), DiceLoss(batch=True, **kwargs)(logits, labels))


def test_hand_computed_aggregation():
    # two images of two voxels, one foreground class; image 0 has no foreground
    probabilities = torch.tensor([[[0.5, 0.5]], [[1.0, 0.0]]])
    target = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]]])
    # aggregated: 2 * (1.0) / ((0.5 + 0.5 + 1.0) + 1.0) = 2 / 3
    expected = 1 - 2 * 1.0 / (2.0 + 1.0)
    loss = SADiceLoss(smooth_nr=0.0, smooth_dr=0.0)
    assert loss(probabilities, target).item() == pytest.approx(expected)


def test_batch_argument_rejected():
    with pytest.raises(ValueError, match="batch"):
        SADiceLoss(batch=False)


def test_gradient_of_image_without_foreground():
    # image 0 has no foreground but predicts some; image 1 has a foreground blob
    generator = torch.Generator().manual_seed(1)
    labels = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    labels[1, :, 2:6, 2:6, 2:6] = 1
    logits = torch.randn(2, 2, 8, 8, 8, generator=generator)
    kwargs = dict(include_background=False, to_onehot_y=True, softmax=True)

    gradients = {}
    for name, loss in {"per_image": DiceLoss(batch=False, **kwargs), "sa": SADiceLoss(**kwargs)}.items():
        inputs = logits.clone().requires_grad_(True)
        loss(inputs, labels).backward()
        gradients[name] = inputs.grad.flatten(1).abs().mean(dim=1)  # mean |gradient| of image 0 and image 1

    # per-image Dice of an empty image is smooth_nr / (sum p + smooth_dr), saturated near 0: the gradient is flat
    assert gradients["per_image"][0] < 1e-6 * gradients["per_image"][1]
    # aggregated over the batch, the empty image's false positives are penalised about as strongly as image 1's errors
    assert gradients["sa"][0] > 0.1 * gradients["sa"][1]


def test_float16_sums_do_not_overflow():
    # each class covers ~74k voxels of the batch: above the float16 maximum 65504
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 48, 48, 48, generator=generator)
    labels = torch.randint(0, 3, (2, 1, 48, 48, 48), generator=generator)
    loss = SADiceLoss(to_onehot_y=True, softmax=True)
    torch.testing.assert_close(loss(logits.half(), labels), loss(logits.half().float(), labels))


def test_gradients_finite_for_float16_and_empty_classes():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 6, 6, 6, generator=generator).half().requires_grad_(True)
    labels = torch.zeros(2, 1, 6, 6, 6, dtype=torch.long)  # classes 1 and 2 absent from the whole batch
    value = SADiceLoss(to_onehot_y=True, softmax=True)(logits, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all() and logits.grad.dtype == torch.float16


def test_binary_foreground_dice_is_equation_4():
    # Eq. 4 for a binary task: D_SA = 2 sum p g / (sum p + sum g) over the foreground of the whole batch
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 2, 5, 4, 3, generator=generator)
    labels = torch.randint(0, 2, (2, 1, 5, 4, 3), generator=generator)
    foreground, truth = logits.softmax(1)[:, 1], (labels[:, 0] == 1).float()
    expected = 1 - 2 * (foreground * truth).sum() / (foreground.sum() + truth.sum())
    loss = SADiceLoss(include_background=False, to_onehot_y=True, softmax=True, smooth_nr=0.0, smooth_dr=0.0)
    torch.testing.assert_close(loss(logits, labels), expected)


@pytest.mark.parametrize(("lambda_dice", "lambda_ce"), [(1.0, 1.0), (1.0, 0.5)])
def test_sa_dice_ce_adds_the_voxel_wise_cross_entropy(lambda_dice, lambda_ce):
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 4, 6, 5, 4, generator=generator)
    labels = torch.randint(0, 4, (2, 1, 6, 5, 4), generator=generator)
    common = {"to_onehot_y": True, "softmax": True}
    sa_dice = SADiceLoss(**common)(logits, labels)
    cross_entropy = F.cross_entropy(logits, labels[:, 0])  # mean over every voxel of the batch
    loss = SADiceCELoss(lambda_dice=lambda_dice, lambda_ce=lambda_ce, **common)
    torch.testing.assert_close(
        loss(logits.half(), labels), lambda_dice * sa_dice + lambda_ce * cross_entropy, atol=2e-3, rtol=0
    )
    torch.testing.assert_close(loss(logits, labels), lambda_dice * sa_dice + lambda_ce * cross_entropy)
    with pytest.raises(ValueError, match="batch"):
        SADiceCELoss(batch=False)

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from monai.losses import DiceLoss

from common.handlers import AlphaScheduleHandler
from common.losses import RegionWiseLoss, RWCombinedLoss, RWWeightedCrossEntropyLoss
from common.maps import active_contour_map, boundary_map, rrw_map


def label_batch(shape, num_classes, seed=0, batch=2) -> torch.Tensor:
    """(B, 1, *spatial) labels of axis-aligned boxes, each class present."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((batch, 1, *shape), dtype=np.int64)
    for b in range(batch):
        for c in range(1, num_classes):
            corner = [rng.integers(0, s // 2) for s in shape]
            labels[(b, 0, *[slice(o, o + max(s // 3, 2)) for o, s in zip(corner, shape, strict=True)])] = c
    return torch.from_numpy(labels)


def maps_of(labels: torch.Tensor, num_classes: int, function=rrw_map) -> torch.Tensor:
    return torch.stack([torch.from_numpy(function(lab[0].numpy(), num_classes)) for lab in labels])


def target_of(labels: torch.Tensor, rw_map: torch.Tensor) -> torch.Tensor:
    return torch.cat([labels.float(), rw_map], dim=1)


@pytest.mark.parametrize("shape", [(12, 10), (8, 6, 5)])
def test_rw_loss_closed_form_for_uniform_logits(shape):
    """Zero logits give p = 1/C everywhere, so the loss is mean(Z) / C."""
    labels = label_batch(shape, 4)
    rw_map = maps_of(labels, 4)
    loss = RegionWiseLoss()(torch.zeros(2, 4, *shape), rw_map)
    assert loss.item() == pytest.approx(rw_map.mean().item() / 4, abs=1e-7)


def test_rw_loss_reductions_and_background():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 9, 7)
    rw_map = maps_of(label_batch((9, 7), 3), 3)
    probabilities = torch.softmax(logits, dim=1)
    per_class = (probabilities * rw_map).mean(dim=(2, 3))
    assert RegionWiseLoss()(logits, rw_map).item() == pytest.approx(per_class.mean().item(), abs=1e-7)
    assert RegionWiseLoss(reduction="sum")(logits, rw_map).item() == pytest.approx(per_class.sum().item(), abs=1e-6)
    none = RegionWiseLoss(reduction="none")(logits, rw_map)
    assert none.shape == (2, 3, 1, 1)
    torch.testing.assert_close(none[..., 0, 0], per_class)
    no_background = RegionWiseLoss(include_background=False)(logits, rw_map)
    assert no_background.item() == pytest.approx(per_class[:, 1:].mean().item(), abs=1e-7)
    as_probabilities = RegionWiseLoss(softmax=False)(probabilities, rw_map)
    assert as_probabilities.item() == pytest.approx(per_class.mean().item(), abs=1e-7)
    with pytest.raises(ValueError, match="same shape"):
        RegionWiseLoss()(logits, rw_map[:, :2])


def test_rw_loss_is_minimised_by_the_ground_truth():
    labels = label_batch((16, 16), 4, seed=3)
    rw_map = maps_of(labels, 4)
    perfect = 50.0 * F.one_hot(labels[:, 0], 4).permute(0, 3, 1, 2).float()
    wrong = 50.0 * F.one_hot((labels[:, 0] + 1) % 4, 4).permute(0, 3, 1, 2).float()
    loss = RegionWiseLoss()
    assert loss(perfect, rw_map) < loss(torch.zeros_like(perfect), rw_map) < loss(wrong, rw_map)


def negative_gradient_components(logits: torch.Tensor, rw_map: torch.Tensor) -> torch.Tensor:
    logits = logits.clone().requires_grad_(True)
    RegionWiseLoss(reduction="sum")(logits, rw_map).backward()
    return (logits.grad < 0).sum(dim=1)


@pytest.mark.parametrize("function", [rrw_map, active_contour_map])
@pytest.mark.parametrize("shape", [(20, 18), (10, 9, 8)])
def test_rrw_and_active_contour_give_exactly_one_negative_gradient_per_voxel(function, shape):
    torch.manual_seed(1)
    labels = label_batch(shape, 5, seed=2)
    counts = negative_gradient_components(torch.randn(2, 5, *shape) * 3, maps_of(labels, 5, function))
    assert torch.all(counts == 1)


def test_rw_boundary_with_more_than_two_classes_gives_several_negative_components():
    torch.manual_seed(1)
    labels = label_batch((24, 24), 4, seed=2)
    counts = negative_gradient_components(torch.randn(2, 4, 24, 24) * 3, maps_of(labels, 4, boundary_map))
    assert (counts > 1).float().mean() > 0.2


def test_weighted_cross_entropy_hand_computed():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 6, 5)
    labels = label_batch((6, 5), 3, seed=4)
    rw_map = maps_of(labels, 3)
    log_p = torch.log_softmax(logits, dim=1)
    expected = 0.0
    for b in range(2):
        for i in range(6):
            for j in range(5):
                y = labels[b, 0, i, j]
                expected += -log_p[b, y, i, j] * abs(rw_map[b, y, i, j])
    expected /= 2 * 6 * 5
    loss = RWWeightedCrossEntropyLoss()(logits, target_of(labels, rw_map))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert RWWeightedCrossEntropyLoss(reduction="none")(logits, target_of(labels, rw_map)).shape == (2, 1, 6, 5)
    with pytest.raises(ValueError, match=r"\(B, 1 \+ C, \*spatial\)"):
        RWWeightedCrossEntropyLoss()(logits, rw_map)


def test_combined_loss_schedules_against_monai_dice_and_torch_ce():
    torch.manual_seed(3)
    logits = torch.randn(2, 4, 10, 8, 6)
    labels = label_batch((10, 8, 6), 4, seed=5)
    rw_map = maps_of(labels, 4, boundary_map)
    target = target_of(labels, rw_map)
    dice = DiceLoss(to_onehot_y=True, softmax=True)(logits, labels)
    ce = F.cross_entropy(logits, labels[:, 0])
    rw = RegionWiseLoss()(logits, rw_map)

    assert RWCombinedLoss("dice", "equal")(logits, target).item() == pytest.approx((dice + rw).item(), abs=1e-6)
    assert RWCombinedLoss("ce", "equal")(logits, target).item() == pytest.approx((ce + rw).item(), abs=1e-6)
    gradual = RWCombinedLoss("dice", "gradual")
    assert gradual(logits, target).item() == pytest.approx(dice.item(), abs=1e-6)  # alpha = 1 before training
    for epoch_index, alpha in [(0, 1.0), (30, 0.7), (99, 0.01), (250, 0.01)]:
        assert gradual.set_epoch(epoch_index) == pytest.approx(alpha)
        expected = alpha * dice + (1 - alpha) * rw
        assert gradual(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)
    assert RWCombinedLoss(schedule="equal").set_epoch(50) == 1.0
    with pytest.raises(ValueError, match="region"):
        RWCombinedLoss("focal")
    with pytest.raises(ValueError, match="reduction"):
        RWCombinedLoss(reduction="none")


def test_alpha_schedule_handler_updates_the_loss_each_epoch():
    loss = RWCombinedLoss("ce", "gradual", alpha_step=0.25)
    seen = []
    engine = Engine(lambda engine, batch: seen.append(loss.alpha))
    AlphaScheduleHandler(loss).attach(engine)
    engine.run([0, 1], max_epochs=5)
    assert seen == [1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25, 0.01, 0.01]
    with pytest.raises(TypeError, match="set_epoch"):
        AlphaScheduleHandler(RegionWiseLoss())


def all_losses():
    return [
        ("rw", RegionWiseLoss(), False),
        ("rw_no_bg", RegionWiseLoss(include_background=False), False),
        ("wce", RWWeightedCrossEntropyLoss(), True),
        ("dice_rw", RWCombinedLoss("dice", "equal"), True),
        ("ce_rw", RWCombinedLoss("ce", "gradual"), True),
    ]


@pytest.mark.parametrize(("name", "loss", "needs_label"), all_losses(), ids=[n for n, *_ in all_losses()])
@pytest.mark.parametrize("case", ["absent_classes", "background_only", "float16_extreme"])
def test_gradients_finite_in_edge_cases(name, loss, needs_label, case):
    shape = (12, 10, 4)
    labels = label_batch(shape, 3, seed=6)
    if case == "absent_classes":
        labels[labels == 2] = 0
    if case == "background_only":
        labels.zero_()
    scale = 1e4 if case == "float16_extreme" else 1.0
    dtype = torch.float16 if case == "float16_extreme" else torch.float32
    torch.manual_seed(4)
    logits = (torch.randn(2, 3, *shape) * scale).to(dtype).requires_grad_(True)
    rw_map = maps_of(labels, 3).to(dtype)
    target = target_of(labels, rw_map).to(dtype) if needs_label else rw_map
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and value.dtype == torch.float32
    assert torch.isfinite(logits.grad).all() and logits.grad.dtype == dtype

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.losses import DeepSupervisionLoss, DiceLoss

from common.losses import RegionWiseLoss, RWCombinedLoss, RWWeightedCrossEntropyLoss
from common.maps import active_contour_map, boundary_map, rrw_map
from common.training.alpha_schedule import AlphaScheduleHandler


def label_batch(shape, num_classes, seed=0, batch=2) -> torch.Tensor:
    """(B, 1, *spatial) labels of axis-aligned boxes, each class present."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((batch, 1, *shape), dtype=np.int64)
    for b in range(batch):
        for c in range(1, num_classes):
            corner = [rng.integers(0, s // 2) for s in shape]
            labels[(b, 0, *[slice(o, o + max(s // 3, 2)) for o, s in zip(corner, shape, strict=True)])] = c
    return torch.from_numpy(labels)


def maps_of(labels: torch.Tensor, num_classes: int, function=rrw_map, **kwargs) -> torch.Tensor:
    """Dense maps ``(B, C, *spatial)``, or compact ``(B, 1, *spatial)`` with ``compact=True``."""
    maps = [torch.from_numpy(function(lab[0].numpy(), num_classes, **kwargs)) for lab in labels]
    return torch.stack(maps)[:, None] if kwargs.get("compact") else torch.stack(maps)


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


def test_alpha_schedule_follows_250_iteration_epochs_and_resumes():
    """nnU-Net epochs: ``epoch_length`` iterations whatever the data size; a resumed run gets the same alpha."""
    loss = RWCombinedLoss("dice", "gradual", alpha_step=0.25)
    seen = []
    engine = Engine(lambda engine, batch: seen.append((engine.state.epoch, loss.alpha)))
    AlphaScheduleHandler(DeepSupervisionLoss(loss)).attach(engine)  # found through the wrapper's .loss
    engine.run([0, 1], max_epochs=2, epoch_length=5)  # 5 iterations per epoch over 2 items
    assert seen == [(1, 1.0)] * 5 + [(2, 0.75)] * 5
    engine.run([0, 1], max_epochs=4, epoch_length=5)  # resumes at epoch 3
    assert seen[10:] == [(3, 0.5)] * 5 + [(4, 0.25)] * 5


def test_alpha_schedule_with_its_own_iteration_clock():
    loss = RWCombinedLoss("ce", "gradual", alpha_step=0.5)
    seen = []
    engine = Engine(lambda engine, batch: seen.append(loss.alpha))
    AlphaScheduleHandler(loss, iterations_per_epoch=3).attach(engine)
    engine.run(list(range(4)), max_epochs=2)  # 8 iterations, data epochs of 4, schedule epochs of 3
    assert seen == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.01, 0.01]
    with pytest.raises(ValueError, match="iterations_per_epoch"):
        AlphaScheduleHandler(loss, iterations_per_epoch=0)


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


def compact_and_dense_targets(labels, num_classes, class_weights=None, function=rrw_map):
    """(dense map, dense [label, map], compact [label, own value]) for one label batch."""
    dense_kwargs = {"class_weights": class_weights} if class_weights is not None else {}
    dense = maps_of(labels, num_classes, function, **dense_kwargs)
    compact = maps_of(labels, num_classes, function, compact=True)
    return dense, target_of(labels, dense), target_of(labels, compact)


def value_and_gradient(loss, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.clone().requires_grad_(True)
    value = loss(logits, target)
    value.sum().backward()
    return value.detach(), logits.grad


LABEL_CASES = {
    "all_present": lambda labels, c: labels,
    "absent_class": lambda labels, c: labels.masked_fill(labels == c - 1, 0),
    "background_only": lambda labels, c: torch.zeros_like(labels),
    "foreground_only": lambda labels, c: torch.ones_like(labels),
}


def dense_and_compact_losses(class_weights):
    """(dense loss, compact loss, whether the dense loss takes [label, map] rather than the map) for every form."""
    cases = []
    for reduction in ("mean", "sum", "none"):
        for include_background in (True, False):
            options = {"reduction": reduction, "include_background": include_background}
            compact = RegionWiseLoss(compact=True, class_weights=class_weights, **options)
            cases.append((RegionWiseLoss(**options), compact, False))
    for region in ("dice", "ce"):
        for schedule in ("equal", "gradual"):
            dense_loss = RWCombinedLoss(region, schedule)
            compact_loss = RWCombinedLoss(region, schedule, compact=True, class_weights=class_weights)
            dense_loss.set_epoch(40), compact_loss.set_epoch(40)
            cases.append((dense_loss, compact_loss, True))
    cases.append((RWWeightedCrossEntropyLoss(), RWWeightedCrossEntropyLoss(compact=True), True))
    return cases


@pytest.mark.parametrize("shape", [(14, 12), (9, 8, 6)])
@pytest.mark.parametrize("num_classes", [2, 3, 5])
@pytest.mark.parametrize("case", sorted(LABEL_CASES))
@pytest.mark.parametrize("weighted", [False, True])
def test_compact_targets_give_the_dense_values_and_gradients(shape, num_classes, case, weighted):
    labels = LABEL_CASES[case](label_batch(shape, num_classes, seed=num_classes), num_classes)
    rng = np.random.default_rng(num_classes)
    class_weights = rng.uniform(0.2, 4.0, num_classes).round(3).tolist() if weighted else None
    dense, dense_target, compact_target = compact_and_dense_targets(labels, num_classes, class_weights)
    torch.manual_seed(0)
    logits = torch.randn(2, num_classes, *shape) * 3
    for dense_loss, compact_loss, takes_label in dense_and_compact_losses(class_weights):
        dense_value, dense_gradient = value_and_gradient(dense_loss, logits, dense_target if takes_label else dense)
        compact_value, compact_gradient = value_and_gradient(compact_loss, logits, compact_target)
        torch.testing.assert_close(compact_value, dense_value, atol=1e-6, rtol=0)
        torch.testing.assert_close(compact_gradient, dense_gradient, atol=1e-6, rtol=0)
    probabilities = torch.softmax(logits, dim=1)  # softmax=False: the probabilities' sum enters the compact form
    torch.testing.assert_close(
        RegionWiseLoss(softmax=False, compact=True, class_weights=class_weights)(probabilities, compact_target),
        RegionWiseLoss(softmax=False)(probabilities, dense),
        atol=1e-6,
        rtol=0,
    )


def negative_component_counts(loss, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    _, gradient = value_and_gradient(loss, logits, target)
    return (gradient < 0).sum(dim=1)


@pytest.mark.parametrize("weights", [(1.0, 3.0, 1.0, 1.0), (0.5, 1.0, 2.0, 4.0), "random"])
@pytest.mark.parametrize("shape", [(24, 20), (12, 10, 8)])
def test_class_weighted_rrw_keeps_exactly_one_negative_gradient_component(weights, shape):
    if weights == "random":
        weights = np.random.default_rng(7).uniform(0.1, 10.0, 4).tolist()
    labels = label_batch(shape, 4, seed=8)
    dense, _, compact_target = compact_and_dense_targets(labels, 4, weights)
    torch.manual_seed(5)
    logits = torch.randn(2, 4, *shape) * 2  # not saturated: float32 gradients of p_y = 1 - 1e-8 round to 0
    dense_counts = negative_component_counts(RegionWiseLoss(reduction="sum"), logits, dense)
    compact_loss = RegionWiseLoss(reduction="sum", compact=True, class_weights=weights)
    compact_counts = negative_component_counts(compact_loss, logits, compact_target)
    assert torch.all(dense_counts == 1) and torch.all(compact_counts == 1)
    # the negative component is the true class's
    _, gradient = value_and_gradient(compact_loss, logits, compact_target)
    assert torch.equal(gradient.argmin(dim=1, keepdim=True), labels)


def test_scaling_whole_channels_instead_breaks_rectification():
    """The wrong reading of Sec. 3.3 (channel k times w_k) gives several negative components at many voxels."""
    labels = label_batch((24, 20), 4, seed=8)
    weights = torch.tensor([1.0, 3.0, 1.0, 1.0]).view(1, 4, 1, 1)
    channel_scaled = torch.where(maps_of(labels, 4) > 0, maps_of(labels, 4) * weights, maps_of(labels, 4))
    torch.manual_seed(5)
    counts = negative_component_counts(RegionWiseLoss(reduction="sum"), torch.randn(2, 4, 24, 20) * 4, channel_scaled)
    assert (counts > 1).float().mean() > 0.2


def test_target_layout_and_class_weight_errors():
    labels = label_batch((8, 6), 3)
    dense, dense_target, compact_target = compact_and_dense_targets(labels, 3)
    logits = torch.randn(2, 3, 8, 6)
    with pytest.raises(ValueError, match=r"dense RRW map already holds them"):
        RegionWiseLoss(class_weights=(1.0, 2.0, 1.0))
    with pytest.raises(ValueError, match="dense RRW map already holds them"):
        RWCombinedLoss(class_weights=(1.0, 2.0, 1.0))
    with pytest.raises(ValueError, match="positive and finite"):
        RegionWiseLoss(compact=True, class_weights=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="class_weights has 2 values but the input has 3"):
        RegionWiseLoss(compact=True, class_weights=(1.0, 2.0))(logits, compact_target)
    with pytest.raises(ValueError, match=r"compact target must have shape \(B, 2"):
        RegionWiseLoss(compact=True)(logits, dense)
    with pytest.raises(ValueError, match=r"compact target must have shape \(B, 2"):
        RWWeightedCrossEntropyLoss(compact=True)(logits, dense_target)
    with pytest.raises(ValueError, match="compact targets need compact=True"):
        RWCombinedLoss()(logits, compact_target)
    with pytest.raises(ValueError, match="compact=True"):
        RegionWiseLoss()(logits, compact_target)
    # a dense 2-class map has the compact layout's channel count: channel 0 is then not a label
    two_class = maps_of(label_batch((8, 6), 2), 2)
    with pytest.raises(ValueError, match="channel 0 must hold the label"):
        RegionWiseLoss(compact=True)(torch.randn(2, 2, 8, 6), two_class)
    with pytest.raises(ValueError, match="batch and spatial sizes"):
        RegionWiseLoss(compact=True)(logits, compact_target[..., :4])


@pytest.mark.parametrize("map_type", ["boundary", "rrw", "rrw_compact"])
@pytest.mark.parametrize("region", ["dice", "ce"])
@pytest.mark.parametrize("schedule", ["equal", "gradual"])
def test_sec_4_4_strategies_from_config(map_type, region, schedule):
    """Dice or CE, equal or gradual, with RW-Boundary or RRW (dense or compact) maps, built from `_target_`."""
    compact = map_type == "rrw_compact"
    config = {
        "loss": {"_target_": "common.losses.RWCombinedLoss", "region": region, "schedule": schedule, "compact": compact}
    }
    loss = ConfigParser(config).get_parsed_content("loss")
    labels = label_batch((10, 8, 6), 4, seed=5)
    function = boundary_map if map_type == "boundary" else rrw_map
    dense = maps_of(labels, 4, function)
    target = target_of(labels, maps_of(labels, 4, function, compact=True) if compact else dense)
    torch.manual_seed(3)
    logits = torch.randn(2, 4, 10, 8, 6)
    region_value = (
        DiceLoss(to_onehot_y=True, softmax=True)(logits, labels)
        if region == "dice"
        else F.cross_entropy(logits, labels[:, 0])
    )
    rw_value = (torch.softmax(logits, dim=1) * dense).mean()
    alpha = loss.set_epoch(30)
    expected = region_value + rw_value if schedule == "equal" else 0.7 * region_value + 0.3 * rw_value
    assert alpha == pytest.approx(1.0 if schedule == "equal" else 0.7)
    assert loss(logits, target).item() == pytest.approx(expected.item(), abs=1e-6)


def test_compact_targets_under_deep_supervision_with_downsampled_heads():
    """MONAI's DeepSupervisionLoss resizes the target (nearest): a compact map stays paired with its label."""
    labels = label_batch((16, 12, 8), 4, seed=9)
    _, dense_target, compact_target = compact_and_dense_targets(labels, 4, (1.0, 2.0, 0.5, 3.0))
    torch.manual_seed(2)
    heads = [torch.randn(2, 4, 16 // 2**k, 12 // 2**k, 8 // 2**k) for k in range(3)]
    dense = DeepSupervisionLoss(RWCombinedLoss("ce", "equal"))
    compact = DeepSupervisionLoss(RWCombinedLoss("ce", "equal", compact=True, class_weights=(1.0, 2.0, 0.5, 3.0)))
    assert compact(heads, compact_target).item() == pytest.approx(dense(heads, dense_target).item(), abs=1e-6)

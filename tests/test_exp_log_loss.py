from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from common.losses import ExpLogLoss, label_weights_from_datalist, label_weights_from_frequencies


def _random_case(num_classes: int = 4, shape=(2, 6, 5, 4), seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], num_classes, *shape[1:], generator=generator)
    labels = torch.randint(0, num_classes, (shape[0], 1, *shape[1:]), generator=generator)
    return logits, labels


def test_hand_computed_two_voxels():
    # probabilities of classes 0 and 1 at two voxels whose labels are 0 and 1
    probabilities = torch.tensor([[[0.8, 0.4], [0.2, 0.6]]])
    labels = torch.tensor([[[0, 1]]])
    gamma = 0.3
    loss = ExpLogLoss(gamma=gamma, label_weights=[1.0, 3.0], softmax=False, to_onehot_y=True)
    dice_0 = (2 * 0.8 + 1) / (1 + (0.8 + 0.4) + 1)
    dice_1 = (2 * 0.6 + 1) / (1 + (0.2 + 0.6) + 1)
    dice_term = ((-math.log(dice_0)) ** gamma + (-math.log(dice_1)) ** gamma) / 2
    cross_term = (1.0 * (-math.log(0.8)) ** gamma + 3.0 * (-math.log(0.6)) ** gamma) / 2
    expected = 0.8 * dice_term + 0.2 * cross_term
    assert loss(probabilities, labels).item() == pytest.approx(expected, rel=1e-6)


def test_sum_reduction_sums_both_terms():
    probabilities = torch.tensor([[[0.8, 0.4], [0.2, 0.6]]])
    labels = torch.tensor([[[0, 1]]])
    dice = ExpLogLoss(w_dice=1, w_cross=0, softmax=False, to_onehot_y=True)
    cross = ExpLogLoss(w_dice=0, w_cross=1, softmax=False, to_onehot_y=True)
    summed = ExpLogLoss(softmax=False, to_onehot_y=True, reduction="sum")
    # two classes (Dice terms) and two voxels (CE terms): sums are twice the means
    expected = 2 * (0.8 * dice(probabilities, labels) + 0.2 * cross(probabilities, labels))
    assert summed(probabilities, labels).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("one_hot_target", [False, True])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_linear_dice_equals_monai_dice(batch, include_background, one_hot_target):
    logits, labels = _random_case()
    ours = ExpLogLoss(
        w_dice=1,
        w_cross=0,
        gamma=1,
        dice_form="linear",
        to_onehot_y=not one_hot_target,
        batch=batch,
        include_background=include_background,
    )
    monai = DiceLoss(
        to_onehot_y=True,
        softmax=True,
        smooth_nr=1.0,
        smooth_dr=1.0,
        batch=batch,
        include_background=include_background,
    )
    target = F.one_hot(labels[:, 0], 4).movedim(-1, 1).float() if one_hot_target else labels
    torch.testing.assert_close(ours(logits, target), monai(logits, labels))


def test_log_dice_is_mean_negative_log_of_monai_dice():
    logits, labels = _random_case(seed=1)
    per_class_dice = 1 - DiceLoss(to_onehot_y=True, softmax=True, smooth_nr=1.0, smooth_dr=1.0, reduction="none")(
        logits, labels
    )
    ours = ExpLogLoss(w_dice=1, w_cross=0, gamma=1, to_onehot_y=True)
    torch.testing.assert_close(ours(logits, labels), (-torch.log(per_class_dice)).mean())


def test_cross_term_gamma_one_is_weighted_cross_entropy_over_voxels():
    logits, labels = _random_case(seed=2)
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0])
    ours = ExpLogLoss(w_dice=0, w_cross=1, gamma=1, label_weights=weights, to_onehot_y=True)
    # torch's weighted "mean" divides by the sum of weights; the paper divides by the number of voxels
    expected = F.cross_entropy(logits, labels[:, 0], weight=weights, reduction="none").mean()
    torch.testing.assert_close(ours(logits, labels), expected)


def test_cross_term_gamma_is_applied_per_voxel():
    logits, labels = _random_case(seed=3)
    ours = ExpLogLoss(w_dice=0, w_cross=1, gamma=2, to_onehot_y=True)
    expected = (F.cross_entropy(logits, labels[:, 0], reduction="none") ** 2).mean()
    torch.testing.assert_close(ours(logits, labels), expected)


def test_one_hot_target_equals_label_target():
    logits, labels = _random_case(seed=4)
    one_hot = F.one_hot(labels[:, 0], 4).movedim(-1, 1).float()
    with_labels = ExpLogLoss(to_onehot_y=True, label_weights=[1, 2, 3, 4])(logits, labels)
    with_one_hot = ExpLogLoss(label_weights=[1, 2, 3, 4])(logits, one_hot)
    torch.testing.assert_close(with_labels, with_one_hot)


def _gradient(loss: ExpLogLoss, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.clone().requires_grad_(True)
    value = loss(logits, labels)
    value.backward()
    return value, logits.grad


@pytest.mark.parametrize("gamma", [0.3, 1.0, 2.0])
def test_gradients_finite_with_empty_and_missing_classes(gamma):
    logits, labels = _random_case(seed=5)
    labels[labels == 3] = 0  # class 3 absent from the target (empty class)
    logits[:, 2] = -80.0  # class 2 never predicted (probability underflows)
    value, gradient = _gradient(ExpLogLoss(gamma=gamma, to_onehot_y=True), logits, labels)
    assert torch.isfinite(value)
    assert torch.isfinite(gradient).all()
    assert gradient.abs().sum() > 0


def test_perfect_prediction_gives_zero_loss_and_finite_gradient():
    _, labels = _random_case(seed=6)
    labels[labels == 3] = 0
    logits = 200.0 * F.one_hot(labels[:, 0], 4).movedim(-1, 1).float()  # softmax saturates to exactly 0 and 1
    value, gradient = _gradient(ExpLogLoss(gamma=0.3, to_onehot_y=True, w_dice=0.8, w_cross=0.2), logits, labels)
    assert value.item() == 0.0
    assert torch.isfinite(gradient).all()


def test_float16_input():
    logits, labels = _random_case(seed=7)
    value, gradient = _gradient(ExpLogLoss(to_onehot_y=True), logits.half(), labels)
    assert value.dtype == torch.float32
    assert gradient.dtype == torch.float16
    assert torch.isfinite(gradient).all()
    torch.testing.assert_close(value, ExpLogLoss(to_onehot_y=True)(logits.half().float(), labels))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gamma": 0}, "gamma"),
        ({"w_dice": -1}, "w_dice"),
        ({"dice_form": "square"}, "dice_form"),
        ({"reduction": "none"}, "reduction"),
        ({"label_weights": [1.0, 0.0]}, "label_weights"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExpLogLoss(**kwargs)


def test_bad_shapes():
    logits, labels = _random_case()
    with pytest.raises(ValueError, match="to_onehot_y=True"):
        ExpLogLoss()(logits, labels)
    with pytest.raises(ValueError, match="label_weights has 2"):
        ExpLogLoss(to_onehot_y=True, label_weights=[1, 2])(logits, labels)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\], found \[1, 4\]"):
        ExpLogLoss(to_onehot_y=True)(logits, labels + 1)


def test_weights_from_frequencies_formula_and_missing_class():
    weights = label_weights_from_frequencies([6, 3, 1])
    np.testing.assert_allclose(weights, [math.sqrt(10 / 6), math.sqrt(10 / 3), math.sqrt(10)])
    with pytest.warns(UserWarning, match=r"classes \[1\] never occur"):
        weights = label_weights_from_frequencies([6, 0, 4])
    np.testing.assert_allclose(weights, [math.sqrt(10 / 6), math.sqrt(10 / 4), math.sqrt(10 / 4)])
    with pytest.raises(ValueError, match="no class occurs"):
        label_weights_from_frequencies([0, 0])


def _save(array: np.ndarray, path) -> str:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return str(path)


def test_weights_from_datalist_file_and_list(tmp_path):
    first = np.zeros((4, 4, 2), dtype=np.uint8)
    first[0, 0, 0] = 1  # counts: class0 31, class1 1, class2 0
    second = np.full((2, 2, 2), 2, dtype=np.int16)  # class2 8
    items = [
        {"image": "a.nii.gz", "label": _save(first, tmp_path / "l1.nii.gz")},
        {"image": "b.nii.gz", "label": _save(second, tmp_path / "l2.nii.gz")},
    ]
    expected = np.sqrt(40 / np.array([31, 1, 8]))
    np.testing.assert_allclose(label_weights_from_datalist(items, num_classes=3), expected)

    relative = [{"image": "a.nii.gz", "label": "l1.nii.gz"}, {"image": "b.nii.gz", "label": "l2.nii.gz"}]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": relative}))
    np.testing.assert_allclose(label_weights_from_datalist(datalist, num_classes=3), expected)

    with pytest.warns(UserWarning, match=r"classes \[3\] never occur"):
        weights = label_weights_from_datalist(items, num_classes=4)
    assert np.isfinite(weights).all()


def test_weights_from_datalist_bad_files(tmp_path):
    bad_value = _save(np.full((2, 2, 2), 5, dtype=np.uint8), tmp_path / "bad.nii.gz")
    with pytest.raises(ValueError, match=r"bad\.nii\.gz has values in \[5, 5\]"):
        label_weights_from_datalist([{"label": bad_value}], num_classes=3)
    fractional = _save(np.full((2, 2, 2), 0.5, dtype=np.float32), tmp_path / "frac.nii.gz")
    with pytest.raises(ValueError, match=r"frac\.nii\.gz holds non-integer"):
        label_weights_from_datalist([{"label": fractional}], num_classes=3)
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        label_weights_from_datalist([{"label": str(tmp_path / "missing.nii.gz")}], num_classes=3)
    with pytest.raises(ValueError, match="no 'label' entry"):
        label_weights_from_datalist([{"image": "x.nii.gz"}], num_classes=3)
    with pytest.raises(ValueError, match="no items"):
        label_weights_from_datalist([], num_classes=3)

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import FocalLoss as MonaiFocalLoss

from common.losses import FocalLoss


def closed_form(logits: np.ndarray, labels: np.ndarray, gamma: float) -> float:
    """-mean over voxels of (1 - p_y)^gamma log p_y, in float64 (Lin et al., the RW authors' FocalLoss)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p_true = np.take_along_axis(log_p, labels, axis=1)
    return float(-np.mean((1.0 - np.exp(log_p_true)) ** gamma * log_p_true))


@pytest.mark.parametrize("shape", [(7, 6), (5, 4, 3)])
@pytest.mark.parametrize("num_classes", [2, 4])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_focal_loss_matches_the_closed_form_and_is_c_times_monai(shape, num_classes, gamma):
    rng = np.random.default_rng(num_classes)
    logits = rng.normal(scale=2.0, size=(2, num_classes, *shape))
    labels = rng.integers(0, num_classes, size=(2, 1, *shape))
    logits_t, labels_t = torch.tensor(logits, dtype=torch.float32), torch.tensor(labels)
    value = FocalLoss(gamma=gamma)(logits_t, labels_t)
    assert value.item() == pytest.approx(closed_form(logits, labels, gamma), rel=1e-5)
    monai = MonaiFocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma)(logits_t, labels_t)
    assert value.item() == pytest.approx(num_classes * monai.item(), rel=1e-5)


def test_focal_loss_options_and_errors():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(2, 3, 5, 4)), dtype=torch.float32)
    labels = torch.tensor(rng.integers(0, 3, size=(2, 1, 5, 4)))
    per_voxel = FocalLoss(reduction="none")(logits, labels)
    assert per_voxel.shape == (2, 1, 5, 4)
    assert FocalLoss(reduction="sum")(logits, labels).item() == pytest.approx(per_voxel.sum().item(), rel=1e-6)
    one_hot = torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(FocalLoss(to_onehot_y=False)(logits, one_hot), per_voxel.mean())
    probabilities = torch.softmax(logits, dim=1)
    torch.testing.assert_close(FocalLoss(softmax=False)(probabilities, labels), per_voxel.mean())
    no_background = FocalLoss(include_background=False, reduction="none")(logits, labels)
    torch.testing.assert_close(no_background, torch.where(labels == 0, 0.0, per_voxel))
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match=r"target must have shape \(B, 1, \*spatial\)"):
        FocalLoss()(logits, one_hot)

"""The run-time loss selection of common.methods (``method`` in the family configs).

Delete this file together with common/methods.py once every bundle's train.yaml names its loss.
"""

from __future__ import annotations

import pytest
import torch

from common.methods import (
    EXP_LOG_METHODS,
    RW_METHODS,
    SA_DICE_METHODS,
    exp_log_loss,
    rw_loss,
    rw_map_type,
    rw_target_key,
    sa_dice_loss,
)
from common.transforms import RWMapd


def rw_batch(num_classes: int = 3) -> dict[str, torch.Tensor]:
    label = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    label[:, :, 4:10, 4:10] = 1
    label[:, :, 6:8, 6:8] = 2
    maps = {
        map_type: torch.stack(
            [RWMapd("label", num_classes, map_type)({"label": item})["rw_map"] for item in label.float()]
        )
        for map_type in ("rrw", "boundary")
    }
    return {"label": label, **{f"rw_map_{name}": value for name, value in maps.items()}}


@pytest.mark.parametrize("method", sorted(RW_METHODS))
def test_every_rw_method_trains_on_its_target(method):
    batch = rw_batch()
    rw_map = batch[f"rw_map_{rw_map_type(method)}"]
    targets = {"label": batch["label"], "rw_map": rw_map, "target": torch.cat([batch["label"].float(), rw_map], 1)}
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    loss = rw_loss(method)(logits, targets[rw_target_key(method)])
    loss.backward()
    assert torch.isfinite(loss) and logits.grad.abs().sum() > 0


def test_rw_methods_pick_the_paper_maps_and_reject_unknown_names():
    assert [rw_map_type(method) for method in ("rw", "boundary", "rrw_ce")] == ["rrw", "boundary", "rrw"]
    assert hasattr(rw_loss("boundary"), "set_epoch")  # the gradual alpha schedule
    with pytest.raises(ValueError, match="unknown RW-paper method 'rrw'"):
        rw_loss("rrw")


@pytest.mark.parametrize("method", EXP_LOG_METHODS)
def test_every_exp_log_method_is_the_papers_form(method):
    loss = exp_log_loss(method, gamma=0.3, label_weights=[1.0, 2.0, 3.0])
    expected = {
        "exp_log": (0.8, 0.2, 0.3, "log"),
        "log_dice": (1.0, 0.0, 1.0, "log"),
        "linear_dice": (1.0, 0.0, 1.0, "linear"),
        "weighted_ce": (0.0, 1.0, 1.0, "log"),
    }[method]
    assert (loss.w_dice, loss.w_cross, loss.gamma, loss.dice_form) == expected
    logits = torch.randn(1, 3, 8, 8, 8, requires_grad=True)
    value = loss(logits, torch.randint(0, 3, (1, 1, 8, 8, 8)))
    value.backward()
    assert torch.isfinite(value) and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("method", SA_DICE_METHODS)
def test_sa_dice_methods_weight_the_resolutions(method):
    loss = sa_dice_loss(method)
    expected = {
        "sa_dice": [1.0, 0.0, 0.0],
        "sa_dice_wmla": [1.0, 0.1, 0.01],
        "sa_dice_wmla_trainable": [1.0, 0.1, 0.01],
    }
    torch.testing.assert_close(loss.alpha.detach(), torch.tensor(expected[method]))
    assert bool(list(loss.parameters())) == (method == "sa_dice_wmla_trainable")

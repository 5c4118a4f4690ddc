from __future__ import annotations

import pytest
import torch
from monai.losses import DeepSupervisionLoss, DiceLoss

from common.losses import ExpLogLoss, MultiResolutionLoss


def _outputs(seed: int = 0, channels: int = 3, size: int = 16):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, channels, size // 2**k, size // 2**k, generator=generator) for k in range(3)]


def _labels(seed: int = 0, channels: int = 3, size: int = 16):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, channels, (2, 1, size, size), generator=generator)


def test_weighted_sum_against_strided_labels():
    outputs, labels = _outputs(), _labels()
    base = DiceLoss(to_onehot_y=True, softmax=True)
    loss = MultiResolutionLoss(base, alpha=(1.0, 0.1, 0.01))
    # nearest-exact downsampling by 2**k picks the voxel at index (i + 0.5) * 2**k
    expected = sum(
        alpha * base(output, labels[..., 2**k // 2 :: 2**k, 2**k // 2 :: 2**k].float())
        for k, (alpha, output) in enumerate(zip((1.0, 0.1, 0.01), outputs, strict=True))
    )
    torch.testing.assert_close(loss(outputs, labels), expected)
    torch.testing.assert_close(loss(tuple(outputs), labels), expected)


def test_fixed_alpha_matches_monai_deep_supervision():
    outputs, labels = _outputs(seed=1), _labels(seed=1).float()
    base = ExpLogLoss(to_onehot_y=True)
    ours = MultiResolutionLoss(base, alpha=(1.0, 0.5, 0.25))
    monai = DeepSupervisionLoss(base, weights=[1.0, 0.5, 0.25])
    torch.testing.assert_close(ours(outputs, labels), monai(outputs, labels))


def test_single_output_is_plain_loss_and_integer_targets_keep_dtype():
    outputs, labels = _outputs(seed=2), _labels(seed=2)
    base = DiceLoss(to_onehot_y=True, softmax=True)
    loss = MultiResolutionLoss(base)
    torch.testing.assert_close(loss(outputs[0], labels), base(outputs[0], labels))

    class RecordingDice(DiceLoss):
        def forward(self, input, target):
            seen_dtypes.append(target.dtype)
            return super().forward(input, target)

    seen_dtypes = []
    MultiResolutionLoss(RecordingDice(to_onehot_y=True, softmax=True))(outputs, labels)
    assert seen_dtypes == [torch.int64] * 3


def test_fewer_outputs_use_leading_alpha_and_too_many_raise():
    outputs, labels = _outputs(seed=3), _labels(seed=3)
    base = DiceLoss(to_onehot_y=True, softmax=True)
    loss = MultiResolutionLoss(base, alpha=(1.0, 0.1, 0.01))
    torch.testing.assert_close(
        loss(outputs[:2], labels), base(outputs[0], labels) + 0.1 * base(outputs[1], labels[..., 1::2, 1::2])
    )
    with pytest.raises(ValueError, match="4 outputs"):
        loss([*outputs, outputs[-1][..., ::2, ::2]], labels)


def test_trainable_alpha_is_a_parameter_and_stays_bounded():
    outputs, labels = _outputs(seed=4), _labels(seed=4)
    loss = MultiResolutionLoss(DiceLoss(to_onehot_y=True, softmax=True), trainable=True, min_alpha=0.001, max_alpha=1)
    torch.testing.assert_close(loss.alpha, torch.tensor([1.0, 0.1, 0.01]))
    parameters = list(loss.parameters())
    assert len(parameters) == 1 and parameters[0].shape == (2,)
    loss(outputs, labels).backward()
    assert torch.isfinite(parameters[0].grad).all() and parameters[0].grad.abs().min() > 0
    optimizer = torch.optim.SGD(loss.parameters(), lr=1e4)  # huge steps: the sigmoid must still bound alpha
    for _ in range(5):
        optimizer.step()
        optimizer.zero_grad()
        loss(outputs, labels).backward()
    alpha = loss.alpha.detach()
    assert alpha[0] == 1.0
    assert torch.all(alpha[1:] >= 0.001) and torch.all(alpha[1:] <= 1.0)
    assert torch.all(alpha[1:] < torch.tensor([0.1, 0.01]))  # minimising L lowers the coarse weights


def test_fixed_alpha_is_a_buffer():
    loss = MultiResolutionLoss(DiceLoss(), alpha=(1.0, 0.2))
    assert list(loss.parameters()) == []
    torch.testing.assert_close(loss.state_dict()["fixed_alpha"], torch.tensor([1.0, 0.2]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": (0.5, 0.1)}, "alpha_1 = 1"),
        ({"alpha": ()}, "alpha_1 = 1"),
        ({"alpha": (1.0, -0.1)}, ">= 0"),
        ({"alpha": (1.0, 1.5), "trainable": True}, "must lie in"),
        ({"trainable": True, "min_alpha": 1.0, "max_alpha": 0.5}, "min_alpha < max_alpha"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiResolutionLoss(DiceLoss(), **kwargs)


def test_float16_outputs_give_finite_gradients():
    outputs = [output.half().requires_grad_(True) for output in _outputs(seed=5)]
    labels = _labels(seed=5)
    labels[labels == 2] = 0  # class 2 absent
    loss = MultiResolutionLoss(ExpLogLoss(to_onehot_y=True), trainable=True)
    value = loss(outputs, labels)
    value.backward()
    assert torch.isfinite(value)
    assert all(output.grad.dtype == torch.float16 and torch.isfinite(output.grad).all() for output in outputs)

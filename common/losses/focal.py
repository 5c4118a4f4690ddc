"""Focal loss as the RW paper's baseline: the original form, summed over classes and averaged over voxels.

Lin et al.'s focal loss (no alpha) is ``FL = -mean_i (1 - p_y(i))^gamma log p_y(i)`` for the true class ``y(i)``;
the RW authors' code (``FocalLoss`` in their nnU-Net ``rwexp_loss.py``) computes exactly this, with gamma 2. MONAI's
``FocalLoss(use_softmax=True, reduction="mean")`` averages over the class channels as well, so it returns this
value divided by the number of classes ``C`` (and its gradients are ``C`` times smaller, which with Adam changes
little but is not the baseline the paper trained).
"""

from __future__ import annotations

import torch
from monai.networks import one_hot
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

__all__ = ["FocalLoss"]


class FocalLoss(_Loss):
    """Original focal loss ``-mean over voxels of sum over classes y_c (1 - p_c)^gamma log p_c``.

    Args:
        gamma: focusing parameter (2 in the RW paper, after Lin et al.).
        include_background: if False, the voxels' class-0 terms are left out (those voxels then contribute 0).
        to_onehot_y: the target holds class indices ``(B, 1, *spatial)``; otherwise a one-hot (or soft)
            ``(B, C, *spatial)`` target.
        softmax: apply a softmax to ``input``; False when ``input`` holds probabilities.
        reduction: ``"mean"`` over batch and voxels, ``"sum"``, or ``"none"`` (shape ``(B, 1, *spatial)``).

    Raises:
        ValueError: on a negative gamma or an unknown reduction.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        include_background: bool = True,
        to_onehot_y: bool = True,
        softmax: bool = True,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if gamma < 0:
            raise ValueError(f"gamma must be non-negative, got {gamma}.")
        self.gamma = gamma
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.softmax = softmax

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            input: logits (or probabilities when ``softmax=False``), shape ``(B, C, *spatial)``.
            target: class indices ``(B, 1, *spatial)`` with ``to_onehot_y=True``, else ``(B, C, *spatial)``.

        Raises:
            ValueError: when the target's shape does not fit ``input``.
        """
        num_classes = input.shape[1]
        expected_channels = 1 if self.to_onehot_y else num_classes
        if (
            target.shape[0] != input.shape[0]
            or target.shape[1] != expected_channels
            or target.shape[2:] != input.shape[2:]
        ):
            raise ValueError(
                f"target must have shape (B, {expected_channels}, *spatial) matching input {tuple(input.shape)} "
                f"(to_onehot_y={self.to_onehot_y}), got {tuple(target.shape)}."
            )
        logits = input.float()
        log_p = (
            torch.log_softmax(logits, dim=1)
            if self.softmax
            else logits.clamp_min(torch.finfo(torch.float32).tiny).log()
        )
        truth = one_hot(target, num_classes) if self.to_onehot_y else target.float()
        per_class = -((1.0 - log_p.exp()) ** self.gamma) * log_p * truth
        if not self.include_background:
            per_class = per_class[:, 1:]
        per_voxel = per_class.sum(dim=1, keepdim=True)
        if self.reduction == LossReduction.MEAN.value:
            return per_voxel.mean()
        if self.reduction == LossReduction.SUM.value:
            return per_voxel.sum()
        return per_voxel

"""Stochastic aggregated Dice (SA Dice) loss of Nguyen et al., alone or with the voxel-wise cross-entropy term."""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceCELoss, DiceLoss

__all__ = ["SADiceCELoss", "SADiceLoss"]


class SADiceLoss(DiceLoss):
    """SA Dice: each class's Dice over the whole mini-batch aggregated into one image, averaged over classes.

    This is MONAI's ``DiceLoss(batch=True)`` (the sums of ``p * g``, ``p`` and ``g`` run over the batch and the
    voxels together), kept as a named class so that configs say which method they use and cannot switch the
    aggregation off. With per-image Dice (``batch=False``) an image without any target voxel of a class has
    ``Dice = smooth_nr / (sum p + smooth_dr)``, which is near 1 and nearly flat once ``sum p`` exceeds the
    smoothing: its foreground prediction gets almost no gradient. Aggregated over the batch, the false positives of
    that image enter the class's denominator next to the other images' true positives and are penalised.

    For a binary task the paper's Eq. 4 is the foreground Dice alone: ``include_background=False`` with two softmax
    channels. Every argument of ``DiceLoss`` except ``batch`` is accepted (``include_background``, ``to_onehot_y``,
    ``softmax``, ``smooth_nr``, ``smooth_dr``, ``reduction``, ...). Unlike ``DiceLoss``, the input is cast to
    float32 first: sums over a whole float16 batch overflow (65504) already at a few 32^3 volumes.
    """

    def __init__(self, **dice_kwargs: Any) -> None:
        """Configure the loss.

        Args:
            dice_kwargs: keyword arguments of ``monai.losses.DiceLoss`` other than ``batch``.

        Raises:
            ValueError: when ``batch`` is given.
        """
        if "batch" in dice_kwargs:
            raise ValueError("SADiceLoss always aggregates over the batch; do not pass `batch`.")
        super().__init__(batch=True, **dice_kwargs)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Batch-aggregated Dice loss of ``input`` (B, C, *spatial), computed in float32; see ``DiceLoss.forward``."""
        return super().forward(input.float(), target)


class SADiceCELoss(DiceCELoss):
    """SA Dice plus the voxel-wise cross-entropy term: ``lambda_dice * SA-Dice + lambda_ce * CE``.

    The paper's best BraTS 2017 configuration combines SA Dice (with WMLA and gradient clipping) with "voxel-wise
    cross entropy components"; it gives no weight for them, so both default to 1 (MONAI's ``DiceCELoss``). This is
    MONAI's ``DiceCELoss(batch=True)``: the Dice part is :class:`SADiceLoss`, the cross-entropy the mean over every
    voxel of the batch. Every argument of ``DiceCELoss`` except ``batch`` is accepted; the input is cast to float32
    first, as in :class:`SADiceLoss`.
    """

    def __init__(self, **dice_ce_kwargs: Any) -> None:
        """Configure the loss.

        Args:
            dice_ce_kwargs: keyword arguments of ``monai.losses.DiceCELoss`` other than ``batch`` (``lambda_dice``,
                ``lambda_ce``, ``include_background``, ``to_onehot_y``, ``softmax``, ...).

        Raises:
            ValueError: when ``batch`` is given.
        """
        if "batch" in dice_ce_kwargs:
            raise ValueError("SADiceCELoss always aggregates the Dice over the batch; do not pass `batch`.")
        super().__init__(batch=True, **dice_ce_kwargs)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """SA Dice + cross-entropy of ``input`` (B, C, *spatial) in float32; see ``DiceCELoss.forward``."""
        return super().forward(input.float(), target)

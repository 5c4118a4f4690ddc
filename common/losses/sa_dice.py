"""Stochastic aggregated Dice (SA Dice) loss of Nguyen et al."""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceLoss

__all__ = ["SADiceLoss"]


class SADiceLoss(DiceLoss):
    """SA Dice: each class's Dice over the whole mini-batch aggregated into one image, averaged over classes.

    This is MONAI's ``DiceLoss(batch=True)`` (the sums of ``p * g``, ``p`` and ``g`` run over the batch and the
    voxels together), kept as a named class so that configs say which method they use and cannot switch the
    aggregation off. With per-image Dice (``batch=False``) an image without any target voxel of a class has
    ``Dice = smooth_nr / (sum p + smooth_dr)``, which is near 1 and nearly flat once ``sum p`` exceeds the
    smoothing: its foreground prediction gets almost no gradient. Aggregated over the batch, the false positives of
    that image enter the class's denominator next to the other images' true positives and are penalised.

    Every argument of ``DiceLoss`` except ``batch`` is accepted (``include_background``, ``to_onehot_y``,
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

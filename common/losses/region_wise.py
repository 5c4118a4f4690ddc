"""Region-wise (RW) loss of Valverde & Tohka and the baselines of the RW paper built on RW maps.

The RW loss is ``mean over batch, classes and voxels of softmax(logits) * Z`` for a ground-truth RW map ``Z``
(see :mod:`common.maps`). Losses that need both the integer label and the map take one target tensor of shape
``(B, 1 + C, *spatial)``: channel 0 holds the label, channels ``1..C`` the map. Build it in a pipeline with
``monai.transforms.ConcatItemsd(keys=["label", "rw_map"], name="target", dim=0)``; a single tensor keeps MONAI's
``SupervisedTrainer`` (``loss(pred, target)``) and ``DeepSupervisionLoss`` (nearest resizing of the target) working.

All losses compute in float32 whatever the input dtype, so float16 inputs give finite gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from monai.losses import DiceLoss
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

__all__ = ["RWCombinedLoss", "RWWeightedCrossEntropyLoss", "RegionWiseLoss", "split_label_and_map"]


def split_label_and_map(target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a ``(B, 1 + C, *spatial)`` target into the label ``(B, 1, *spatial)`` (long) and the map ``(B, C, ...)``.

    Raises:
        ValueError: when the target does not have ``1 + num_classes`` channels.
    """
    if target.ndim < 3 or target.shape[1] != num_classes + 1:
        raise ValueError(
            f"target must have shape (B, 1 + C, *spatial) = (B, {num_classes + 1}, ...) with the label in channel 0 "
            f"and the RW map in channels 1..C, got {tuple(target.shape)}."
        )
    return target[:, :1].round().long(), target[:, 1:].float()


def _check_reduction(reduction: str, allowed: tuple[str, ...]) -> str:
    value = LossReduction(reduction).value
    if value not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}.")
    return value


class RegionWiseLoss(_Loss):
    """Region-wise loss: ``mean(softmax(input) * Z)`` over batch, classes and voxels.

    Args:
        include_background: if False, channel 0 is left out of both the prediction and the map (after the softmax).
        softmax: apply a softmax over channels to ``input`` (set False when ``input`` holds probabilities).
        reduction: ``"mean"`` (the paper's loss), ``"sum"`` (sum over batch and classes of the per-image,
            per-class voxel mean) or ``"none"`` (those values, shape ``(B, C, 1, ...)`` as MONAI's ``DiceLoss``).
    """

    def __init__(self, include_background: bool = True, softmax: bool = True, reduction: str = "mean") -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.include_background = include_background
        self.softmax = softmax

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            input: logits (or probabilities when ``softmax=False``), shape ``(B, C, *spatial)``.
            target: RW map of the same shape.

        Raises:
            ValueError: when the shapes differ.
        """
        if input.shape != target.shape:
            raise ValueError(f"input {tuple(input.shape)} and RW map {tuple(target.shape)} must have the same shape.")
        probabilities = torch.softmax(input.float(), dim=1) if self.softmax else input.float()
        rw_map = target.float()
        if not self.include_background:
            probabilities, rw_map = probabilities[:, 1:], rw_map[:, 1:]
        per_class = (probabilities * rw_map).flatten(2).mean(dim=2)
        if self.reduction == LossReduction.MEAN.value:
            return per_class.mean()
        if self.reduction == LossReduction.SUM.value:
            return per_class.sum()
        return per_class.view(*per_class.shape, *([1] * (input.ndim - 2)))


class RWWeightedCrossEntropyLoss(_Loss):
    """Cross entropy weighted voxel-wise by the RW map of the true class: ``mean_i |z_{y(i)}(i)| * CE(i)``.

    With an RRW map the weight of a voxel of class ``c`` is ``d_in_c(i) / max d_in_c``, in ``(0, 1]``.

    Args:
        reduction: ``"mean"`` over batch and voxels, ``"sum"``, or ``"none"`` (shape ``(B, 1, *spatial)``).
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__(reduction=LossReduction(reduction).value)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            input: logits ``(B, C, *spatial)``.
            target: ``(B, 1 + C, *spatial)``, label in channel 0 and RW map in channels ``1..C``.
        """
        label, rw_map = split_label_and_map(target, input.shape[1])
        log_probabilities = torch.log_softmax(input.float(), dim=1)
        weight = rw_map.gather(1, label).abs()
        weighted = -log_probabilities.gather(1, label) * weight
        if self.reduction == LossReduction.MEAN.value:
            return weighted.mean()
        if self.reduction == LossReduction.SUM.value:
            return weighted.sum()
        return weighted


class RWCombinedLoss(_Loss):
    """The RW paper's Boundary-loss baselines: a region loss (Dice or CE) plus an RW loss (RW-Boundary or RRW map).

    - ``schedule="equal"``: ``L = region + RW``.
    - ``schedule="gradual"``: ``L = alpha * region + (1 - alpha) * RW`` with ``alpha = max(1 - e * alpha_step,
      alpha_min)`` at 0-based epoch ``e`` (Kervadec's schedule: 1 down to 0.01 by 0.01 per epoch). Attach
      :class:`common.handlers.AlphaScheduleHandler` to the trainer, or call :meth:`set_epoch`.

    The Dice term is MONAI's ``DiceLoss(softmax=True, to_onehot_y=True)``; the CE term is the voxel-wise mean
    cross entropy. Both use the label in channel 0 of the target.

    Args:
        region: ``"dice"`` or ``"ce"``.
        schedule: ``"equal"`` or ``"gradual"``.
        include_background: whether the Dice and RW terms include channel 0.
        alpha_step: decrease of alpha per epoch (``"gradual"``).
        alpha_min: lower bound of alpha (``"gradual"``).
        reduction: ``"mean"`` or ``"sum"``, applied to both terms.

    Raises:
        ValueError: on an unknown region loss, schedule or reduction, or an alpha schedule outside ``[0, 1]``.
    """

    def __init__(
        self,
        region: str = "dice",
        schedule: str = "gradual",
        include_background: bool = True,
        alpha_step: float = 0.01,
        alpha_min: float = 0.01,
        reduction: str = "mean",
    ) -> None:
        super().__init__(reduction=_check_reduction(reduction, ("mean", "sum")))
        if region not in ("dice", "ce"):
            raise ValueError(f"region must be 'dice' or 'ce', got {region!r}.")
        if schedule not in ("equal", "gradual"):
            raise ValueError(f"schedule must be 'equal' or 'gradual', got {schedule!r}.")
        if not (0.0 <= alpha_min <= 1.0 and alpha_step >= 0.0):
            raise ValueError(f"need 0 <= alpha_min <= 1 and alpha_step >= 0, got {alpha_min}, {alpha_step}.")
        self.region = region
        self.schedule = schedule
        self.include_background = include_background
        self.alpha_step = alpha_step
        self.alpha_min = alpha_min
        self.alpha = 1.0
        self.dice = DiceLoss(
            include_background=include_background, to_onehot_y=True, softmax=True, reduction=self.reduction
        )
        self.rw = RegionWiseLoss(include_background=include_background, reduction=self.reduction)

    def set_epoch(self, epoch_index: int) -> float:
        """Set ``alpha`` for a 0-based epoch index (no effect with ``schedule="equal"``) and return it."""
        if self.schedule == "gradual":
            self.alpha = max(1.0 - epoch_index * self.alpha_step, self.alpha_min)
        return self.alpha

    @property
    def weights(self) -> tuple[float, float]:
        """Current weights of the region and RW terms."""
        if self.schedule == "equal":
            return 1.0, 1.0
        return self.alpha, 1.0 - self.alpha

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            input: logits ``(B, C, *spatial)``.
            target: ``(B, 1 + C, *spatial)``, label in channel 0 and RW map in channels ``1..C``.
        """
        label, rw_map = split_label_and_map(target, input.shape[1])
        logits = input.float()
        if self.region == "dice":
            region_loss = self.dice(logits, label)
        else:
            region_loss = F.cross_entropy(logits, label[:, 0], reduction=self.reduction)
        region_weight, rw_weight = self.weights
        return region_weight * region_loss + rw_weight * self.rw(logits, rw_map)

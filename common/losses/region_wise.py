"""Region-wise (RW) loss of Valverde & Tohka and the baselines of the RW paper built on RW maps.

The RW loss is ``mean over batch, classes and voxels of softmax(logits) * Z`` for a ground-truth RW map ``Z``
(see :mod:`common.maps`). Every loss here takes an explicit ``compact`` flag that fixes its target layout:

- ``compact=False`` (dense map): :class:`RegionWiseLoss` takes the map ``(B, C, *spatial)``; the losses that also
  need the label take ``(B, 1 + C, *spatial)``, the label in channel 0 and the map in channels ``1..C``.
- ``compact=True`` (rectified maps only: RRW, active contour): every loss takes ``(B, 2, *spatial)``, the label in
  channel 0 and the compact map (each voxel's own-class value, ``rrw_map(..., compact=True)``) in channel 1. The
  other classes' entries are ``+1``, or ``class_weights[label]`` for a class-weighted RRW map: with compact targets
  the weights are a loss argument, since the compact map cannot hold them. Values and gradients equal the dense
  form's; memory and time no longer grow with the class count in the target.

Voxels without a map (padding, ignored voxels). A voxel whose map is 0 in every channel (dense) or whose compact
value is 0 gives no RW loss, in both forms and whatever its label: ``SpatialPadd``, ``RandRotated``,
``RandZoomd`` and ``RandAffined`` with zero padding write exactly that (label 0, map 0) outside the image, and a
pipeline marks a voxel to ignore by setting its map to 0. A real voxel never looks like this: its other-class
entries are ``+1`` or a positive class weight, and its compact RRW value lies in ``[-1, 0)`` (the active-contour map,
whose own-class value is 0 at every voxel, has no compact form for that reason). Such voxels still count in the
voxel mean, as in the dense form. :class:`RWWeightedCrossEntropyLoss` gives them weight ``|z_y| = 0`` in both forms.
The region terms of :class:`RWCombinedLoss` (Dice, CE) read only the label and therefore see padding as background
(label 0), identically in both forms, as nnU-Net does with its padded segmentation (-1, set to background).

Build the target in a pipeline with ``monai.transforms.ConcatItemsd(keys=["label", "rw_map"], name="target",
dim=0)``; a single tensor keeps MONAI's ``SupervisedTrainer`` (``loss(pred, target)``) and ``DeepSupervisionLoss``
(nearest resizing of the target, which keeps a compact map paired with its label) working.

All losses compute in float32 whatever the input dtype, so float16 inputs give finite gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from monai.losses import DiceLoss
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

__all__ = [
    "RWCombinedLoss",
    "RWWeightedCrossEntropyLoss",
    "RegionWiseLoss",
    "split_compact_target",
    "split_label_and_map",
]


def _label_channel(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Channel 0 of a target as ``(B, 1, *spatial)`` long class indices, checked to be whole and in range."""
    channel = target[:, :1]
    label = channel.round()
    if ((label != channel) | (label < 0) | (label > num_classes - 1)).any():
        raise ValueError(
            f"target channel 0 must hold the label (class indices 0..{num_classes - 1}), found other values; "
            "build the target with ConcatItemsd(keys=[label, rw_map]) and check the loss's compact flag."
        )
    return label.long()


def split_label_and_map(target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a dense ``(B, 1 + C, *spatial)`` target into the label ``(B, 1, *spatial)`` (long) and the map.

    Raises:
        ValueError: when the target does not have ``1 + num_classes`` channels or channel 0 is not a label.
    """
    if target.ndim < 3 or target.shape[1] != num_classes + 1:
        raise ValueError(
            f"target must have shape (B, 1 + C, *spatial) = (B, {num_classes + 1}, ...) with the label in channel 0 "
            f"and the RW map in channels 1..C, got {tuple(target.shape)} (compact targets need compact=True)."
        )
    return _label_channel(target, num_classes), target[:, 1:].float()


def split_compact_target(target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a compact ``(B, 2, *spatial)`` target into the label (long) and the compact map, each ``(B, 1, ...)``.

    Raises:
        ValueError: when the target does not have 2 channels or channel 0 is not a label.
    """
    if target.ndim < 3 or target.shape[1] != 2:
        raise ValueError(
            "compact target must have shape (B, 2, *spatial) with the label in channel 0 and the compact RW map "
            f"in channel 1, got {tuple(target.shape)} (dense maps need compact=False)."
        )
    return _label_channel(target, num_classes), target[:, 1:].float()


def _check_reduction(reduction: str, allowed: tuple[str, ...]) -> str:
    value = LossReduction(reduction).value
    if value not in allowed:
        raise ValueError(f"reduction must be one of {allowed}, got {reduction!r}.")
    return value


def _class_weight_tensor(class_weights: Sequence[float] | None, compact: bool) -> torch.Tensor | None:
    if class_weights is None:
        return None
    if not compact:
        raise ValueError(
            "class_weights apply to compact targets only; a dense RRW map already holds them: "
            "rrw_map(..., class_weights=...) or RWMapd(..., class_weights=...)."
        )
    weights = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
    if not bool(torch.isfinite(weights).all()) or bool((weights <= 0).any()):
        raise ValueError(f"class_weights must be positive and finite, got {weights.tolist()}.")
    return weights


class RegionWiseLoss(_Loss):
    """Region-wise loss: ``mean(softmax(input) * Z)`` over batch, classes and voxels.

    Args:
        include_background: if False, channel 0 is left out of both the prediction and the map (after the softmax).
        softmax: apply a softmax over channels to ``input`` (set False when ``input`` holds probabilities).
        reduction: ``"mean"`` (the paper's loss), ``"sum"`` (sum over batch and classes of the per-image,
            per-class voxel mean) or ``"none"`` (those values, shape ``(B, C, 1, ...)`` as MONAI's ``DiceLoss``).
        compact: the target is ``(B, 2, *spatial)`` = ``[label, compact map]`` of a rectified map instead of the
            dense map ``(B, C, *spatial)`` (see the module docstring).
        class_weights: with ``compact=True``, the value of the other classes' entries at the voxels of each class
            (class-weighted RRW); None for ``+1``. Dense maps hold their weights, so this must be None for them.

    Raises:
        ValueError: on an unknown reduction, or invalid class weights or class weights with a dense map.
    """

    def __init__(
        self,
        include_background: bool = True,
        softmax: bool = True,
        reduction: str = "mean",
        compact: bool = False,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.include_background = include_background
        self.softmax = softmax
        self.compact = compact
        self.class_weights = _class_weight_tensor(class_weights, compact)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            input: logits (or probabilities when ``softmax=False``), shape ``(B, C, *spatial)``.
            target: dense RW map of the same shape, or ``(B, 2, *spatial)`` ``[label, compact map]`` when compact.

        Raises:
            ValueError: when the target's shape does not match ``input`` and the ``compact`` flag, or the class
                weights do not match the channels.
        """
        probabilities = torch.softmax(input.float(), dim=1) if self.softmax else input.float()
        if self.compact:
            return self._compact_loss(probabilities, target)
        if input.shape != target.shape:
            raise ValueError(
                f"input {tuple(input.shape)} and RW map {tuple(target.shape)} must have the same shape "
                "(compact [label, map] targets need compact=True)."
            )
        rw_map = target.float()
        if not self.include_background:
            probabilities, rw_map = probabilities[:, 1:], rw_map[:, 1:]
        return self._reduce_per_class((probabilities * rw_map).flatten(2).mean(dim=2), input.ndim)

    def _reduce_per_class(self, per_class: torch.Tensor, ndim: int) -> torch.Tensor:
        if self.reduction == LossReduction.MEAN.value:
            return per_class.mean()
        if self.reduction == LossReduction.SUM.value:
            return per_class.sum()
        return per_class.view(*per_class.shape, *([1] * (ndim - 2)))

    def _compact_loss(self, probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The dense loss written with the label and the own-class value ``z_y``, never building ``(B, C, ...)`` maps.

        At voxel ``i`` of class ``y`` every other class's entry is ``w_y`` (1 without class weights), so
        ``sum_k p_k z_k = w_y sum_k p_k + p_y (z_y - w_y)``. The sum over classes stays in the graph although it is 1
        after a softmax: its gradient ``w_y`` on every channel gives the softmax backward the dense map's gradient,
        whose true-class component stays negative where ``p_y`` rounds to 1 (``1 - p_y`` would round to 0 there).
        A compact value of 0 (padding, an ignored voxel) stands for a dense map that is 0 in every channel: the voxel
        adds 0 (see the module docstring).
        """
        num_classes = probabilities.shape[1]
        label, own = split_compact_target(target, num_classes)
        if target.shape[2:] != probabilities.shape[2:] or target.shape[0] != probabilities.shape[0]:
            raise ValueError(
                f"input {tuple(probabilities.shape)} and compact target {tuple(target.shape)} must have the same "
                "batch and spatial sizes."
            )
        has_map = own != 0  # real voxels: own value in [-1, 0); 0 only where the map is absent (padding)
        others = torch.where(has_map, self._other_class_values(label, num_classes), 0.0)
        if self.reduction == LossReduction.NONE.value:
            return self._compact_per_class(probabilities, label, own, others)
        per_voxel = others * probabilities.sum(dim=1, keepdim=True) + probabilities.gather(1, label) * (own - others)
        included = num_classes
        if not self.include_background:
            per_voxel = per_voxel - probabilities[:, :1] * torch.where(label == 0, own, others)
            included -= 1
        per_image = per_voxel.flatten(1).mean(dim=1)  # sum over the included classes of the per-class voxel means
        if self.reduction == LossReduction.SUM.value:
            return per_image.sum()
        return per_image.mean() / included

    def _other_class_values(self, label: torch.Tensor, num_classes: int) -> torch.Tensor | float:
        """The other classes' entry at every voxel: ``class_weights[label]``, or 1 without class weights."""
        if self.class_weights is None:
            return 1.0
        if self.class_weights.numel() != num_classes:
            raise ValueError(
                f"class_weights has {self.class_weights.numel()} values but the input has {num_classes} channels."
            )
        return self.class_weights.to(label.device)[label]

    def _compact_per_class(
        self, probabilities: torch.Tensor, label: torch.Tensor, own: torch.Tensor, others: torch.Tensor
    ) -> torch.Tensor:
        """Per-image, per-class voxel means ``(B, C', 1, ...)`` for ``reduction="none"``."""
        flat_probabilities = probabilities.flatten(2)
        voxels = flat_probabilities.shape[2]
        others_flat = others.flatten(2)
        per_class = (flat_probabilities * others_flat).mean(dim=2)
        own_correction = probabilities.gather(1, label) * (own - others)
        per_class = per_class.scatter_add(1, label.flatten(2)[:, 0], own_correction.flatten(2)[:, 0] / voxels)
        if not self.include_background:
            per_class = per_class[:, 1:]
        return self._reduce_per_class(per_class, probabilities.ndim)


class RWWeightedCrossEntropyLoss(_Loss):
    """Cross entropy weighted voxel-wise by the RW map of the true class: ``mean_i |z_{y(i)}(i)| * CE(i)``.

    With an RRW map the weight of a voxel of class ``c`` is ``d_in_c(i) / max d_in_c``, in ``(0, 1]``. Only the
    own-class value is used, so a compact map gives the same loss as the dense one (and class weights, which change
    only the other entries, have no effect). Voxels without a map (padding: map 0) get weight 0 in both forms.

    Args:
        reduction: ``"mean"`` over batch and voxels, ``"sum"``, or ``"none"`` (shape ``(B, 1, *spatial)``).
        compact: the target is ``(B, 2, *spatial)`` = ``[label, compact map]`` instead of ``(B, 1 + C, *spatial)``.
    """

    def __init__(self, reduction: str = "mean", compact: bool = False) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.compact = compact

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            input: logits ``(B, C, *spatial)``.
            target: ``(B, 1 + C, *spatial)``, label in channel 0 and RW map in channels ``1..C``; or
                ``(B, 2, *spatial)`` ``[label, compact map]`` with ``compact=True``.
        """
        num_classes = input.shape[1]
        if self.compact:
            label, weight = split_compact_target(target, num_classes)
        else:
            label, rw_map = split_label_and_map(target, num_classes)
            weight = rw_map.gather(1, label)
        log_probabilities = torch.log_softmax(input.float(), dim=1)
        weighted = -log_probabilities.gather(1, label) * weight.abs()
        if self.reduction == LossReduction.MEAN.value:
            return weighted.mean()
        if self.reduction == LossReduction.SUM.value:
            return weighted.sum()
        return weighted


class RWCombinedLoss(_Loss):
    """The RW paper's Sec. 4.4 strategies: a region loss (Dice or CE) plus an RW loss, combined equally or gradually.

    - ``schedule="equal"``: ``L = region + RW``.
    - ``schedule="gradual"``: ``L = alpha * region + (1 - alpha) * RW`` with ``alpha = max(1 - e * alpha_step,
      alpha_min)`` at 0-based epoch ``e`` (Kervadec's schedule: 1 down to 0.01 by 0.01 per epoch). Attach
      :class:`common.training.alpha_schedule.AlphaScheduleHandler` to the trainer, or call :meth:`set_epoch`.

    The RW map is whatever the pipeline computed: RW-Boundary (``BoundaryMapd``, dense; the Boundary loss
    baseline) or RRW (``RRWMapd``, dense or compact). The Dice term is MONAI's ``DiceLoss(to_onehot_y=True)`` on
    the softmax (computed once for the Dice and RW terms); the CE term is the voxel-wise mean cross entropy. Both
    use the label in channel 0 of the target, so they see padding (label 0, map 0) as background in both forms,
    while the RW term gives it no loss (see the module docstring).

    The Dice term is the authors' (``rwexp_loss.DiceLoss``: ``1 - mean_{b,c} 2 sum(p y) / (sum(p + y) + 1e-6)``, no
    smoothing in the numerator, background included): ``smooth_nr=0``, ``smooth_dr=1e-6`` by default, where MONAI's
    ``DiceLoss`` defaults (``1e-5`` on both) would score a class absent from target and prediction as Dice 1, not 0.

    Args:
        region: ``"dice"`` or ``"ce"``.
        schedule: ``"equal"`` or ``"gradual"``.
        include_background: whether the Dice and RW terms include channel 0.
        alpha_step: decrease of alpha per epoch (``"gradual"``).
        alpha_min: lower bound of alpha (``"gradual"``).
        reduction: ``"mean"`` or ``"sum"``, applied to both terms.
        compact: the target is ``(B, 2, *spatial)`` = ``[label, compact RRW map]`` instead of ``(B, 1 + C, ...)``.
        class_weights: class weights of a compact RRW map (see :class:`RegionWiseLoss`).
        smooth_nr: added to the Dice numerator (the authors': 0).
        smooth_dr: added to the Dice denominator (the authors': 1e-6).

    Raises:
        ValueError: on an unknown region loss, schedule or reduction, an alpha schedule outside ``[0, 1]``, or
            class weights with a dense map.
    """

    def __init__(
        self,
        region: str = "dice",
        schedule: str = "gradual",
        include_background: bool = True,
        alpha_step: float = 0.01,
        alpha_min: float = 0.01,
        reduction: str = "mean",
        compact: bool = False,
        class_weights: Sequence[float] | None = None,
        smooth_nr: float = 0.0,
        smooth_dr: float = 1e-6,
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
        self.compact = compact
        # both terms read the softmax computed once in forward
        self.dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=True,
            softmax=False,
            reduction=self.reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
        )
        self.rw = RegionWiseLoss(
            include_background=include_background,
            softmax=False,
            reduction=self.reduction,
            compact=compact,
            class_weights=class_weights,
        )

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
            target: ``(B, 1 + C, *spatial)``, label in channel 0 and RW map in channels ``1..C``; or
                ``(B, 2, *spatial)`` ``[label, compact map]`` with ``compact=True``.
        """
        num_classes = input.shape[1]
        if self.compact:
            label, _ = split_compact_target(target, num_classes)
            rw_target = target
        else:
            label, rw_target = split_label_and_map(target, num_classes)
        logits = input.float()
        probabilities = torch.softmax(logits, dim=1)
        if self.region == "dice":
            region_loss = self.dice(probabilities, label)
        else:
            region_loss = F.cross_entropy(logits, label[:, 0], reduction=self.reduction)
        region_weight, rw_weight = self.weights
        return region_weight * region_loss + rw_weight * self.rw(probabilities, rw_target)

"""Exponential logarithmic loss of Wong et al. 2018 (arXiv 1809.00076) and its label-frequency weights.

``L = w_dice * mean_i[(-ln Dice_i)^gamma] + w_cross * mean_x[w_l(x) * (-ln p_l(x)(x))^gamma]`` with
``Dice_i = (2 sum_x g_i p_i + eps) / (sum_x (g_i + p_i) + eps)`` and ``w_l = ((sum_k f_k) / f_l) ** 0.5`` from the
label frequencies ``f_k`` of the training set (:func:`label_weights_from_datalist`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import load_decathlon_datalist
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

__all__ = ["ExpLogLoss", "label_frequencies", "label_weights_from_datalist", "label_weights_from_frequencies"]

DICE_FORMS = ("log", "linear")


def _safe_power(base: torch.Tensor, gamma: float) -> torch.Tensor:
    """``base ** gamma`` for ``base >= 0`` with value 0 and a zero (not NaN) gradient where ``base == 0``.

    For ``gamma < 1`` the derivative of ``t ** gamma`` is infinite at 0, and autograd would multiply it by the zero
    derivative of a perfectly predicted term; the double ``where`` keeps that gradient at 0. Away from 0 the value
    and gradient are exactly those of ``base ** gamma``.
    """
    if gamma == 1:
        return base
    positive = base > 0
    return torch.where(positive, torch.where(positive, base, torch.ones_like(base)) ** gamma, torch.zeros_like(base))


class ExpLogLoss(_Loss):
    """Exponential logarithmic loss: a weighted sum of an exponential logarithmic Dice and cross-entropy.

    Exactly the paper's formula (see the module docstring), with ``Dice_i`` computed per image and class
    (``batch=False``) or per class over the whole batch (``batch=True``), and ``mean_i`` / ``mean_x`` taken over all
    (image, class) pairs and all voxels of the batch. Special cases by arguments:

    - logarithmic Dice ``mean_i[-ln Dice_i]``: ``w_dice=1, w_cross=0, gamma=1``;
    - linear Dice ``mean_i[1 - Dice_i]`` (the paper's baseline, MONAI ``DiceLoss(smooth_nr=eps, smooth_dr=eps)``):
      ``w_dice=1, w_cross=0, gamma=1, dice_form="linear"``;
    - weighted cross-entropy: ``w_dice=0, w_cross=1, gamma=1``.

    ``include_background=False`` drops class 0 from the Dice term only; the cross-entropy term always covers every
    voxel (as in MONAI's ``DiceCELoss``). The loss computes in float32 whatever the input dtype, so float16
    inputs have finite gradients, and terms that are exactly 0 (a perfect Dice, ``p_l = 1``) get a zero gradient
    instead of the NaN that ``0 ** gamma`` with ``gamma < 1`` would produce.
    """

    def __init__(
        self,
        w_dice: float = 0.8,
        w_cross: float = 0.2,
        gamma: float = 0.3,
        label_weights: Sequence[float] | torch.Tensor | None = None,
        eps: float = 1.0,
        dice_form: str = "log",
        include_background: bool = True,
        to_onehot_y: bool = False,
        softmax: bool = True,
        batch: bool = False,
        reduction: str = "mean",
    ) -> None:
        """Configure the loss.

        Args:
            w_dice: weight of the Dice term.
            w_cross: weight of the cross-entropy term.
            gamma: exponent of both terms (the paper's best is 0.3; 1 and 2 were also studied).
            label_weights: the paper's ``w_l``, one per class (see :func:`label_weights_from_datalist`);
                None for all ones.
            eps: additive smoothing of the Dice numerator and denominator (the paper's 1).
            dice_form: ``"log"`` for ``-ln Dice_i`` (the paper) or ``"linear"`` for ``1 - Dice_i``.
            include_background: whether class 0 enters the Dice term.
            to_onehot_y: the target holds class indices ``(B, 1, *spatial)`` (used directly, no one-hot tensor is
                built); otherwise it is one-hot ``(B, C, *spatial)``.
            softmax: apply a softmax to ``input`` (set False when ``input`` holds probabilities). Defaults to True,
                as the paper's loss is defined on softmax outputs.
            batch: compute each class's Dice over the whole batch instead of per image.
            reduction: ``"mean"`` (the paper) or ``"sum"`` (sums instead of the two means).

        Raises:
            ValueError: on a negative weight, gamma <= 0, eps < 0, an unknown ``dice_form`` or ``reduction``,
                or non-positive label weights.
        """
        super().__init__(reduction=LossReduction(reduction).value)
        if self.reduction not in (LossReduction.MEAN.value, LossReduction.SUM.value):
            raise ValueError(f"ExpLogLoss supports reduction 'mean' or 'sum', got {reduction!r}.")
        if w_dice < 0 or w_cross < 0:
            raise ValueError(f"w_dice and w_cross must be >= 0, got {w_dice} and {w_cross}.")
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}.")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}.")
        if dice_form not in DICE_FORMS:
            raise ValueError(f"dice_form must be one of {DICE_FORMS}, got {dice_form!r}.")
        self.w_dice = float(w_dice)
        self.w_cross = float(w_cross)
        self.gamma = float(gamma)
        self.eps = float(eps)
        self.dice_form = dice_form
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.softmax = softmax
        self.batch = batch
        weights = None if label_weights is None else torch.as_tensor(label_weights, dtype=torch.float32).flatten()
        if weights is not None and not bool(torch.all(torch.isfinite(weights) & (weights > 0))):
            raise ValueError(f"label_weights must be positive and finite, got {weights.tolist()}.")
        self.label_weights: torch.Tensor | None
        self.register_buffer("label_weights", weights)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            input: logits (probabilities when ``softmax=False``), shape ``(B, C, *spatial)``, C >= 2.
            target: labels ``(B, 1, *spatial)`` with ``to_onehot_y=True``, else one-hot ``(B, C, *spatial)``.

        Raises:
            ValueError: on mismatched shapes or a ``label_weights`` length other than C.
        """
        num_classes = input.shape[1]
        if input.ndim < 3 or num_classes < 2:
            raise ValueError(f"input must have shape (B, C>=2, *spatial), got {tuple(input.shape)}.")
        if self.label_weights is not None and self.label_weights.numel() != num_classes:
            raise ValueError(
                f"label_weights has {self.label_weights.numel()} values but input has {num_classes} classes."
            )
        expected_target = (input.shape[0], 1 if self.to_onehot_y else num_classes, *input.shape[2:])
        if tuple(target.shape) != expected_target:
            hint = "" if self.to_onehot_y else "; pass to_onehot_y=True for a (B, 1, *spatial) label target"
            raise ValueError(f"target must have shape {expected_target}, got {tuple(target.shape)}{hint}.")
        if self.softmax:
            log_probabilities = torch.log_softmax(input.float(), dim=1).flatten(2)
            probabilities = log_probabilities.exp()
        else:
            probabilities = input.float().flatten(2)
            log_probabilities = probabilities.clamp(torch.finfo(torch.float32).tiny, 1).log()

        if self.to_onehot_y:
            overlap, target_volume, true_log_probability, true_weight = self._label_statistics(
                log_probabilities, target.flatten(1)
            )
        else:
            overlap, target_volume, true_log_probability, true_weight = self._one_hot_statistics(
                probabilities, log_probabilities, target.float().flatten(2)
            )

        reduce = torch.mean if self.reduction == LossReduction.MEAN.value else torch.sum
        loss = torch.zeros((), device=input.device)
        if self.w_dice > 0:
            dice_terms = self._dice_terms(overlap, probabilities.sum(dim=2), target_volume)
            loss = loss + self.w_dice * reduce(dice_terms)
        if self.w_cross > 0:
            cross_terms = _safe_power(-true_log_probability, self.gamma)
            if true_weight is not None:
                cross_terms = cross_terms * true_weight
            loss = loss + self.w_cross * reduce(cross_terms)
        return loss

    def _label_statistics(
        self, log_probabilities: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Dice sums and the true class's log-probability and weight from integer labels, without a one-hot tensor.

        Gathering the true class per voxel and scattering it into per-class sums costs O(B * N) instead of the
        O(B * C * N) products with a one-hot target, which makes this loss about as fast as MONAI's ``DiceLoss``.

        Args:
            log_probabilities: ``(B, C, N)``.
            labels: ``(B, N)`` class indices.

        Returns:
            ``sum_x p_c g_c`` and ``sum_x g_c`` of shape ``(B, C)``, ``ln p_l(x)`` and ``w_l(x)`` (or None) of
            shape ``(B, N)``.

        Raises:
            ValueError: when a label lies outside ``[0, C)``.
        """
        num_classes = log_probabilities.shape[1]
        labels = labels.round().long() if labels.is_floating_point() else labels.long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"target labels must lie in [0, {num_classes - 1}], found [{int(labels.min())}, {int(labels.max())}]."
            )
        true_log_probability = log_probabilities.gather(1, labels[:, None])[:, 0]
        per_class = torch.zeros(labels.shape[0], num_classes, device=labels.device)
        overlap = per_class.scatter_add(1, labels, true_log_probability.exp())
        target_volume = per_class.scatter_add(1, labels, torch.ones_like(true_log_probability))
        true_weight = None if self.label_weights is None else self.label_weights[labels]
        return overlap, target_volume, true_log_probability, true_weight

    def _one_hot_statistics(
        self, probabilities: torch.Tensor, log_probabilities: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The statistics of :meth:`_label_statistics` from a one-hot (or soft) target ``(B, C, N)``.

        ``sum_c g_c(x) ln p_c(x)`` is ``ln p_l(x)`` for a one-hot target and minus the cross-entropy of a soft one;
        the weight is likewise ``sum_c g_c(x) w_c``.
        """
        overlap = (probabilities * target).sum(dim=2)
        true_log_probability = (target * log_probabilities).sum(dim=1)
        true_weight = None if self.label_weights is None else (target * self.label_weights[:, None]).sum(dim=1)
        return overlap, target.sum(dim=2), true_log_probability, true_weight

    def _dice_terms(
        self, overlap: torch.Tensor, prediction_volume: torch.Tensor, target_volume: torch.Tensor
    ) -> torch.Tensor:
        """``(-ln Dice_i) ** gamma`` (or ``(1 - Dice_i) ** gamma``) per image and class, or per class for batch."""
        if not self.include_background:
            overlap, prediction_volume, target_volume = overlap[:, 1:], prediction_volume[:, 1:], target_volume[:, 1:]
        if self.batch:
            overlap, prediction_volume, target_volume = overlap.sum(0), prediction_volume.sum(0), target_volume.sum(0)
        dice = (2 * overlap + self.eps) / (prediction_volume + target_volume + self.eps)
        base = -torch.log(dice) if self.dice_form == "log" else 1 - dice
        return _safe_power(base.clamp_min(0), self.gamma)


def label_frequencies(label_paths: Sequence[str | os.PathLike], num_classes: int) -> np.ndarray:
    """Count the voxels of each class over NIfTI label images.

    Args:
        label_paths: paths of integer label images.
        num_classes: number of classes ``C``; valid labels are ``0 .. C - 1``.

    Returns:
        int64 array of shape ``(C,)``.

    Raises:
        FileNotFoundError: when a label file does not exist.
        ValueError: when a file is not a readable image, holds non-integer values or labels outside ``[0, C)``.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    for path in label_paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"label file {path} does not exist.")
        try:
            label = np.asanyarray(nib.load(path).dataobj)
        except Exception as error:  # nibabel raises several types for unreadable files
            raise ValueError(f"cannot read label file {path}: {error}") from error
        if label.dtype.kind == "f" and not (np.all(np.isfinite(label)) and np.array_equal(label, np.round(label))):
            raise ValueError(f"label file {path} holds non-integer values; expected class indices.")
        if label.dtype.kind not in "iufb":
            raise ValueError(f"label file {path} has dtype {label.dtype}; expected integer class indices.")
        label = label.astype(np.int64)
        if label.size and (label.min() < 0 or label.max() >= num_classes):
            raise ValueError(
                f"label file {path} has values in [{label.min()}, {label.max()}], outside [0, {num_classes - 1}]."
            )
        counts += np.bincount(label.ravel(), minlength=num_classes)
    return counts


def label_weights_from_frequencies(frequencies: Sequence[float] | np.ndarray) -> np.ndarray:
    """The paper's label weights ``w_l = ((sum_k f_k) / f_l) ** 0.5``.

    A class that never occurs (``f_l = 0``) would get an infinite weight; it gets the largest weight of the classes
    that do occur (as if it were the rarest one) and a warning.

    Args:
        frequencies: voxel counts (or frequencies) of each class.

    Returns:
        float64 array of the weights.

    Raises:
        ValueError: when a frequency is negative or no class occurs.
    """
    frequencies = np.asarray(frequencies, dtype=np.float64)
    if np.any(frequencies < 0) or not np.all(np.isfinite(frequencies)):
        raise ValueError(f"label frequencies must be finite and >= 0, got {frequencies.tolist()}.")
    seen = frequencies > 0
    if not seen.any():
        raise ValueError("no class occurs in the labels; cannot compute label weights.")
    weights = np.zeros_like(frequencies)
    weights[seen] = np.sqrt(frequencies.sum() / frequencies[seen])
    if not seen.all():
        missing = np.flatnonzero(~seen).tolist()
        warnings.warn(
            f"classes {missing} never occur in the labels; giving them the largest weight of the others "
            f"({weights[seen].max():.4g}).",
            stacklevel=2,
        )
        weights[~seen] = weights[seen].max()
    return weights


def label_weights_from_datalist(
    datalist: str | os.PathLike | Sequence[Mapping[str, str]],
    num_classes: int,
    label_key: str = "label",
    data_list_key: str = "training",
    base_dir: str | os.PathLike | None = None,
    transform: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
) -> list[float]:
    """Compute ``w_l`` (:func:`label_weights_from_frequencies`) from the labels of a training datalist.

    With ``transform`` (the training's deterministic preprocessing, e.g. ``Compose(base_transforms +
    shape_transforms)``), each item goes through it and the label it returns is counted: the classes are then the
    training indices after the datalist's ``label_mapping`` (``MapLabelValued``), not the raw values of the files,
    so non-contiguous values (0/10/20), merged or reordered labels get the weight of the class the network learns,
    and the counts are on the network's grid. Padding to that grid counts as background, as in the paper, whose
    label frequencies are those of its 128^3 images (resampled, zero padded, resized: "the background occupied
    93.5 % of an image"). Without ``transform`` the files' raw values are counted and must already be ``0 .. C - 1``.

    Args:
        datalist: an MSD-style datalist JSON file (read with ``monai.data.load_decathlon_datalist``) or a list of
            dictionaries holding a label path under ``label_key``.
        num_classes: number of classes ``C``.
        label_key: key of the label path in each item.
        data_list_key: section of the JSON file to read.
        base_dir: directory that relative paths of a JSON datalist start from (default: the file's directory).
        transform: applied to each item before counting its ``label_key`` (array or tensor of class indices).

    Returns:
        The ``C`` weights as floats (ready for ``ExpLogLoss(label_weights=...)`` or a config file).

    Raises:
        ValueError: when an item lacks ``label_key`` or the datalist is empty (and see :func:`label_frequencies`).
    """
    if isinstance(datalist, str | os.PathLike):
        items = load_decathlon_datalist(datalist, is_segmentation=True, data_list_key=data_list_key, base_dir=base_dir)
        source = str(datalist)
    else:
        items, source = list(datalist), "the datalist"
    if not items:
        raise ValueError(f"{source} has no items to compute label weights from.")
    missing = [index for index, item in enumerate(items) if label_key not in item]
    if missing:
        raise ValueError(f"items {missing} of {source} have no {label_key!r} entry.")
    if transform is None:
        counts = label_frequencies([item[label_key] for item in items], num_classes)
    else:
        counts = np.zeros(num_classes, dtype=np.int64)
        for item in items:
            label = transform(dict(item))[label_key]
            label = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
            counts += _index_counts(label, num_classes, f"the transformed label of {item[label_key]}")
    return label_weights_from_frequencies(counts).tolist()


def _index_counts(label: np.ndarray, num_classes: int, source: str) -> np.ndarray:
    """Voxel count of each class index ``0 .. C - 1`` in ``label``."""
    if label.dtype.kind == "f" and not (np.all(np.isfinite(label)) and np.array_equal(label, np.round(label))):
        raise ValueError(f"{source} holds non-integer values; expected class indices.")
    label = label.astype(np.int64)
    if label.size and (label.min() < 0 or label.max() >= num_classes):
        raise ValueError(f"{source} has values in [{label.min()}, {label.max()}], outside [0, {num_classes - 1}].")
    return np.bincount(label.ravel(), minlength=num_classes)

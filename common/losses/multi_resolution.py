"""Weighted multi-level loss aggregation (WMLA) of Nguyen et al. for multi-resolution network outputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from monai.losses import DeepSupervisionLoss
from torch import nn
from torch.nn.modules.loss import _Loss

__all__ = ["MultiResolutionLoss"]


class MultiResolutionLoss(DeepSupervisionLoss):
    """``L = sum_k alpha_k * loss(P_k, G_k)`` over decoder outputs ``P_k`` at decreasing resolutions (WMLA).

    ``G_k`` is the target resized to ``P_k``'s spatial size by nearest-neighbour interpolation (integer targets are
    resized as floats and cast back). ``alpha_1 = 1`` is fixed; the others are fixed (default ``(0.1, 0.01)``) or
    trainable.

    This subclasses MONAI's ``DeepSupervisionLoss``, whose ``forward`` (a list/tuple of outputs, main first, or a
    single tensor in eval mode) and nearest resizing of the target are exactly WMLA's; only the weights differ:
    MONAI's are a fixed list, WMLA's may be learnt, so :meth:`get_weights` returns tensors built from module
    parameters. Unlike MONAI's ``DynUNet`` (upsampled, stacked heads, see ``common.networks.dyn_unet``),
    :class:`common.networks.SAUNet` returns its heads at their own resolution, as WMLA compares them with
    downsampled labels.

    Trainable weights: ``alpha_k = min_alpha + (max_alpha - min_alpha) * sigmoid(theta_k)`` for ``k >= 2``, with
    ``theta`` an ``nn.Parameter`` initialised so that ``alpha`` starts at the given values. The sigmoid keeps every
    ``alpha_k`` strictly inside ``(min_alpha, max_alpha)`` whatever the optimizer does, with no clipping step. Add
    ``loss.parameters()`` to the optimizer. Note that minimising ``L`` over ``alpha`` alone pushes each
    ``alpha_k`` towards ``min_alpha``; ``min_alpha`` is the floor that keeps the coarse terms alive.
    With ``trainable=False`` the weights are a buffer (saved in the state dict, not seen by the optimizer).
    """

    def __init__(
        self,
        loss: _Loss,
        alpha: Sequence[float] = (1.0, 0.1, 0.01),
        trainable: bool = False,
        min_alpha: float = 1e-3,
        max_alpha: float = 1.0,
    ) -> None:
        """Wrap ``loss``.

        Args:
            loss: the loss of one output, called as ``loss(output_k, target_k)``.
            alpha: initial (or fixed) weights, one per output from full resolution down; ``alpha[0]`` must be 1.
            trainable: learn ``alpha[1:]`` (registered as ``nn.Parameter``).
            min_alpha: lower bound of the trainable weights.
            max_alpha: upper bound of the trainable weights.

        Raises:
            ValueError: when ``alpha[0] != 1``, ``alpha`` is empty, or a weight lies outside the bounds
                (``(min_alpha, max_alpha)`` when trainable, ``>= 0`` when fixed).
        """
        super().__init__(loss, weight_mode="same")
        alpha = [float(value) for value in alpha]
        if not alpha or alpha[0] != 1.0:
            raise ValueError(f"alpha must start with alpha_1 = 1, got {alpha}.")
        self.trainable = trainable
        if trainable:
            if not 0 <= min_alpha < max_alpha:
                raise ValueError(f"need 0 <= min_alpha < max_alpha, got {min_alpha} and {max_alpha}.")
            if any(not min_alpha < value < max_alpha for value in alpha[1:]):
                raise ValueError(f"trainable alpha[1:] must lie in ({min_alpha}, {max_alpha}), got {alpha[1:]}.")
            fractions = [(value - min_alpha) / (max_alpha - min_alpha) for value in alpha[1:]]
            self.theta = nn.Parameter(torch.tensor([math.log(f / (1 - f)) for f in fractions]))
        elif any(value < 0 for value in alpha):
            raise ValueError(f"alpha must be >= 0, got {alpha}.")
        else:
            self.register_buffer("fixed_alpha", torch.tensor(alpha))
        self.min_alpha = float(min_alpha)
        self.max_alpha = float(max_alpha)

    @property
    def alpha(self) -> torch.Tensor:
        """Current weights ``(alpha_1 = 1, alpha_2, ...)`` as a tensor (differentiable when trainable)."""
        if not self.trainable:
            return self.fixed_alpha
        learnt = self.min_alpha + (self.max_alpha - self.min_alpha) * torch.sigmoid(self.theta)
        return torch.cat([torch.ones(1, dtype=learnt.dtype, device=learnt.device), learnt])

    def get_weights(self, levels: int = 1) -> list[torch.Tensor]:
        """Weights of the first ``levels`` outputs.

        Raises:
            ValueError: when there are more outputs than weights.
        """
        alpha = self.alpha
        if levels > alpha.numel():
            raise ValueError(
                f"the network returned {levels} outputs but MultiResolutionLoss has only {alpha.numel()} alpha values."
            )
        return list(alpha[:levels].unbind())

    def get_loss(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of one output against the target resized (nearest) to its spatial size."""
        if input.shape[2:] != target.shape[2:]:
            resized = F.interpolate(target.float(), size=input.shape[2:], mode=self.interp_mode)
            target = resized if target.is_floating_point() else resized.to(target.dtype)
        return self.loss(input, target)

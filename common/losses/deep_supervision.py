"""nnU-Net's deep-supervision loss: the wrapped loss at every output resolution, weights 1/2^k summing to 1."""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss
from torch.nn.modules.loss import _Loss

__all__ = ["NNUNetDeepSupervisionLoss", "nnunet_deep_supervision_weights"]


def nnunet_deep_supervision_weights(num_outputs: int, num_pool: int | None = None) -> list[float]:
    """nnU-Net's weights of ``num_outputs`` supervised outputs, full resolution first: ``2^-k`` normalised to sum 1.

    nnU-Net (v1 ``nnUNetTrainerV2``, the RW authors' code) has one output per decoder resolution, ``num_pool`` of
    them (``1, 1/2, ..., 1/2^(num_pool-1)``), weights ``2^-k``, sets the lowest resolution's weight to 0 and
    normalises. Here only the outputs that get a weight exist (e.g. 4 outputs: 8/15, 4/15, 2/15, 1/15). Given
    ``num_pool``, ``num_outputs`` must be ``num_pool - 1``: one output more would weight the lowest resolution, which
    nnU-Net zeroes; fewer would renormalise the weights (e.g. 4/7, 2/7, 1/7 instead of 8/15, 4/15, 2/15); and with
    ``num_pool = 1`` nnU-Net's only weight is zeroed, so no weight is left.

    Args:
        num_outputs: outputs the network returns in training (``1 + deep_supr_num``).
        num_pool: the network's poolings (decoder resolutions), to check ``num_outputs`` against nnU-Net's; None
            to skip the check.

    Raises:
        ValueError: ``num_outputs`` is not positive, or not ``num_pool - 1`` when ``num_pool`` is given.
    """
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be at least 1, got {num_outputs}.")
    if num_pool is not None and num_outputs != num_pool - 1:
        if num_pool < 2:
            reason = "nnU-Net zeroes the weight of its only output, so no weight would be left"
        elif num_outputs > num_pool - 1:
            reason = "the extra output is the lowest decoder resolution, whose weight nnU-Net sets to 0"
        else:
            reason = "nnU-Net supervises every decoder resolution but the lowest, so its normalisation would change"
        raise ValueError(
            f"{num_outputs} deep-supervision outputs (deep_supr_num {num_outputs - 1}) do not give nnU-Net's weights "
            f"for a network with {num_pool} poolings: {reason}. nnU-Net's weighting needs {num_pool - 1} outputs "
            f"(deep_supr_num = {num_pool - 2}, i.e. the number of levels minus 3); for another weighting use "
            "monai.losses.DeepSupervisionLoss with explicit weights."
        )
    weights = [0.5**level for level in range(num_outputs)]
    return [weight / sum(weights) for weight in weights]


class NNUNetDeepSupervisionLoss(DeepSupervisionLoss):
    """``monai.losses.DeepSupervisionLoss`` with nnU-Net's weights and a check of the number of outputs.

    In training the network returns a list of outputs, full resolution first
    (:class:`common.networks.DeepSupervisionDynUNet`); the target is downsampled to each output's resolution by
    nearest-neighbour interpolation (a ``[label, RW map]`` target keeps each voxel's label and map value
    together). One tensor (evaluation mode) gets the wrapped loss alone.

    Args:
        loss: the loss of one output, e.g. ``common.losses.RegionWiseLoss``.
        num_outputs: number of outputs the network returns in training (``1 + deep_supr_num``).
        num_pool: the network's poolings (``len(strides) - 1`` of a DynUNet); when given, ``num_outputs`` must be
            nnU-Net's ``num_pool - 1`` (see :func:`nnunet_deep_supervision_weights`).

    Raises:
        ValueError: ``num_outputs`` that does not give nnU-Net's weights.
    """

    def __init__(self, loss: _Loss, num_outputs: int, num_pool: int | None = None) -> None:
        super().__init__(loss, weights=nnunet_deep_supervision_weights(num_outputs, num_pool))
        self.num_outputs = num_outputs

    def forward(self, input: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the wrapped loss over the outputs.

        Raises:
            ValueError: a list of outputs that is not ``num_outputs`` long.
        """
        if isinstance(input, (list, tuple)) and len(input) != self.num_outputs:
            raise ValueError(f"expected {self.num_outputs} deep-supervision outputs, got {len(input)}.")
        return super().forward(input, target)

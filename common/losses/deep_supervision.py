"""nnU-Net's deep-supervision loss: the wrapped loss at every output resolution, weights 1/2^k summing to 1."""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss
from torch.nn.modules.loss import _Loss

__all__ = ["NNUNetDeepSupervisionLoss", "nnunet_deep_supervision_weights"]


def nnunet_deep_supervision_weights(num_outputs: int) -> list[float]:
    """nnU-Net's weights of ``num_outputs`` supervised outputs, full resolution first: ``2^-k`` normalised to sum 1.

    nnU-Net gives its decoder outputs ``1, 1/2, 1/4, ...`` and sets the lowest resolution's weight to 0 before
    normalising; here only the outputs that get a weight exist (e.g. 4 outputs: 8/15, 4/15, 2/15, 1/15).

    Raises:
        ValueError: ``num_outputs`` is not positive.
    """
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be at least 1, got {num_outputs}.")
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
    """

    def __init__(self, loss: _Loss, num_outputs: int) -> None:
        super().__init__(loss, weights=nnunet_deep_supervision_weights(num_outputs))
        self.num_outputs = num_outputs

    def forward(self, input: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the wrapped loss over the outputs.

        Raises:
            ValueError: a list of outputs that is not ``num_outputs`` long.
        """
        if isinstance(input, (list, tuple)) and len(input) != self.num_outputs:
            raise ValueError(f"expected {self.num_outputs} deep-supervision outputs, got {len(input)}.")
        return super().forward(input, target)

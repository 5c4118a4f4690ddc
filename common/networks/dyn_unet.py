"""MONAI's DynUNet with nnU-Net's deep supervision: each supervised output keeps its decoder level's resolution."""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet

__all__ = ["DeepSupervisionDynUNet"]


class DeepSupervisionDynUNet(DynUNet):
    """:class:`monai.networks.nets.DynUNet` whose training outputs are a list of tensors at their own resolutions.

    MONAI's ``DynUNet`` upsamples its deep-supervision heads to the full size and stacks them; nnU-Net instead
    downsamples the target to each output's resolution (``monai.losses.DeepSupervisionLoss`` does that for a
    list of outputs). This subclass returns ``[full, 1/2, 1/4, ...]`` (``1 + deep_supr_num`` tensors, highest
    resolution first) in training mode with ``deep_supervision=True`` and one ``(B, C, *spatial)`` tensor
    otherwise. It adds no parameters: its state dict is ``DynUNet``'s, so the weights load into a plain
    ``DynUNet`` (without the ``deep_supervision_heads.*`` entries when that one has no heads).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        """Segment ``x``; in training with deep supervision, also return the heads at their own resolutions."""
        out = self.output_block(self.skip_layers(x))
        if self.training and self.deep_supervision:
            return [out, *self.heads]
        return out

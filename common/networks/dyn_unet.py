"""MONAI's DynUNet with nnU-Net's deep supervision: each supervised output keeps its decoder level's resolution."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import DynUNet
from monai.networks.nets.dynunet import DynUNetSkipLayer

__all__ = ["DeepSupervisionDynUNet"]


class DeepSupervisionDynUNet(DynUNet):
    """:class:`monai.networks.nets.DynUNet` whose training outputs are a list of tensors at their own resolutions.

    MONAI's ``DynUNet`` upsamples its deep-supervision heads to the full size and stacks them; nnU-Net instead
    downsamples the target to each output's resolution (``monai.losses.DeepSupervisionLoss`` does that for a
    list of outputs). This subclass returns ``[full, 1/2, 1/4, ...]`` (``1 + deep_supr_num`` tensors, highest
    resolution first) in training mode with ``deep_supervision=True`` and one ``(B, C, *spatial)`` tensor
    otherwise. It adds no parameters: its state dict is ``DynUNet``'s, so the weights load into a plain
    ``DynUNet`` without heads once the ``deep_supervision_heads.*`` entries are dropped. (MONAI registers each head
    twice, also as ``skip_layers...super_head``; here the skip layers keep a plain reference, so every head's
    weights appear once, under ``deep_supervision_heads``.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        layer = self.skip_layers
        while isinstance(layer, DynUNetSkipLayer):
            head = layer._modules.pop("super_head", None)
            if head is not None:
                object.__setattr__(layer, "super_head", head)  # still called in forward, not a second registration
            layer = layer.next_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        """Segment ``x``; in training with deep supervision, also return the heads at their own resolutions."""
        out = self.output_block(self.skip_layers(x))
        if self.training and self.deep_supervision:
            return [out, *self.heads]
        return out

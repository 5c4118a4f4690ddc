"""MONAI's DynUNet with nnU-Net's deep supervision: each supervised output keeps its decoder level's resolution."""

import torch
from monai.networks.nets import DynUNet
from monai.networks.nets.dynunet import DynUNetSkipLayer
from torch import nn

__all__ = ["DeepSupervisionDynUNet"]


class _SupervisedSkipLayer(DynUNetSkipLayer):
    """DynUNet's skip layer, its supervision head run in training mode only, and compiled by TorchScript.

    MONAI's layer types its list of head outputs ``Optional``, which TorchScript cannot index, so a DynUNet with
    deep supervision does not script (MONAI 1.6); here the list is always given.
    """

    # declared on the class (and no `from __future__ import annotations` in this module): TorchScript cannot read a
    # postponed annotation
    heads: list[torch.Tensor]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        downout = self.downsample(x)
        upout = self.upsample(self.next_layer(downout), downout)
        if self.training and self.super_head is not None and self.index > 0:
            self.heads[self.index - 1] = self.super_head(upout)
        return upout


class DeepSupervisionDynUNet(DynUNet):
    """:class:`monai.networks.nets.DynUNet` whose training outputs are a list of tensors at their own resolutions.

    MONAI's ``DynUNet`` upsamples its deep-supervision heads to the full size and stacks them; nnU-Net instead
    downsamples the target to each output's resolution (``monai.losses.DeepSupervisionLoss`` does that for a
    list of outputs). This subclass returns ``[full, 1/2, 1/4, ...]`` (``1 + deep_supr_num`` tensors, highest
    resolution first) in training mode with ``deep_supervision=True``, and one ``(B, C, *spatial)`` tensor in eval
    mode, where the heads do not run. Training and inference build the same network: its state dict is that of
    MONAI's ``DynUNet`` with the same arguments (the weights load strictly into either), and it scripts with its heads.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.deep_supervision:
            self.skip_layers = self._supervised(self.skip_layers)

    def _supervised(self, layer: nn.Module) -> nn.Module:
        """``layer`` and the skip layers below it as :class:`_SupervisedSkipLayer` (the same modules, same names)."""
        if not isinstance(layer, DynUNetSkipLayer):
            return layer  # the bottleneck
        return _SupervisedSkipLayer(
            layer.index,
            downsample=layer.downsample,
            upsample=layer.upsample,
            next_layer=self._supervised(layer.next_layer),
            heads=self.heads,
            super_head=layer.super_head,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        """Segment ``x``; in training with deep supervision, also return the heads at their own resolutions."""
        out = self.output_block(self.skip_layers(x))
        if self.training and self.deep_supervision:
            return [out] + self.heads
        return out

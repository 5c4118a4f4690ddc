"""The residual U-Net of the SA Dice / WMLA paper (Nguyen et al.), built from MONAI's DynUNet blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetOutBlock, UnetResBlock, UnetUpBlock
from monai.networks.nets import DynUNet
from torch import nn

__all__ = ["SAUNet"]

NORM = ("INSTANCE", {"affine": True})
ACTIVATION = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})


class SAUNet(nn.Module):
    """U-Net with 16 base features, instance norm, leaky ReLU, residual blocks and multi-resolution outputs.

    The paper's setup: "similarly to [3] (Kayalibay et al.), 4 levels of contractions and expansions; 16 feature
    channels in the first level, doubled when the resolution is halved", based on the networks of [3] and [5]
    (Isensee et al., BraTS 2017), with "multi-level segmentation maps from the first three levels". Four
    contractions give five resolutions, 16 to 256 features: the layout of Isensee et al.'s BraTS 2017 network
    (16, 32, 64, 128, 256 with four stride-2 downsamplings and segmentation outputs at the three finest levels),
    hence the default ``filters``. ``filters=(16, 32, 64, 128)`` gives the three-contraction reading.

    Blocks are MONAI's DynUNet blocks: ``UnetResBlock`` encoder levels (two 3x3x3 convs with a residual path, the
    first with stride 2 below full resolution), ``UnetUpBlock`` decoder levels (2x transposed conv, concatenated
    skip, two 3x3x3 convs), instance norm with affine parameters and leaky ReLU 0.01, DynUNet's weight initialisation.

    Deep supervision (contract of this project's networks): the 1x1x1 heads of the decoder levels at 1/2, 1/4, ...
    resolution live in ``deep_supervision_heads``; with ``deep_supervision=True`` training mode returns
    ``[main, level_2, level_3, ...]`` at their own resolutions (WMLA compares each with labels downsampled to it,
    :class:`common.losses.MultiResolutionLoss`), and eval mode the main output only. With ``deep_supervision=False``
    the network has no head modules (its state dict no head keys) and always returns one tensor; it scripts with
    ``torch.jit.script`` either way.

    Spatial sizes must be divisible by ``2 ** (len(filters) - 1)``; instance norm also needs more than one voxel at
    the bottom level, so ``2 ** len(filters)`` is the smallest size.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        filters: Sequence[int] = (16, 32, 64, 128, 256),
        deep_supervision: bool = True,
        deep_supr_num: int = 2,
        dropout: float | None = None,
        spatial_dims: int = 3,
    ) -> None:
        """Build the network.

        Args:
            in_channels: number of input channels (modalities).
            out_channels: number of classes (logit channels of every output).
            filters: features of each level from full resolution down; its length is the number of resolutions.
            deep_supervision: whether the network has heads and training mode returns the coarser outputs.
            deep_supr_num: number of coarser outputs (levels 2 .. deep_supr_num + 1); must be below
                ``len(filters) - 1`` (the bottom level has no head).
            dropout: dropout probability inside the blocks (``None`` for none, as in the paper).
            spatial_dims: 3 for volumes, 2 for slices.

        Raises:
            ValueError: fewer than 3 levels, or ``deep_supr_num`` outside ``[1, len(filters) - 2]``.
        """
        super().__init__()
        filters = list(filters)
        if len(filters) < 3:
            raise ValueError(f"SAUNet needs at least 3 levels of filters, got {filters}.")
        if deep_supervision and not 1 <= deep_supr_num <= len(filters) - 2:
            raise ValueError(
                f"deep_supr_num must lie in [1, {len(filters) - 2}] for {len(filters)} levels, got {deep_supr_num}."
            )
        self.deep_supervision = deep_supervision
        self.filters = filters
        self.encoder = nn.ModuleList(
            UnetResBlock(
                spatial_dims,
                in_channels if level == 0 else filters[level - 1],
                width,
                kernel_size=3,
                stride=1 if level == 0 else 2,
                norm_name=NORM,
                act_name=ACTIVATION,
                dropout=dropout,
            )
            for level, width in enumerate(filters)
        )
        self.decoder = nn.ModuleList(
            UnetUpBlock(
                spatial_dims,
                filters[level + 1],
                filters[level],
                kernel_size=3,
                stride=1,
                upsample_kernel_size=2,
                norm_name=NORM,
                act_name=ACTIVATION,
                dropout=dropout,
            )
            for level in range(len(filters) - 2, -1, -1)
        )
        self.output_block = UnetOutBlock(spatial_dims, filters[0], out_channels, dropout=dropout)
        self.deep_supervision_heads = nn.ModuleList(
            UnetOutBlock(spatial_dims, filters[level], out_channels, dropout=dropout)
            for level in (range(1, deep_supr_num + 1) if deep_supervision else ())
        )
        self.apply(DynUNet.initialize_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` (B, in_channels, *spatial).

        Returns:
            Eval mode or ``deep_supervision=False``: logits (B, out_channels, *spatial). Training mode with deep
            supervision: ``[main, *heads]``, head ``k`` (1-based) at the spatial size divided by ``2 ** k``.
        """
        skips: list[torch.Tensor] = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        features = skips.pop()
        decoded: list[torch.Tensor] = []  # deepest decoder level first, full resolution last
        for up_block in self.decoder:
            features = up_block(features, skips.pop())
            decoded.append(features)
        main = self.output_block(features)
        if not (self.training and self.deep_supervision):
            return main
        outputs = [main]
        for index, head in enumerate(self.deep_supervision_heads):
            outputs.append(head(decoded[-2 - index]))
        return outputs

"""The residual U-Net of the SA Dice / WMLA paper (Nguyen et al.), as a MONAI ``DynUNet``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DynUNet

__all__ = ["SAUNet"]


class SAUNet(DynUNet):
    """U-Net of 4 levels, 16 base features, instance norm, leaky ReLU and residual blocks with multi-resolution outputs.

    Everything but the output format is MONAI's ``DynUNet`` (``res_block=True``, 3x3x3 kernels, stride-2
    downsampling, transposed-conv upsampling, instance norm with affine parameters, leaky ReLU 0.01) with
    deep-supervision heads on the second and third decoder levels. ``DynUNet`` upsamples those heads to full
    resolution and stacks them; WMLA instead compares each output with labels downsampled to its own resolution, so
    in training mode this class returns the list ``[main, level_2, level_3]`` at full, 1/2 and 1/4 resolution
    (for :class:`common.losses.MultiResolutionLoss`). In eval mode it returns the main output only.

    Spatial sizes must be divisible by ``2 ** (len(filters) - 1)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        filters: Sequence[int] = (16, 32, 64, 128),
        deep_supervision: bool = True,
        deep_supr_num: int = 2,
        dropout: float | None = None,
        spatial_dims: int = 3,
    ) -> None:
        """Build the network.

        Args:
            in_channels: number of input channels (modalities).
            out_channels: number of classes (logit channels of every output).
            filters: features of each level from full resolution down; its length is the number of levels.
            deep_supervision: whether training mode also returns the coarser outputs.
            deep_supr_num: number of coarser outputs (levels 2 .. deep_supr_num + 1); must be below
                ``len(filters) - 1``.
            dropout: dropout probability inside the blocks (``None`` for none, as in the paper).
            spatial_dims: 3 for volumes, 2 for slices.
        """
        levels = len(filters)
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=[3] * levels,
            strides=[1] + [2] * (levels - 1),
            upsample_kernel_size=[2] * (levels - 1),
            filters=list(filters),
            dropout=dropout,
            deep_supervision=deep_supervision,
            deep_supr_num=deep_supr_num,
            res_block=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` (B, in_channels, *spatial).

        Returns:
            Eval mode or ``deep_supervision=False``: logits (B, out_channels, *spatial). Training mode:
            ``[main, *heads]``, head ``k`` (1-based) at the spatial size divided by ``2 ** k``.
        """
        main = self.output_block(self.skip_layers(x))
        if self.training and self.deep_supervision:
            return [main, *self.heads]
        return main

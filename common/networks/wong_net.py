"""The 3D network of Wong et al. 2018 (arXiv 1809.00076), built from MONAI blocks.

Paper: "3D Segmentation with Exponential Logarithmic Loss for Highly Unbalanced Object Sizes".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ResidualUnit, UpSample
from monai.networks.layers.factories import Conv, Dropout, Pool
from torch import nn

__all__ = ["GaussianNoise", "WongNet3D"]


class GaussianNoise(nn.Module):
    """Adds zero-mean Gaussian noise of a fixed standard deviation in training mode; identity in eval mode.

    The layer form of Keras' ``GaussianNoise``, which the paper places on the network input. MONAI only has noise
    as a data transform (``RandGaussianNoise``), which would also perturb the validation inputs.
    """

    def __init__(self, std: float) -> None:
        """Initialise the layer.

        Args:
            std: standard deviation of the noise, in the units of the input intensities.

        Raises:
            ValueError: if ``std`` is negative.
        """
        super().__init__()
        if std < 0:
            raise ValueError(f"GaussianNoise std must be >= 0, got {std}.")
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` plus noise in training mode, ``x`` unchanged in eval mode."""
        if self.training and self.std > 0:
            return x + torch.randn_like(x) * self.std
        return x


class WongNet3D(nn.Module):
    """Encoder-decoder of residual blocks with concatenated skips and deep supervision (Wong et al. 2018).

    Each level is a block of ``convs_per_block[l]`` cascading 3x3x3 conv + batch norm + ReLU layers with
    ``channels[l]`` channels plus an additive 1x1x1 convolution of the block input (MONAI ``ResidualUnit``: its
    residual path is a 1x1x1 conv whenever the channel count changes, which it does in every block here).
    Channels double after each 2x max pooling; the decoder halves the channels with a 1x1x1 conv, upsamples by
    nearest-neighbour repetition (as Keras' ``UpSampling3D``; fewer parameters than a transposed conv),
    concatenates the encoder features of the same level and applies a block. Gaussian noise is added to the
    input and dropout follows the widest (bottom) block, both only in training mode. Deep supervision heads
    (1x1x1 convs) read every decoder block except the full-resolution one (which feeds the main 1x1x1 output conv);
    the widest block has no head. The outputs are logits: the paper's final softmax belongs to the loss and the
    post-processing, as usual in MONAI.

    In training mode ``forward`` returns ``[main, ds_1, ..., ds_K]`` at decreasing resolutions (full, 1/2, 1/4, ...),
    which :class:`common.losses.MultiResolutionLoss` consumes; in eval mode it returns the main output only, which
    is what ``sliding_window_inference`` and the bundle's ``verify_net_in_out`` expect. With the defaults, 1 input
    channel and 20 classes the network has about 5.4 M parameters. ``spatial_dims=2`` gives the 2D variant
    (3x3 convs, same topology).

    Spatial sizes must be divisible by ``2 ** (len(channels) - 1)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 20,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        convs_per_block: Sequence[int] = (1, 2, 2, 2, 2),
        noise_std: float = 0.1,
        dropout: float = 0.5,
        deep_supervision: bool = True,
        spatial_dims: int = 3,
    ) -> None:
        """Build the network.

        Args:
            in_channels: number of input channels.
            out_channels: number of classes (logit channels of every output).
            channels: channels of the blocks from the full-resolution level down to the widest, bottom level.
            convs_per_block: number of 3x3x3 conv layers of the block of each level (encoder and decoder alike).
            noise_std: standard deviation of the Gaussian noise added to the input in training mode (0 disables).
            dropout: dropout probability after the widest block in training mode (0 disables).
            deep_supervision: whether training mode also returns the deep-supervision outputs.
            spatial_dims: 3 for volumes, 2 for the slice-wise variant.

        Raises:
            ValueError: if ``channels`` and ``convs_per_block`` differ in length or have fewer than 2 levels.
        """
        super().__init__()
        if len(channels) != len(convs_per_block) or len(channels) < 2:
            raise ValueError(
                "WongNet3D needs channels and convs_per_block of the same length >= 2, got "
                f"{tuple(channels)} and {tuple(convs_per_block)}."
            )
        self.deep_supervision = deep_supervision
        self.noise = GaussianNoise(noise_std)

        def block(in_ch: int, out_ch: int, convs: int) -> ResidualUnit:
            return ResidualUnit(
                spatial_dims, in_ch, out_ch, kernel_size=3, subunits=convs, act="RELU", norm="BATCH", adn_ordering="NA"
            )

        self.encoder = nn.ModuleList()
        previous = in_channels
        for width, convs in zip(channels, convs_per_block, strict=True):
            self.encoder.append(block(previous, width, convs))
            previous = width
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout)

        # decoder modules are stored from the deepest decoder level (len(channels) - 2) up to full resolution (0)
        decoder_levels = range(len(channels) - 2, -1, -1)
        self.upsamples = nn.ModuleList(
            UpSample(
                spatial_dims,
                channels[level + 1],
                channels[level],
                scale_factor=2,
                mode="nontrainable",
                interp_mode="nearest",
                align_corners=None,
            )
            for level in decoder_levels
        )
        self.decoder = nn.ModuleList(
            block(2 * channels[level], channels[level], convs_per_block[level]) for level in decoder_levels
        )
        conv = Conv[Conv.CONV, spatial_dims]
        self.output_conv = conv(channels[0], out_channels, kernel_size=1)
        self.heads = nn.ModuleList(conv(channels[level], out_channels, kernel_size=1) for level in decoder_levels[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Segment ``x`` (B, in_channels, *spatial).

        Returns:
            Eval mode or ``deep_supervision=False``: logits (B, out_channels, *spatial). Training mode:
            ``[main, ds_1, ..., ds_K]`` where ``ds_k`` has the spatial size divided by ``2 ** k``.
        """
        features = self.noise(x)
        skips = []
        for level, encoder_block in enumerate(self.encoder):
            if level > 0:
                features = self.pool(features)
            features = encoder_block(features)
            skips.append(features)
        features = self.dropout(skips.pop())

        decoder_outputs = []
        for upsample, decoder_block in zip(self.upsamples, self.decoder, strict=True):
            features = decoder_block(torch.cat([upsample(features), skips.pop()], dim=1))
            decoder_outputs.append(features)
        main = self.output_conv(features)
        if not (self.training and self.deep_supervision):
            return main
        # heads were built from the deepest level upwards; outputs are returned from fine to coarse
        coarse_outputs = [head(out) for head, out in zip(self.heads, decoder_outputs[:-1], strict=True)]
        return [main, *coarse_outputs[::-1]]

"""The 3D network of Wong et al. 2018 (arXiv 1809.00076), built from MONAI blocks.

Paper: "3D Segmentation with Exponential Logarithmic Loss for Highly Unbalanced Object Sizes", Sec. 2.1 and Fig. 1.
"""

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


def _block(spatial_dims: int, in_channels: int, out_channels: int, convs: int) -> ResidualUnit:
    """The paper's Block(n, k): k cascading 3x3x3 conv + BN + ReLU layers plus an additive 1x1x1 conv skip.

    MONAI's ``ResidualUnit`` has exactly this form; its residual path is a 1x1x1 conv whenever the channel count
    changes, which it does in every block of this network.
    """
    return ResidualUnit(
        spatial_dims,
        in_channels,
        out_channels,
        kernel_size=3,
        subunits=convs,
        act="RELU",
        norm="BATCH",
        adn_ordering="NA",
    )


def _nearest_upsample(spatial_dims: int, in_channels: int, out_channels: int, scale: int) -> UpSample:
    """Keras' ``UpSampling3D`` (voxel repetition), preceded by a 1x1x1 conv when the channel count changes."""
    return UpSample(
        spatial_dims,
        in_channels,
        out_channels,
        scale_factor=scale,
        mode="nontrainable",
        interp_mode="nearest",
        align_corners=None,
    )


class _DecoderLevel(nn.Module):
    """One decoder level: upsample by 2 and halve the channels, concatenate the encoder features, apply a block."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, convs: int) -> None:
        super().__init__()
        self.upsample = _nearest_upsample(spatial_dims, in_channels, out_channels, 2)
        self.block = _block(spatial_dims, 2 * out_channels, out_channels, convs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.upsample(x), skip], dim=1))


class WongNet3D(nn.Module):
    """Encoder-decoder of residual blocks with concatenated skips and deep supervision (Wong et al. 2018, Fig. 1).

    What the text fixes: blocks of ``k`` cascading 3x3x3 conv + BN + ReLU layers with ``n`` channels and an additive
    1x1x1 conv skip; ``n`` doubled after each 2x max pooling and halved after each upsampling; more layers in the
    blocks of smaller tensors; encoder features concatenated in the decoder; a Gaussian noise layer and a dropout
    layer; the widest block is Block(192, 3); about 5 M parameters; a final 1x1x1 conv + softmax.

    Deep supervision as the paper describes it: "we omit the tensor from the block with the most channels
    (Block(192, 3)) so that training can be performed on a GPU with 12 GB", and one loss on one final layer. The
    output tensors of the decoder blocks at 1/2, 1/4, ... resolution are upsampled to full resolution (voxel
    repetition) and concatenated with the full-resolution decoder output before the final 1x1x1 conv, which gives
    every decoder level a direct path to the loss; the bottom (widest) block's tensor is not. This is why the
    widest tensor matters for memory (at 128^3 it alone would be 192 channels of 2 M voxels) and why the paper
    gives no per-output loss weights. The network thus returns one tensor in training and inference alike, and
    ``deep_supervision=False`` drops the upsampled paths (a narrower final conv: a different network). The final
    conv is applied part by part, each decoder tensor at its own resolution (``_fused_output``): the same values
    without the 180 full-resolution channels, held twice, of the concatenation (at 128^3 the forward pass peaks at
    1.3 GB instead of 5.2 GB with 20 classes).

    Left open by the paper (the figure's details are not in its text), chosen here: 5 levels with channels
    ``(12, 24, 48, 96, 192)`` and convolutions per block ``(1, 2, 3, 3, 3)`` (4.67 M parameters with 20 classes),
    nearest-neighbour upsampling with a 1x1x1 conv halving the channels, noise std 0.1 on the input, dropout 0.5
    after the widest block. The outputs are logits: the softmax belongs to the loss and the post-processing, as
    usual in MONAI. ``spatial_dims=2`` gives the slice-wise variant.

    Spatial sizes must be divisible by ``2 ** (len(channels) - 1)``.
    """

    # declared on the class (and no `from __future__ import annotations` in this module): TorchScript can neither
    # infer the type of an empty list nor read a postponed annotation
    supervised_channels: list[int]
    supervised_scales: list[int]

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 20,
        channels: Sequence[int] = (12, 24, 48, 96, 192),
        convs_per_block: Sequence[int] = (1, 2, 3, 3, 3),
        noise_std: float = 0.1,
        dropout: float = 0.5,
        deep_supervision: bool = True,
        spatial_dims: int = 3,
    ) -> None:
        """Build the network.

        Args:
            in_channels: number of input channels.
            out_channels: number of classes (logit channels).
            channels: channels of the blocks from the full-resolution level down to the widest, bottom level.
            convs_per_block: number of 3x3x3 conv layers of the block of each level (encoder and decoder alike).
            noise_std: standard deviation of the Gaussian noise added to the input in training mode (0 disables).
            dropout: dropout probability after the widest block in training mode (0 disables).
            deep_supervision: concatenate the upsampled outputs of the decoder blocks below full resolution
                (all but the widest block's) into the final layer.
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
        self.encoder = nn.ModuleList()
        previous = in_channels
        for width, convs in zip(channels, convs_per_block, strict=True):
            self.encoder.append(_block(spatial_dims, previous, width, convs))
            previous = width
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2)
        self.dropout = Dropout[Dropout.DROPOUT, spatial_dims](dropout)
        decoder_levels = range(len(channels) - 2, -1, -1)  # from the deepest decoder level up to full resolution
        self.decoder = nn.ModuleList(
            _DecoderLevel(spatial_dims, channels[level + 1], channels[level], convs_per_block[level])
            for level in decoder_levels
        )
        # the decoder outputs below full resolution, deepest first: their channels and upsampling factors
        supervised_levels = list(decoder_levels[:-1]) if deep_supervision else []
        self.supervised_channels = [channels[level] for level in supervised_levels]
        self.supervised_scales = [2**level for level in supervised_levels]
        final_channels = channels[0] + sum(self.supervised_channels)
        # the final 1x1x1 conv over all of them; its weights are applied part by part (_fused_output)
        self.output_conv = Conv[Conv.CONV, spatial_dims](final_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` (B, in_channels, *spatial) into logits (B, out_channels, *spatial)."""
        features = self.noise(x)
        skips: list[torch.Tensor] = []
        for level, encoder_block in enumerate(self.encoder):
            if level > 0:
                features = self.pool(features)
            features = encoder_block(features)
            skips.append(features)
        features = self.dropout(skips.pop())
        decoded: list[torch.Tensor] = []
        for decoder_level in self.decoder:
            features = decoder_level(features, skips.pop())
            decoded.append(features)
        return self._fused_output(features, decoded)

    def _fused_output(self, features: torch.Tensor, decoded: list[torch.Tensor]) -> torch.Tensor:
        """The final 1x1x1 conv of ``cat([features, upsample(decoded[0]), ...])``, without building that tensor.

        The conv splits into one term per concatenated part, and a 1x1x1 conv commutes with voxel repetition, so
        each lower-resolution part is projected to the classes at its own resolution and added, repeated, into
        the output in place. The values are those of the concatenated form (up to float rounding), without its
        full-resolution copies of every decoder level: 180 channels at 128^3 held twice, 3 GB at inference.
        """
        weight = self.output_conv.weight.flatten(1)  # (classes, final channels)
        reach = features.shape[1]
        output = self._project(features, weight[:, :reach], self.output_conv.bias)
        for index, scale in enumerate(self.supervised_scales):
            width = self.supervised_channels[index]
            projected = self._project(decoded[index], weight[:, reach : reach + width], None)
            reach += width
            repeated_shape = [output.shape[0], output.shape[1]]  # each voxel of `projected` covers scale^d voxels
            source_shape = [output.shape[0], output.shape[1]]
            for size in projected.shape[2:]:
                repeated_shape += [size, scale]
                source_shape += [size, 1]
            output.view(repeated_shape).add_(projected.view(source_shape))
        return output

    @staticmethod
    def _project(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """A 1x1x1 conv with ``weight`` (out, in) and optional ``bias`` as a matrix product over the voxels."""
        projected = torch.matmul(weight, features.flatten(2))
        if bias is not None:
            projected.add_(bias[:, None])  # in place: at 117 classes and 128^3 a copy would be another 1 GB
        return projected.view([features.shape[0], weight.shape[0]] + list(features.shape[2:]))

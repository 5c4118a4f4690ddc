from __future__ import annotations

import pytest
import torch
from monai.networks.blocks import UnetResBlock
from torch import nn

from common.losses import ExpLogLoss, MultiResolutionLoss
from common.networks import GaussianNoise, SAUNet, WongNet3D


def _parameter_count(network: nn.Module) -> int:
    return sum(parameter.numel() for parameter in network.parameters())


def test_wong_net_parameter_count():
    assert 4.5e6 <= _parameter_count(WongNet3D(in_channels=1, out_channels=20)) <= 5.5e6


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_wong_net_output_shapes(spatial_dims):
    torch.manual_seed(0)
    network = WongNet3D(in_channels=2, out_channels=5, spatial_dims=spatial_dims)
    image = torch.randn(2, 2, *([16] * spatial_dims))
    outputs = network.train()(image)
    assert [tuple(output.shape) for output in outputs] == [(2, 5, *([16 // 2**k] * spatial_dims)) for k in range(4)]
    with torch.no_grad():
        assert network.eval()(image).shape == (2, 5, *([16] * spatial_dims))
    network.deep_supervision = False
    assert network.train()(image).shape == (2, 5, *([16] * spatial_dims))


def test_wong_net_blocks_follow_the_paper():
    network = WongNet3D()
    first_block, second_block = network.encoder[0], network.encoder[1]
    assert isinstance(first_block.residual, nn.Conv3d) and first_block.residual.kernel_size == (1, 1, 1)
    assert len(first_block.conv) == 1 and len(second_block.conv) == 2
    assert any(isinstance(module, nn.BatchNorm3d) for module in second_block.modules())
    assert [block.conv[0].conv.out_channels for block in network.encoder] == [16, 32, 64, 128, 256]
    assert len(network.heads) == 3  # every decoder level but full resolution; the widest block has none


def test_gaussian_noise_only_in_training():
    torch.manual_seed(0)
    noise, image = GaussianNoise(0.5), torch.zeros(1000)
    assert torch.equal(noise.eval()(image), image)
    assert noise.train()(image).std().item() == pytest.approx(0.5, rel=0.1)
    with pytest.raises(ValueError, match="std"):
        GaussianNoise(-1.0)


def test_wong_net_rejects_mismatched_configuration():
    with pytest.raises(ValueError, match="same length"):
        WongNet3D(channels=(8, 16, 32), convs_per_block=(1, 2))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sa_unet_output_shapes_and_blocks(spatial_dims):
    torch.manual_seed(0)
    network = SAUNet(in_channels=4, out_channels=3, spatial_dims=spatial_dims)
    image = torch.randn(2, 4, *([16] * spatial_dims))
    outputs = network.train()(image)
    assert [tuple(output.shape) for output in outputs] == [(2, 3, *([16 // 2**k] * spatial_dims)) for k in range(3)]
    with torch.no_grad():
        assert network.eval()(image).shape == (2, 3, *([16] * spatial_dims))
    assert len(network.downsamples) + 1 == 3 and network.filters == [16, 32, 64, 128]  # 4 levels with the bottleneck
    assert isinstance(network.input_block, UnetResBlock)
    assert any(isinstance(module, nn.InstanceNorm3d | nn.InstanceNorm2d) for module in network.modules())
    assert any(isinstance(module, nn.LeakyReLU) for module in network.modules())


# narrower than the defaults to keep the tests fast; the topology is the same
SMALL_NETWORKS = [
    pytest.param(WongNet3D, {"channels": (4, 8, 16, 32, 64)}, id="WongNet3D"),
    pytest.param(SAUNet, {"filters": (4, 8, 16, 32)}, id="SAUNet"),
]


@pytest.mark.parametrize(("network_class", "widths"), SMALL_NETWORKS)
def test_training_outputs_feed_multi_resolution_loss(network_class, widths):
    torch.manual_seed(0)
    network = network_class(in_channels=1, out_channels=3, **widths).train()
    labels = torch.randint(0, 3, (2, 1, 16, 16, 16))
    loss = MultiResolutionLoss(ExpLogLoss(to_onehot_y=True), alpha=(1.0, 0.1, 0.01, 0.001))
    loss(network(torch.randn(2, 1, 16, 16, 16)), labels).backward()
    assert all(torch.isfinite(parameter.grad).all() for parameter in network.parameters() if parameter.grad is not None)


@pytest.mark.filterwarnings("ignore:The tensor attributes")  # DynUNet stores its heads as plain attributes
@pytest.mark.parametrize(("network_class", "widths"), SMALL_NETWORKS)
def test_eval_path_exports(network_class, widths):
    torch.manual_seed(0)
    network = network_class(in_channels=1, out_channels=3, **widths).eval()
    image = torch.randn(1, 1, 16, 16, 16)
    exported = torch.export.export(network, (image,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(image), network(image))

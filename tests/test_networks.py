"""The papers' networks: topology, deep supervision, outputs and TorchScript export (as the model zoo runs it)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from monai.networks.blocks import UnetResBlock
from torch import nn

from common.losses import MultiResolutionLoss, SADiceLoss
from common.networks import GaussianNoise, SAUNet, WongNet3D

TINY_WONG = {"channels": (2, 4, 4, 8, 8), "convs_per_block": (1, 2, 3, 3, 3)}
TINY_SA_UNET = {"filters": (4, 8, 8, 8, 8)}


def _parameter_count(network: nn.Module) -> int:
    return sum(parameter.numel() for parameter in network.parameters())


def test_wong_net_follows_the_paper():
    network = WongNet3D(in_channels=1, out_channels=20)
    assert 4.5e6 <= _parameter_count(network) <= 5.5e6  # "around 5 million parameters"
    widths = [block.conv[0].conv.out_channels for block in network.encoder]
    convs = [len(block.conv) for block in network.encoder]
    assert (widths[-1], convs[-1]) == (192, 3) and max(widths) == 192  # the widest block is Block(192, 3)
    assert all(later == 2 * earlier for earlier, later in zip(widths[:-1], widths[1:], strict=True))
    assert convs == sorted(convs)  # more layers in the blocks of smaller tensors
    first_block = network.encoder[0]
    assert isinstance(first_block.residual, nn.Conv3d) and first_block.residual.kernel_size == (1, 1, 1)
    assert any(isinstance(module, nn.BatchNorm3d) for module in first_block.modules())
    # deep supervision: every decoder tensor reaches the final 1x1x1 conv except the widest block's (192)
    assert network.output_conv.in_channels == 12 + 24 + 48 + 96
    assert WongNet3D(deep_supervision=False).output_conv.in_channels == 12


def test_wong_net_deep_supervision_concatenates_the_upsampled_decoder_tensors():
    torch.manual_seed(0)
    network = WongNet3D(in_channels=1, out_channels=3, **TINY_WONG).eval()
    decoded = []
    for level in network.decoder:
        level.register_forward_hook(lambda module, inputs, output: decoded.append(output))
    image = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        logits = network(image)
    # decoded: 1/8, 1/4, 1/2 and full resolution; voxel repetition brings each to 32^3
    upsampled = [
        tensor.repeat_interleave(32 // tensor.shape[-1], 2)
        .repeat_interleave(32 // tensor.shape[-1], 3)
        .repeat_interleave(32 // tensor.shape[-1], 4)
        for tensor in decoded[:-1]
    ]
    expected = F.conv3d(torch.cat([decoded[-1], *upsampled], 1), network.output_conv.weight, network.output_conv.bias)
    torch.testing.assert_close(logits, expected)


def _concatenated_wong_net_output(network: WongNet3D, image: torch.Tensor) -> torch.Tensor:
    """The paper's form, written out: every decoder tensor repeated to full resolution, concatenated, 1x1x1 conv."""
    decoded = []
    hooks = [
        level.register_forward_hook(lambda module, inputs, output: decoded.append(output)) for level in network.decoder
    ]
    network(image)
    for hook in hooks:
        hook.remove()
    upsampled = [F.interpolate(tensor, size=image.shape[2:], mode="nearest") for tensor in decoded[:-1]]
    return F.conv3d(torch.cat([decoded[-1], *upsampled], 1), network.output_conv.weight, network.output_conv.bias)


def test_wong_net_fused_output_trains_like_the_concatenated_form():
    # the output is computed part by part without the concatenated tensor: same values and gradients in training
    torch.manual_seed(0)
    network = WongNet3D(in_channels=1, out_channels=3, noise_std=0.0, dropout=0.0, **TINY_WONG).train()
    image = torch.randn(2, 1, 32, 32, 32)
    gradients = []
    for forward in (network, lambda batch: _concatenated_wong_net_output(network, batch)):
        network.zero_grad()
        logits = forward(image)
        (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
        gradients.append(torch.cat([parameter.grad.flatten() for parameter in network.parameters()]))
    scale = gradients[1].abs().max()
    assert scale > 0
    torch.testing.assert_close(gradients[0] / scale, gradients[1] / scale, atol=1e-5, rtol=0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_wong_net_returns_one_output_in_training_and_inference(spatial_dims):
    torch.manual_seed(0)
    network = WongNet3D(in_channels=2, out_channels=5, spatial_dims=spatial_dims, **TINY_WONG)
    image = torch.randn(2, 2, *([32] * spatial_dims))
    assert network.train()(image).shape == (2, 5, *([32] * spatial_dims))
    with torch.no_grad():
        assert network.eval()(image).shape == (2, 5, *([32] * spatial_dims))


def test_gaussian_noise_only_in_training():
    torch.manual_seed(0)
    noise, image = GaussianNoise(0.5), torch.zeros(1000)
    assert torch.equal(noise.eval()(image), image)
    assert noise.train()(image).std().item() == pytest.approx(0.5, rel=0.1)
    with pytest.raises(ValueError, match="std"):
        GaussianNoise(-1.0)


def test_networks_reject_mismatched_configuration():
    with pytest.raises(ValueError, match="same length"):
        WongNet3D(channels=(8, 16, 32), convs_per_block=(1, 2))
    with pytest.raises(ValueError, match=r"deep_supr_num must lie in \[1, 2\]"):
        SAUNet(filters=(4, 8, 16, 32), deep_supr_num=3)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sa_unet_outputs_and_blocks(spatial_dims):
    torch.manual_seed(0)
    network = SAUNet(in_channels=4, out_channels=3, spatial_dims=spatial_dims, **TINY_SA_UNET)
    image = torch.randn(2, 4, *([32] * spatial_dims))
    outputs = network.train()(image)
    assert [tuple(output.shape) for output in outputs] == [(2, 3, *([32 // 2**k] * spatial_dims)) for k in range(3)]
    with torch.no_grad():
        assert network.eval()(image).shape == (2, 3, *([32] * spatial_dims))
    assert isinstance(network.encoder[0], UnetResBlock)
    assert any(isinstance(module, nn.InstanceNorm3d | nn.InstanceNorm2d) for module in network.modules())
    assert any(isinstance(module, nn.LeakyReLU) for module in network.modules())


def test_sa_unet_defaults_are_four_contractions_from_16_features():
    network = SAUNet(in_channels=4, out_channels=4)
    assert network.filters == [16, 32, 64, 128, 256]
    assert [block.conv1.conv.stride for block in network.encoder] == [(1, 1, 1)] + [(2, 2, 2)] * 4


def test_sa_unet_without_deep_supervision_has_no_heads_and_loads_the_trained_weights():
    trained = SAUNet(in_channels=1, out_channels=3, **TINY_SA_UNET)
    inference = SAUNet(in_channels=1, out_channels=3, deep_supervision=False, **TINY_SA_UNET)
    heads = {key for key in trained.state_dict() if key.startswith("deep_supervision_heads.")}
    assert heads and not any("head" in key for key in inference.state_dict())
    assert set(trained.state_dict()) - heads == set(inference.state_dict())
    inference.load_state_dict({key: value for key, value in trained.state_dict().items() if key not in heads})
    image = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(inference.eval()(image), trained.eval()(image))
        assert inference.train()(image).shape == (1, 3, 32, 32, 32)  # one tensor in training mode too


def test_sa_unet_training_outputs_feed_multi_resolution_loss():
    torch.manual_seed(0)
    network = SAUNet(in_channels=1, out_channels=3, **TINY_SA_UNET).train()
    labels = torch.randint(0, 3, (2, 1, 32, 32, 32))
    loss = MultiResolutionLoss(SADiceLoss(to_onehot_y=True, softmax=True), alpha=(1.0, 0.1, 0.01))
    loss(network(torch.randn(2, 1, 32, 32, 32)), labels).backward()
    assert all(torch.isfinite(parameter.grad).all() for parameter in network.parameters() if parameter.grad is not None)
    assert all(head.conv.conv.weight.grad.abs().sum() > 0 for head in network.deep_supervision_heads)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "network",
    [
        pytest.param(lambda: WongNet3D(in_channels=1, out_channels=3, **TINY_WONG), id="WongNet3D"),
        pytest.param(
            lambda: WongNet3D(in_channels=1, out_channels=3, deep_supervision=False, **TINY_WONG),
            id="WongNet3D-no-deep-supervision",
        ),
        pytest.param(
            lambda: SAUNet(in_channels=1, out_channels=3, deep_supervision=False, **TINY_SA_UNET), id="SAUNet"
        ),
        pytest.param(lambda: SAUNet(in_channels=1, out_channels=3, **TINY_SA_UNET), id="SAUNet-deep-supervision"),
    ],
)
def test_networks_script_with_torchscript(network, tmp_path):
    torch.manual_seed(0)
    eager = network().eval()
    torch.jit.script(eager).save(str(tmp_path / "model.ts"))  # what the zoo's ckpt_export does
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    image = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(image), eager(image))

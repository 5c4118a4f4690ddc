"""Fidelity to the papers and the authors' code (issue 20): one test per class of fault found there.

Values are derived independently: the dense RW form against the compact one, closed-form label frequencies, the
paper's split proportions, nnU-Net's deep-supervision weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandAffined, RandZoomd, SpatialPadd
from scipy import ndimage

from common.losses import RegionWiseLoss, RWCombinedLoss, RWWeightedCrossEntropyLoss
from common.transforms import RRWMapd


def blob_label(shape: tuple[int, ...], num_classes: int, seed: int) -> np.ndarray:
    """Piecewise-constant random label (upsampled random grid)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, num_classes, size=tuple(max(s // 3, 1) for s in shape))
    label = ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape, strict=True)], order=0)
    return label[tuple(slice(0, s) for s in shape)]


def augmented_targets(
    shape: tuple[int, ...], num_classes: int, seed: int, class_weights: list[float] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense [label, map], compact [label, own value]) after the bundles' padding, rotation and zoom.

    As in the RW bundles: the map is computed on the whole label, padded with it, concatenated with the label into
    one target, which the spatial transforms then move by nearest neighbour with zero padding.
    """
    label = blob_label(shape, num_classes, seed)[None].astype(np.float32)
    dense = RRWMapd(num_classes=num_classes, class_weights=class_weights)({"label": label})["rw_map"]
    compact = RRWMapd(num_classes=num_classes, compact=True)({"label": label})["rw_map"]
    padded = [s + 6 for s in shape]
    pipeline = Compose(
        [
            SpatialPadd(keys="target", spatial_size=padded),
            RandAffined(
                keys="target",
                prob=1.0,
                rotate_range=[0.6] * (1 if len(shape) == 2 else 3),
                scale_range=[0.2] * len(shape),
                mode="nearest",
                padding_mode="zeros",
            ),
            RandZoomd(keys="target", prob=1.0, min_zoom=0.7, max_zoom=0.8, mode="nearest", padding_mode="constant"),
        ]
    )
    targets = []
    for rw_map in (dense, compact):
        pipeline.set_random_state(seed=seed)
        out = pipeline({"target": np.concatenate([label, np.asarray(rw_map)], axis=0)})["target"]
        targets.append(torch.as_tensor(np.asarray(out))[None].float())
    return targets[0], targets[1]


def value_and_gradient(loss: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor):
    x = logits.clone().requires_grad_(True)
    value = loss(x, target)
    value.sum().backward()
    return value.detach(), x.grad


def loss_pairs(num_classes: int, class_weights: list[float] | None):
    """(dense loss, compact loss, whether the dense loss reads [label, map]) for every RW loss and setting."""
    pairs = []
    for include_background in (True, False):
        for reduction in ("mean", "sum", "none"):
            options = {"include_background": include_background, "reduction": reduction}
            pairs.append(
                (RegionWiseLoss(**options), RegionWiseLoss(compact=True, class_weights=class_weights, **options), False)
            )
    for region in ("dice", "ce"):
        for schedule in ("equal", "gradual"):
            dense, compact = (
                RWCombinedLoss(region, schedule),
                RWCombinedLoss(region, schedule, compact=True, class_weights=class_weights),
            )
            dense.set_epoch(40), compact.set_epoch(40)
            pairs.append((dense, compact, True))
    for reduction in ("mean", "none"):
        pairs.append((RWWeightedCrossEntropyLoss(reduction), RWWeightedCrossEntropyLoss(reduction, compact=True), True))
    return pairs


@pytest.mark.parametrize(("shape", "seed"), [((14, 12), 0), ((10, 9, 7), 1)])
@pytest.mark.parametrize("class_weights", [None, [0.5, 2.0, 1.5]])
@pytest.mark.parametrize("ignored", [False, True])
def test_compact_and_dense_rw_losses_agree_at_padding_and_ignored_voxels(shape, seed, class_weights, ignored):
    dense_target, compact_target = augmented_targets(shape, 3, seed, class_weights)
    padding = (dense_target[:, 1:] == 0).all(dim=1)
    assert padding.any() and (~padding).any()  # the augmented patch holds padding and real voxels
    assert torch.equal(padding, compact_target[:, 1] == 0)  # a real compact value is never 0
    assert (dense_target[:, 0][padding] == 0).all()  # padding is label 0
    if ignored:  # a voxel to ignore: its map set to 0 in both forms, whatever its label
        mask = torch.zeros_like(padding)
        mask[(slice(None), *(slice(2, 5),) * len(shape))] = True
        dense_target[:, 1:][mask[:, None].expand_as(dense_target[:, 1:])] = 0
        compact_target[:, 1][mask] = 0
    torch.manual_seed(seed)
    logits = torch.randn(1, 3, *dense_target.shape[2:]) * 3
    for dense_loss, compact_loss, takes_label in loss_pairs(3, class_weights):
        dense_value, dense_gradient = value_and_gradient(
            dense_loss, logits, dense_target if takes_label else dense_target[:, 1:]
        )
        compact_value, compact_gradient = value_and_gradient(compact_loss, logits, compact_target)
        torch.testing.assert_close(compact_value, dense_value, atol=1e-6, rtol=0)
        torch.testing.assert_close(compact_gradient, dense_gradient, atol=1e-6, rtol=0)


def test_padding_gives_no_rw_loss_and_counts_in_the_voxel_mean():
    label = torch.tensor([[[[0.0, 1.0, 0.0]]]])  # (B, 1, 1, 3): the last voxel is padding
    compact = torch.cat([label, torch.tensor([[[[-1.0, -1.0, 0.0]]]])], dim=1)
    logits = torch.tensor([[[[0.0, 0.0, 5.0]], [[0.0, 0.0, -5.0]]]])
    # p = 0.5 at the two real voxels: each gives 0.5 * 1 + 0.5 * (-1) = 0; padding gives 0; mean over 2 x 3
    assert RegionWiseLoss(compact=True)(logits, compact).item() == pytest.approx(0.0, abs=1e-7)
    weights = RegionWiseLoss(compact=True, class_weights=[3.0, 1.0])(logits, compact).item()
    assert weights == pytest.approx((0.5 * 3 - 0.5 + 0.5 * 1 - 0.5) / 6, abs=1e-7)
    # the authors' Dice: 1 - mean_c 2 sum(p y) / (sum(p + y) + 1e-6), padding is background for it
    probabilities = torch.softmax(logits, dim=1)[0, :, 0]
    onehot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    authors = 1 - torch.mean(2 * (probabilities * onehot).sum(1) / ((probabilities + onehot).sum(1) + 1e-6))
    combined = RWCombinedLoss("dice", "gradual", compact=True)  # alpha = 1: the Dice term alone
    assert combined(logits, compact).item() == pytest.approx(authors.item(), abs=1e-7)


def test_active_contour_maps_have_no_compact_form():
    from common.maps import active_contour_map
    from common.transforms import ActiveContourMapd

    with pytest.raises(ValueError, match="no compact form"):
        active_contour_map(np.zeros((3, 3), int), 2, compact=True)
    with pytest.raises(ValueError, match="no compact form"):
        ActiveContourMapd(num_classes=2, compact=True)


def test_exp_log_label_weights_count_training_indices_on_the_network_grid(tmp_path):
    import nibabel as nib
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, MapLabelValued

    from common.losses import label_weights_from_datalist

    raw = np.zeros((4, 4, 2), dtype=np.uint8)  # 32 voxels: 20 of 0, 8 of value 10, 4 of value 20
    raw[:2, :2, :] = 10
    raw[2:, :1, :] = 20
    path = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(raw, np.eye(4)), path)
    items = [{"label": str(path)}]

    def weights(orig, target, num_classes, pad=None):
        steps = [LoadImaged("label", image_only=True), EnsureChannelFirstd("label")]
        steps.append(MapLabelValued("label", orig_labels=orig, target_labels=target))
        if pad:
            steps.append(SpatialPadd("label", spatial_size=pad))
        return label_weights_from_datalist(items, num_classes, transform=Compose(steps))

    with pytest.raises(ValueError, match=r"outside \[0, 2\]"):  # the raw values are not class indices
        label_weights_from_datalist(items, 3)
    # non-contiguous values 0/10/20 -> 0/1/2: w_l = sqrt(32 / f_l)
    np.testing.assert_allclose(weights([0, 10, 20], [0, 1, 2], 3), np.sqrt(32 / np.array([20, 8, 4])))
    # --labels reordering (20 first): the weights follow the training index, not the raw value
    np.testing.assert_allclose(weights([0, 20, 10], [0, 1, 2], 3), np.sqrt(32 / np.array([20, 4, 8])))
    # merged labels (10 and 20 -> 1)
    np.testing.assert_allclose(weights([0, 10, 20], [0, 1, 1], 2), np.sqrt(32 / np.array([20, 12])))
    # padding to the network's grid (4 x 4 x 4: 32 more voxels) counts as background
    np.testing.assert_allclose(weights([0, 10, 20], [0, 1, 2], 3, (4, 4, 4)), np.sqrt(64 / np.array([52, 8, 4])))


def test_sadice_split_has_the_papers_proportions_by_default():
    import argparse

    from common.data.splits import add_split_arguments, make_split

    parser = argparse.ArgumentParser()
    add_split_arguments(parser)
    cases = [{"subject": f"s{index:03d}"} for index in range(274)]  # BraTS 2017 HGG + LGG as the paper counts
    validated = []
    for fold in range(10):
        split = make_split(cases, parser.parse_args(["--split", "sadice", "--fold", str(fold)]), None)
        assert set(split.sections) == {"training", "validation"}
        assert len(split.sections["training"]) in (246, 247) and len(split.sections["validation"]) in (27, 28)
        validated += [case["subject"] for case in split.sections["validation"]]
    assert sorted(validated) == sorted(case["subject"] for case in cases)  # the folds cover every subject once
    held_out = make_split(cases, parser.parse_args(["--split", "sadice", "--test-fraction", "0.1"]), None)
    assert len(held_out.sections["test"]) == 27  # folds inside the remaining 90 %
    assert len(held_out.sections["training"]) + len(held_out.sections["validation"]) == 247


def test_nnunet_deep_supervision_refuses_weightings_other_than_nnunets():
    from common.losses import NNUNetDeepSupervisionLoss, nnunet_deep_supervision_weights

    # nnU-Net, 5 poolings: 2^-k over 5 outputs, the lowest zeroed, normalised
    expected = np.array([1, 0.5, 0.25, 0.125, 0.0]) / 1.875
    assert nnunet_deep_supervision_weights(4, num_pool=5) == pytest.approx(expected[:4].tolist())
    for outputs in (1, 3, 5):
        with pytest.raises(ValueError, match="deep_supr_num = 3"):
            NNUNetDeepSupervisionLoss(RegionWiseLoss(), num_outputs=outputs, num_pool=5)
    with pytest.raises(ValueError, match="no weight would be left"):
        nnunet_deep_supervision_weights(1, num_pool=1)


def test_rw_bundle_networks_have_nnunets_affine_instance_norm_and_export():
    from monai.bundle import ConfigParser

    from common.networks import DeepSupervisionDynUNet

    root = __import__("pathlib").Path(__file__).resolve().parents[1] / "bundles" / "kits19_rrw" / "configs"
    tiny = {"filters": [4, 8, 8, 16, 16, 16], "patch_size": [64, 64]}
    networks = []
    for part in ("train", "inference"):
        parser = ConfigParser()
        parser.read_config(str(root / f"{part}.yaml"))
        parser.update(tiny)
        networks.append(parser.get_parsed_content("network_def"))
        assert parser.get_parsed_content("deep_supr_num" if part == "train" else "num_classes") is not None
    train_net, inference_net = networks
    assert isinstance(train_net, DeepSupervisionDynUNet)
    norms = [m for m in inference_net.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert norms and all(m.affine and m.weight is not None for m in norms)
    inference_net.load_state_dict(train_net.state_dict())  # the trained scale and shift load into the inference network
    inference_net.eval()
    scripted = torch.jit.script(inference_net)
    x = torch.randn(1, 1, 64, 64)
    torch.testing.assert_close(scripted(x), inference_net(x))

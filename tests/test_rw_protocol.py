"""The RW paper's protocol in the acdc17_*, brats18_* and kits19_* bundles (nnU-Net 2D as the authors ran it).

Checked against values derived here independently: nnU-Net's deep-supervision weights and nearest downsampling,
the authors' Dice and Focal formulas, the rectification of augmented RRW maps (sign of dL/dlogits), the schedules
per 250-iteration epoch, the zoo's default data-shape check and TorchScript of the inference network.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, verify_net_in_out
from monai.data import MetaTensor
from monai.losses import DiceLoss, FocalLoss
from monai.transforms import Compose

from common.evaluation.metrics import brats18_structures
from common.losses import (
    NNUNetDeepSupervisionLoss,
    RegionWiseLoss,
    RWCombinedLoss,
    RWWeightedCrossEntropyLoss,
    nnunet_deep_supervision_weights,
)
from common.networks import DeepSupervisionDynUNet
from common.training.alpha_schedule import AlphaScheduleHandler
from common.training.clipping import GradientClipping
from common.transforms import RWMapd

pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"
DATASETS = {"acdc17": 300, "brats18": 100, "kits19": 100}  # data set -> the paper's epochs
LOSSES = {
    "rrw": RegionWiseLoss,
    "dice": DiceLoss,
    "focal": FocalLoss,
    "rrw_ce": RWWeightedCrossEntropyLoss,
    "boundary": RWCombinedLoss,
}
RW_BUNDLES = [f"{data}_{loss}" for data in DATASETS for loss in LOSSES]
TINY = {"filters": [4, 8, 8, 16, 16, 16], "patch_size": [64, 64]}


def config(name: str, part: str = "train", **overrides: Any) -> ConfigParser:
    """The bundle's config with tiny-network overrides (and dense maps where compact ones are not available)."""
    path = BUNDLES_DIR / name / "configs" / f"{part}.yaml"
    parser = ConfigParser()
    parser.read_config(str(path))
    parser.update({**TINY, **overrides})
    return parser


def test_nnunet_weights_halve_per_level_and_sum_to_one():
    assert nnunet_deep_supervision_weights(4) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    assert nnunet_deep_supervision_weights(1) == [1.0]
    with pytest.raises(ValueError, match="at least 1"):
        nnunet_deep_supervision_weights(0)


def test_deep_supervision_loss_scores_each_output_on_the_nearest_downsampled_target():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 8, 8)).float()
    outputs = [torch.randn(2, 3, size, size) for size in (8, 4, 2)]
    dice = DiceLoss(to_onehot_y=True, softmax=True)
    # nearest-exact picks source index floor((i + 0.5) * factor): 2i + 1 for factor 2, 4i + 2 for factor 4
    expected = sum(
        weight * dice(output, target[:, :, start::step, start::step])
        for weight, output, (start, step) in zip(
            nnunet_deep_supervision_weights(3), outputs, ((0, 1), (1, 2), (2, 4)), strict=True
        )
    )
    loss = NNUNetDeepSupervisionLoss(dice, num_outputs=3)
    torch.testing.assert_close(loss(outputs, target), expected)
    torch.testing.assert_close(loss(outputs[0], target), dice(outputs[0], target))  # evaluation: one output
    with pytest.raises(ValueError, match="expected 3 deep-supervision outputs, got 2"):
        loss(outputs[:2], target)


@pytest.mark.parametrize("data", DATASETS)
def test_training_network_has_native_resolution_heads_and_inference_network_the_same_weights(data):
    train_network = config(f"{data}_rrw").get_parsed_content("network_def")
    inference_network = config(f"{data}_rrw", "inference").get_parsed_content("network_def")
    assert type(train_network) is type(inference_network) is DeepSupervisionDynUNet
    assert any(key.startswith("deep_supervision_heads.") for key in train_network.state_dict())
    assert set(train_network.state_dict()) == set(inference_network.state_dict())

    image = torch.randn(2, inference_network.in_channels, 64, 64)
    train_network.train()
    outputs = train_network(image)
    assert [tuple(output.shape[2:]) for output in outputs] == [(64, 64), (32, 32), (16, 16), (8, 8)]

    inference_network.load_state_dict(train_network.state_dict())  # strictly: models/model.pt holds the heads too
    train_network.eval(), inference_network.eval()
    scripted = torch.jit.script(inference_network)
    head_calls = []
    for head in inference_network.deep_supervision_heads:
        head.register_forward_hook(lambda module, inputs, output: head_calls.append(module))
    with torch.no_grad():
        torch.testing.assert_close(train_network(image), inference_network(image))
        torch.testing.assert_close(scripted(image), inference_network(image))
    assert not head_calls  # the heads do not run in eval mode


@pytest.mark.parametrize("data", DATASETS)
def test_metadata_shapes_pass_the_zoo_default_check(data):
    configs = BUNDLES_DIR / f"{data}_rrw" / "configs"
    verify_net_in_out(  # model-zoo ci/verify_bundle.py: defaults, n=1, full-size network
        net_id="network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.yaml"),
        device="cpu",
    )


@pytest.mark.parametrize("name", RW_BUNDLES)
def test_training_follows_nnunet_and_the_paper(name):
    data, loss_name = name.split("_", 1)
    parser = config(name, num_classes=4, in_channels=1)
    raw = parser.get()
    assert parser.get_parsed_content("epochs") == DATASETS[data]
    assert raw["train"]["trainer"]["epoch_length"] == "@iterations_per_epoch"
    assert parser.get_parsed_content("iterations_per_epoch") == 250

    optimizer = parser.get_parsed_content("optimizer")
    assert type(optimizer) is torch.optim.Adam
    assert (optimizer.defaults["lr"], optimizer.defaults["weight_decay"]) == (1e-4, 3e-5)
    scheduler = parser.get_parsed_content("lr_scheduler")
    assert (type(scheduler), scheduler.total_iters, scheduler.power) == (
        torch.optim.lr_scheduler.PolynomialLR,
        DATASETS[data],
        0.9,
    )

    loss = parser.get_parsed_content("loss")
    assert type(loss) is NNUNetDeepSupervisionLoss and type(loss.loss) is LOSSES[loss_name]
    assert loss.weights == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    handlers = parser.get_parsed_content("train#extra_handlers")
    assert type(handlers[0]) is GradientClipping and handlers[0].max_norm == 12.0
    if loss_name == "boundary":  # Dice + RW-Boundary, alpha 1 -> 0.01 by 0.01 per epoch
        assert [type(handler) for handler in handlers[1:]] == [AlphaScheduleHandler]
        assert handlers[1].loss is loss.loss and (loss.loss.region, loss.loss.schedule) == ("dice", "gradual")
    else:
        assert len(handlers) == 1

    sampling = parser.get_parsed_content("train#sampling")
    maps = [transform for transform in sampling if isinstance(transform, RWMapd)]
    if loss_name in ("dice", "focal"):  # the loss reads the label: no map computed, moved or concatenated
        assert maps == [] and parser.get_parsed_content("label_keys") == ["label"]
    else:
        assert [transform.map_type for transform in maps] == ["boundary" if loss_name == "boundary" else "rrw"]


@pytest.mark.parametrize("name", ["acdc17_rrw", "acdc17_rrw_ce", "kits19_rrw"])
def test_augmented_rrw_maps_keep_exactly_one_negative_gradient_component(name):
    """Every spatial augmentation fires; at each voxel the loss sees, only the true class's logit gets dL/dx < 0.

    The slices are sampled without the "After SqueezeDim, img.affine is ill-posed" warning of plain MONAI.
    """
    parser = config(name, num_classes=3, rotation_prob=1.0, scaling_prob=1.0, elastic_prob=1.0, samples_per_volume=4)
    pipeline = Compose(parser.get_parsed_content("train#sampling"))
    pipeline.set_random_state(seed=0)
    rng = np.random.default_rng(0)
    label = np.zeros((96, 96, 6), dtype=np.float32)
    label[20:70, 16:80] = 1
    label[30:50, 30:60, 1:5] = 2
    slice_axis = parser.get_parsed_content("slice_axis")
    label = np.moveaxis(label, 2, slice_axis)  # slices along the bundle's slice axis (8 mm apart)
    spacing = [1.5, 1.5]
    spacing.insert(slice_axis, 8.0)
    affine = np.eye(4)  # voxel axes permuted in the world (oblique scans): squeezing a MetaTensor's slice axis warns
    affine[:3, :3] = np.roll(np.eye(3), 1, axis=1) * np.array(spacing)
    sample = {
        "image": MetaTensor(rng.normal(size=(1, *label.shape)).astype(np.float32), affine=affine),
        "label": MetaTensor(label[None], affine=affine),
    }
    loss = parser.get_parsed_content("loss#loss")
    target_key = parser.get_parsed_content("target_key")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = pipeline(sample)
    assert not [warning for warning in caught if "ill-posed" in str(warning.message)]  # 2D slices carry no affine
    for item in items:
        target = torch.as_tensor(item[target_key])[None]
        # the label is the target's channel 0; a dense map alone as target (pre-compact RegionWiseLoss): its minimum
        dense_map_alone = target.shape[1] == 3  # num_classes channels
        true_class = target.argmin(dim=1, keepdim=True) if dense_map_alone else target[:, :1].long()
        assert target.shape[2:] == (64, 64)
        logits = torch.randn(1, 3, 64, 64, requires_grad=True)
        loss(logits, target).backward()
        gradient = logits.grad[0]
        seen = gradient.abs().sum(dim=0) > 0
        negative = gradient < 0
        assert seen.float().mean() > 0.5
        assert bool((negative.sum(dim=0)[seen] == 1).all())
        assert bool(negative.gather(0, true_class[0])[0][seen].all())


def test_alpha_and_learning_rate_step_once_per_epoch_of_iterations_per_epoch(prepared_acdc_release, tmp_path):
    """An epoch is `iterations_per_epoch` iterations however few volumes there are; schedules follow that clock."""
    parser = config(
        "acdc17_boundary",
        dataset_dir=str(prepared_acdc_release),
        bundle_root=str(tmp_path),
        epochs=2,
        iterations_per_epoch=3,
        samples_per_volume=1,
        num_workers=0,
        sw_batch_size=8,
    )
    trainer = parser.get_parsed_content("train#trainer")
    loss = parser.get_parsed_content("loss#loss")
    seen: list[tuple[float, float]] = []
    trainer.add_event_handler(
        Events.ITERATION_STARTED, lambda engine: seen.append((loss.alpha, engine.optimizer.param_groups[0]["lr"]))
    )
    trainer.run()
    second_lr = 1e-4 * (1 - 1 / 2) ** 0.9
    alphas, learning_rates = zip(*seen, strict=True)
    assert alphas == pytest.approx([1.0] * 3 + [0.99] * 3)
    assert learning_rates == pytest.approx([1e-4] * 3 + [second_lr] * 3)


def test_focal_bundle_loss_is_the_original_focal_loss():
    """gamma 2, no alpha, summed over classes and averaged over voxels (the authors' FocalLoss)."""
    loss = config("acdc17_focal", num_classes=4).get_parsed_content("loss#loss")
    torch.manual_seed(0)
    logits, label = torch.randn(2, 4, 6, 5), torch.randint(0, 4, (2, 1, 6, 5))
    p = torch.softmax(logits, dim=1)
    onehot = torch.zeros_like(p).scatter_(1, label, 1.0)
    expected = (-((1 - p) ** 2) * onehot * torch.log(p)).sum(dim=1).mean()
    torch.testing.assert_close(loss(logits, label), expected)


def test_dice_bundle_loss_is_the_authors_dice_loss():
    """1 - mean over images and classes (background included) of 2 sum(p y) / (sum(p + y) + 1e-6)."""
    loss = config("kits19_dice", num_classes=3).get_parsed_content("loss#loss")
    torch.manual_seed(1)
    logits, label = torch.randn(2, 3, 6, 5), torch.randint(0, 3, (2, 1, 6, 5))
    p = torch.softmax(logits, dim=1)
    onehot = torch.zeros_like(p).scatter_(1, label, 1.0)
    expected = 1 - (2 * (p * onehot).sum(dim=(2, 3)) / ((p + onehot).sum(dim=(2, 3)) + 1e-6)).mean()
    torch.testing.assert_close(loss(logits, label), expected)


def test_brats18_structures_put_the_paper_labels_first():
    structures = brats18_structures(enhancing_label=3)
    assert list(structures.items()) == [
        ("ET", (3,)),
        ("ED", (2,)),
        ("NCR_NET", (1,)),
        ("WT", (1, 2, 3)),
        ("TC", (1, 3)),
    ]
    parser = ConfigParser()
    parser.read_config(
        [str(BUNDLES_DIR / "brats18_focal" / "configs" / f"{part}.yaml") for part in ("train", "evaluate")]
    )
    assert parser["evaluation_structures"]["_target_"] == "common.evaluation.metrics.brats18_structures"


@pytest.mark.parametrize("region", ["dice", "ce"])
@pytest.mark.parametrize("schedule", ["equal", "gradual"])
def test_sec44_strategies_are_one_line_overrides_of_the_boundary_bundle(region, schedule):
    loss = config("acdc17_boundary", **{"loss#loss#region": region, "loss#loss#schedule": schedule}).get_parsed_content(
        "loss#loss"
    )
    assert (type(loss), loss.region, loss.schedule) == (RWCombinedLoss, region, schedule)
    loss.set_epoch(30)
    assert loss.weights == pytest.approx((1.0, 1.0) if schedule == "equal" else (0.7, 0.3))


def test_sec44_strategies_on_rrw_maps_as_documented():
    strategy = {"_target_": "common.losses.RWCombinedLoss", "region": "ce", "schedule": "gradual", "compact": True}
    alpha_schedule = {"_target_": "common.training.alpha_schedule.AlphaScheduleHandler", "loss": "@loss#loss"}
    handlers = ["@gradient_clipping", alpha_schedule]
    parser = config("acdc17_rrw", **{"loss#loss": strategy, "train#extra_handlers": handlers})
    loss = parser.get_parsed_content("loss#loss")
    assert (type(loss), loss.region, loss.schedule) == (RWCombinedLoss, "ce", "gradual")
    assert parser.get_parsed_content("train#extra_handlers")[1].loss is loss


def _labelled_kits19_release(root: Path) -> tuple[Path, dict[str, list[int]]]:
    """A prepared fake KiTS19 release whose cases have unlabelled slices, and each case's labelled slices."""
    import runpy

    import nibabel as nib

    from common.data.synthetic_releases import write_fake_kits19

    write_fake_kits19(root, n_cases=2, shape=(16, 24, 24))  # the release's slices lie along the first array axis
    labelled = {}
    for case in ("case_00000", "case_00001"):
        label = np.asarray(nib.load(root / case / "segmentation.nii.gz").dataobj)
        labelled[case] = np.flatnonzero(label.reshape(label.shape[0], -1).any(axis=1)).tolist()
        assert 0 < len(labelled[case]) < label.shape[0]  # some slices hold no label
    script = Path(__file__).resolve().parents[1] / "scripts" / "prepare_kits.py"
    assert runpy.run_path(str(script))["main"]([str(root)]) == 0  # the authors' split: case 0 trains, case 1 scored
    return root, labelled


def test_kits19_trains_and_scores_only_the_labelled_slices_at_the_release_spacing(tmp_path):
    """The authors' datasplits/kits19.py: only labelled slices, resized to 256 x 256 with the original spacing."""
    root, labelled = _labelled_kits19_release(tmp_path / "kits19")
    still = {"rotation_prob": 0.0, "scaling_prob": 0.0, "samples_per_volume": 8, "cache_rate": 0.0}
    parser = config("kits19_rrw", dataset_dir=str(root), **still)
    assert parser.get_parsed_content("labelled_slices_only") and parser.get_parsed_content("keep_release_spacing")

    base = Compose(parser.get_parsed_content("base_transforms"))
    [training] = parser.get_parsed_content("train#dataset").data
    volume = base(dict(training))
    kept = volume["label"].shape[-1]  # axial slices along the last axis in RAS
    assert kept == len(labelled["case_00000"]) and bool((volume["label"] > 0).flatten(0, 2).any(dim=0).all())
    spacing = torch.linalg.norm(volume["image"].affine[:3, :3], dim=0)
    torch.testing.assert_close(spacing, torch.tensor([0.8, 0.8, 3.0], dtype=spacing.dtype))  # the release's

    # every slice the network is trained on holds a label (whole slices: the 24 x 24 slices resized to the patch)
    dataset = parser.get_parsed_content("train#dataset")
    for _ in range(4):
        for sample in dataset[0]:
            assert sample["target"][0].max() > 0

    # the scored volumes (validation and evaluate.yaml) are cut alike
    evaluation = ConfigParser()
    evaluation.read_config(
        [str(BUNDLES_DIR / "kits19_rrw" / "configs" / f"{part}.yaml") for part in ("train", "evaluate")]
    )
    evaluation.update({**TINY, "dataset_dir": str(root), "cache_rate": 0.0})
    [scored] = evaluation.get_parsed_content("validate#dataset").data
    scored_volume = evaluation.get_parsed_content("validate#preprocessing")(dict(scored))
    assert scored_volume["label"].shape[-1] == len(labelled["case_00001"])

    # both are settings: every slice, and the resized voxels' true size in mm
    every = config("kits19_rrw", dataset_dir=str(root), labelled_slices_only=False, keep_release_spacing=False, **still)
    volume = Compose(every.get_parsed_content("base_transforms"))(dict(training))
    assert volume["label"].shape[-1] == 16
    spacing = torch.linalg.norm(volume["image"].affine[:3, :3], dim=0)
    torch.testing.assert_close(spacing, torch.tensor([0.8 * 24 / 64, 0.8 * 24 / 64, 3.0], dtype=spacing.dtype))


def test_labelled_slices_keep_a_volume_without_labels_whole():
    from common.data.geometry import LabelledSlicesd

    empty = {"image": MetaTensor(torch.randn(1, 4, 4, 6)), "label": MetaTensor(torch.zeros(1, 4, 4, 6))}
    assert LabelledSlicesd(["image", "label"], slice_axis=2)(empty)["image"].shape == (1, 4, 4, 6)
    label = torch.zeros(1, 4, 6, 4)
    label[0, 1, 2:4, 1] = 2
    cut = LabelledSlicesd(["image", "label"], slice_axis=1)({"image": torch.randn(1, 4, 6, 4), "label": label})
    assert cut["image"].shape == (1, 4, 2, 4) and cut["label"].amax() == 2

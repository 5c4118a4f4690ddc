"""The exponential logarithmic and SA Dice bundles: the loss each names, the papers' settings, the zoo's checks.

Every ``brain_explog*``, ``brats17_*`` and ``aorta_*`` bundle: its train config builds the loss of its pairing from
``_target_`` classes (the paper's arguments, read back from the built objects), computes no RW map, and follows its
paper's protocol (whole 128^3 volumes, NAdam or Adam with the LR halved on the validation loss, ...). The inference
network passes the model zoo's data-shape check with its defaults (n=1, the bundle's own network sizes) and
exports to TorchScript as the zoo's ``ckpt_export`` runs it, from weights saved by the training network. The
end-to-end runs (train, evaluate, segment) of the root bundles are in tests/test_bundles.py.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.metrics import Loss
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out
from monai.inferers import SimpleInferer
from monai.losses import DiceLoss
from monai.transforms import Resized

from common.losses import ExpLogLoss, MultiResolutionLoss, SADiceCELoss, SADiceLoss
from common.networks.weights import save_network_weights

pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"
TINY = {
    "WongNet3D": {"channels": [2, 4, 4, 8, 8], "convs_per_block": [1, 1, 1, 1, 1]},
    "SAUNet": {"filters": [4, 8, 8, 8, 8]},
    "VNet": {},
}

GENERATOR = runpy.run_path(str(BUNDLES_DIR.parent / "scripts" / "generate_bundles.py"))
LOSSES = {loss.__name__: loss for loss in (ExpLogLoss, SADiceLoss, SADiceCELoss, DiceLoss)}
EXP_LOG_ARGUMENTS = ("w_dice", "w_cross", "gamma", "eps", "dice_form")


def composed(name: str) -> tuple[dict[str, Any], list[str]]:
    """The bundle's merged ``train`` section and its families (``templates/families/<family>.yaml``)."""
    sections, spec, _ = GENERATOR["compose"](BUNDLES_DIR / name / "bundle.yaml")
    families = [Path(piece).stem for piece in spec["pieces"] if piece.startswith("families/")]
    return GENERATOR["_plain"](sections["train"]), families


def loss_class(component: dict[str, Any]) -> type:
    return LOSSES[component["_target_"].rsplit(".", 1)[-1]]


# what each bundle's train config must build, derived from its spec (bundles/<name>/bundle.yaml, merged with its
# pieces by the generator): a new dataset/loss pairing is tested without editing this file
SPECS = {path.parent.name: composed(path.parent.name) for path in sorted(BUNDLES_DIR.glob("*/bundle.yaml"))}
# bundle -> (loss, the arguments the spec gives it)
EXP_LOG_BUNDLES: dict[str, tuple[type, dict[str, Any]]] = {
    name: (loss_class(train["loss"]), {key: train["loss"][key] for key in EXP_LOG_ARGUMENTS if key in train["loss"]})
    for name, (train, families) in SPECS.items()
    if families == ["exp_log3d"]
}
# bundle -> (loss of each output, include_background, WMLA alpha or None for one output, trainable alpha)
SA_DICE_BUNDLES: dict[str, tuple[type, bool, tuple[float, ...] | None, bool]] = {
    name: (
        loss_class(train["output_loss"]),
        train["output_loss"]["include_background"],
        None if train["loss"] == "@output_loss" else tuple(train["wmla_alpha"]),
        train["loss"] != "@output_loss" and train["loss"]["trainable"],
    )
    for name, (train, families) in SPECS.items()
    if families == ["sa_dice3d"]
}
OWN_BUNDLES = sorted(name for name in (*EXP_LOG_BUNDLES, *SA_DICE_BUNDLES))


def parse(name: str, config: str = "train", **overrides: Any) -> ConfigParser:
    """The bundle's config with its network shrunk and the data-dependent settings fixed."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / name / "configs" / f"{config}.yaml"))
    network = parser["network_def"]["_target_"].rsplit(".", 1)[-1]
    parser.update({**TINY[network], **overrides})
    return parser


def test_every_bundle_of_the_two_papers_is_tested():
    assert OWN_BUNDLES == sorted(name for name, (_, families) in SPECS.items() if families != ["rw_slices2d"])
    assert {"brain_explog_gamma1", "brats17_sadice_trainable", "aorta_sadice_only"} <= set(OWN_BUNDLES)


def _no_rw_map(parser: ConfigParser) -> None:
    """The train config computes no RW map and names no method switch."""
    assert "RWMap" not in json.dumps(parser.get()) and "method" not in parser.get()
    assert parser["target_key"] == "label"


@pytest.mark.parametrize("name", sorted(EXP_LOG_BUNDLES))
def test_exp_log_bundle_builds_its_loss_and_the_papers_training(name):
    expected_class, expected = EXP_LOG_BUNDLES[name]
    parser = parse(name, num_classes=3, in_channels=1)
    computes_weights = parser.get("label_weights") is not None  # read from the training labels when the loss needs them
    parser.update({"label_weights": [1.0, 2.0, 3.0]} if computes_weights else {})
    loss = parser.get_parsed_content("loss")
    assert type(loss) is expected_class and loss.to_onehot_y
    if expected_class is DiceLoss:  # the linear Dice baseline E[1 - Dice_i], smoothing eps = 1
        assert (loss.smooth_nr, loss.smooth_dr, loss.include_background, loss.batch) == (1.0, 1.0, True, False)
        assert not computes_weights
    else:
        assert {key: getattr(loss, key) for key in expected} == expected
        assert computes_weights == (loss.w_cross > 0) == (loss.label_weights is not None)
    _no_rw_map(parser)
    optimizer = parser.get_parsed_content("optimizer")
    assert type(optimizer) is torch.optim.NAdam and optimizer.defaults["lr"] == 1e-3
    assert (parser["epochs"], parser["batch_size"]) == (100, 1)
    affine = next(t for t in parser.get_parsed_content("train#sampling") if type(t).__name__ == "RandAffined")
    assert affine.prob == 0.8
    resize, pad = parser.get_parsed_content("shape_transforms")  # longest side to 128, zero padding to 128^3
    assert (resize.resizer.spatial_size, resize.resizer.size_mode, tuple(pad.padder.spatial_size)) == (
        128,
        "longest",
        (128, 128, 128),
    )
    assert isinstance(parser.get_parsed_content("validate#inferer"), SimpleInferer)


@pytest.mark.parametrize(
    "label_mapping, class_of_value",
    [
        (None, {0: 0, 10: 1, 20: 2}),  # a plain dataset.json: values in increasing order
        ({"orig_labels": [0, 10, 20], "target_labels": [0, 2, 1]}, {0: 0, 10: 2, 20: 1}),  # --labels 20,10
    ],
)
def test_exp_log_label_weights_come_from_the_training_labels(tmp_path, label_mapping, class_of_value):
    """w_l counted on training indices (non-contiguous, reordered values) on the 128^3 grid, padding as background."""
    labels = [np.zeros((4, 4, 2), dtype=np.uint8) for _ in range(2)]
    labels[0][:2] = 10  # value 10: 16 voxels, value 20: 4 voxels of 64
    labels[1][0, :2, :] = 20
    entries = []
    for index, label in enumerate(labels):
        nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / f"label{index}.nii.gz")
        entries.append({"image": f"label{index}.nii.gz", "label": f"label{index}.nii.gz"})
    datalist = {"training": entries, "validation": entries[:1], "labels": {"0": "bg", "10": "a", "20": "b"}}
    if label_mapping is not None:
        datalist["label_mapping"] = label_mapping
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    parser = parse("brain_explog", dataset_dir=str(tmp_path), num_classes=3)
    # each 4 x 4 x 2 label becomes 128 x 128 x 64 (x32 per axis, nearest), then is zero padded to 128^3
    scale = 32**3
    value_counts = {10: 16 * scale, 20: 4 * scale}
    counts = np.zeros(3)
    for value, count in value_counts.items():
        counts[class_of_value[value]] = count
    counts[0] = 2 * 128**3 - counts.sum()
    np.testing.assert_allclose(parser.get_parsed_content("label_weights"), np.sqrt(counts.sum() / counts), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(SA_DICE_BUNDLES))
def test_sa_dice_bundle_builds_its_loss_and_the_papers_training(name):
    output_class, include_background, alpha, trainable = SA_DICE_BUNDLES[name]
    parser = parse(name, num_classes=4 if name.startswith("brats") else 2)
    loss = parser.get_parsed_content("loss")
    single = loss if alpha is None else loss.loss
    assert type(single) is output_class
    dice = single if output_class is SADiceLoss else single.dice
    assert dice.batch and dice.include_background == include_background  # Eq. 4: foreground Dice of the aorta task
    if output_class is SADiceCELoss:
        assert (single.lambda_dice, single.lambda_ce) == (1.0, 1.0)
    network = parser.get_parsed_content("network_def")
    if alpha is None:  # one output: no heads, no WMLA
        assert not isinstance(loss, MultiResolutionLoss) and not network.deep_supervision
    else:
        assert isinstance(loss, MultiResolutionLoss) and network.deep_supervision
        assert loss.alpha.detach().tolist() == pytest.approx(list(alpha))
        assert bool(list(loss.parameters())) == trainable
    optimizer = parser.get_parsed_content("optimizer")
    optimised = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
    assert {id(parameter) for parameter in loss.parameters()} <= optimised  # a trainable alpha is learnt
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["lr"] == 5e-4
    [clipping] = parser.get_parsed_content("train#extra_handlers")
    assert type(clipping).__name__ == "GradientClipping" and clipping.max_norm == 5.0
    assert {id(parameter) for parameter in clipping.parameters} == optimised
    assert (parser["epochs"], parser["batch_size"]) == (300, 2)
    _no_rw_map(parser)


@pytest.mark.parametrize("name", ["aorta_sadice", "brats17_sadice_trainable"])
def test_sa_dice_learning_rate_halves_on_the_validation_loss(name):
    parser = parse(name, num_classes=4 if name.startswith("brats") else 2)
    scheduler = parser.get_parsed_content("lr_scheduler")
    assert (type(scheduler).__name__, scheduler.mode, scheduler.factor) == ("ReduceLROnPlateau", "min", 0.5)
    val_loss = parser.get_parsed_content("validate#additional_metrics")["val_loss"]
    assert isinstance(val_loss, Loss) and val_loss._loss_fn is parser.get_parsed_content("loss")
    # the evaluator's decollated outputs: logits and index labels kept under val_logits / val_label
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, parser["num_classes"], 8, 8, 8, generator=generator)
    labels = torch.randint(0, parser["num_classes"], (2, 1, 8, 8, 8), generator=generator)
    postprocessing = parser.get_parsed_content("validate#postprocessing")
    outputs = [postprocessing({"pred": logits[index], "label": labels[index].float()}) for index in range(2)]
    val_loss.reset()
    val_loss.update(val_loss._output_transform(outputs))
    expected = parser.get_parsed_content("loss")(logits, labels)
    assert val_loss.compute() == pytest.approx(expected.item(), rel=1e-5)
    assert "metrics['val_loss']" in parser["train#lr_handler#step_transform"]  # the scheduler steps on it


@pytest.mark.parametrize("name", ["aorta_sadice", "brats17_sadice"])
def test_sa_dice_resizes_whole_volumes_to_128(name):
    parser = parse(name)
    parser.update({"filters": [16, 32, 64, 128, 256]})
    [resize] = parser.get_parsed_content("shape_transforms")
    assert isinstance(resize, Resized) and tuple(resize.resizer.spatial_size) == (128, 128, 128)
    assert parser.get_parsed_content("train#sampling") == []  # no random crops
    for config in ("train", "inference"):
        inferer_key = "validate#inferer" if config == "train" else "inferer"
        assert isinstance(parse(name, config).get_parsed_content(inferer_key), SimpleInferer)


@pytest.mark.parametrize("name", OWN_BUNDLES)
def test_zoo_data_shape_check_passes_with_its_defaults(name):
    configs = BUNDLES_DIR / name / "configs"
    verify_net_in_out(  # as model-zoo's ci/verify_bundle.py: n=1, the bundle's own network sizes
        net_id="network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.yaml"),
        bundle_root=str(BUNDLES_DIR / name),
        device="cpu",
    )


EXPORT_CLASSES = {"brain_explog": 3, "brain_explog_vnet": 3, "aorta_sadice": 2, "brats17_sadice": 4}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", sorted(EXPORT_CLASSES))
def test_ckpt_export_scripts_the_inference_network_from_trained_weights(name, tmp_path):
    configs = BUNDLES_DIR / name / "configs"
    train = parse(name, num_classes=EXPORT_CLASSES[name])
    torch.manual_seed(0)
    trained = train.get_parsed_content("network_def")
    save_network_weights(trained, tmp_path / "model.pt")  # every weight, heads included: ckpt_export loads strictly
    overrides = {"num_classes": EXPORT_CLASSES[name], **TINY[type(trained).__name__]}
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "model.pt"),
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.yaml"),
        bundle_root=str(tmp_path),
        **overrides,
    )
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    image = torch.randn(1, train["in_channels"], 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(image), trained.eval()(image))


# brain_explog_vnet's one-output V-Net (45 M parameters) trains end to end in tests/test_bundles.py
@pytest.mark.parametrize("name", [name for name in OWN_BUNDLES if name != "brain_explog_vnet"])
def test_training_network_output_fits_the_loss(name):
    num_classes = 4 if name.startswith("brats") else 3 if name.startswith("brain") else 2
    parser = parse(name, num_classes=num_classes)
    if parser.get("label_weights") is not None:  # computed from the training labels in a real run
        parser.update({"label_weights": [1.0] * num_classes})
    torch.manual_seed(0)
    network, loss = parser.get_parsed_content("network_def").train(), parser.get_parsed_content("loss")
    image = torch.randn(2, parser["in_channels"], 32, 32, 32)
    labels = torch.randint(0, num_classes, (2, 1, 32, 32, 32))
    value = loss(network(image), labels)
    value.backward()
    assert torch.isfinite(value) and value.ndim == 0
    gradients = [parameter.grad for parameter in network.parameters()]
    assert all(gradient is not None and torch.isfinite(gradient).all() for gradient in gradients)  # every part learns

"""The bundles: generated files, metadata, the loss each one trains, and end-to-end runs on tiny fake data.

For every bundle: the generated files are up to date and say where they come from, the metadata is valid and
matches the network, and the train config builds the loss and target of the bundle's pairing. The bundles that
extend no other (one per data set and network) also run end to end on tiny fake data in their release's raw
layout, prepared by the real preparation scripts: the standard ``monai.bundle run`` configs train (one epoch, two
volumes), evaluate (per-case tables) and segment. A pairing bundle that extends one of them differs from it only
by ``method``, whose losses tests/test_bundle_pieces.py trains. Networks and sizes are shrunk by overrides only.
"""

from __future__ import annotations

import csv
import runpy
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser, run, verify_metadata, verify_net_in_out
from monai.losses import DiceLoss, FocalLoss
from rw_compat import COMPACT_MAPS, dense_overrides, heads_overrides

from common.fake_releases import write_fake_brats, write_fake_kits19, write_fake_msd
from common.losses import ExpLogLoss, MultiResolutionLoss, RegionWiseLoss, RWCombinedLoss, RWWeightedCrossEntropyLoss
from common.synthetic import write_acdc_dataset

pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")

REPO = Path(__file__).resolve().parents[1]
GENERATOR = runpy.run_path(str(REPO / "scripts" / "generate_bundles.py"))
BUNDLES_DIR = REPO / "bundles"
TINY_2D = {"patch_size": [64, 64], "filters": [4, 8, 8, 16, 16, 16], "sw_batch_size": 8}
TINY_WONG = {"patch_size": [32, 32, 32], "channels": [2, 4, 4, 8, 8], "convs_per_block": [1, 1, 1, 1, 1]}
TINY_SA_UNET = {"patch_size": [16, 16, 16], "filters": [4, 8, 8, 8]}
BRAIN_LABELS = ("background", "thalamus", "caudate", "hippocampus")
RW_TRAINING = {"samples_per_volume": 2, "iterations_per_epoch": 2}  # nnU-Net epochs are 250 iterations
RW_LOSSES = {"rrw": RegionWiseLoss, "boundary": RWCombinedLoss, "dice": DiceLoss, "focal": FocalLoss}
RW_LOSSES["rrw_ce"] = RWWeightedCrossEntropyLoss


@dataclass(frozen=True)
class BundleCase:
    """How to test one bundle: its release, the tiny-network overrides and what inference reads and writes."""

    release: str
    network: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    label_values: frozenset[int] = frozenset({0, 1, 2, 3})
    multi_channel: bool = False  # inference input is one 4D file with the modalities along the last axis
    inference: dict[str, Any] = field(default_factory=dict)  # settings inference.yaml cannot read from a datalist


# the bundles run end to end: those that extend no other bundle
CASES = {
    "acdc17_rrw": BundleCase("acdc", TINY_2D, RW_TRAINING),
    "brats18_rrw": BundleCase("brats", TINY_2D, RW_TRAINING, frozenset({0, 1, 2, 4}), True),
    "kits19_rrw": BundleCase("kits19", TINY_2D, RW_TRAINING, frozenset({0, 1, 2})),
    "brain_explog": BundleCase("msd_brain", TINY_WONG, inference={"num_classes": len(BRAIN_LABELS)}),
    "brain_explog_vnet": BundleCase(
        "msd_brain", {"patch_size": [32, 32, 32]}, inference={"num_classes": len(BRAIN_LABELS)}
    ),
    "brats17_sadice": BundleCase("brats", TINY_SA_UNET, {}, frozenset({0, 1, 2, 4}), True),
    "aorta_sadice": BundleCase("msd_aorta", TINY_SA_UNET, {}, frozenset({0, 1})),
}


# every bundle -> the method its train config selects (the loss of its dataset/loss pairing)
METHODS = {
    **{
        f"{data}_{suffix}": method
        for data in ("acdc17", "brats18", "kits19")
        for suffix, method in (
            ("rrw", "rrw"),
            ("boundary", "boundary"),
            ("dice", "dice"),
            ("focal", "focal"),
            ("rrw_ce", "rrw_ce"),
        )
    },
    **{
        f"{data}_{suffix}": method
        for data in ("brats17", "aorta")
        for suffix, method in (
            ("sadice", "sa_dice_wmla"),
            ("sadice_only", "sa_dice"),
            ("sadice_trainable", "sa_dice_wmla_trainable"),
        )
    },
    "brain_explog": "exp_log",
    "brain_explog_vnet": "exp_log",
}
ALL_BUNDLES = sorted(path.parent.name for path in BUNDLES_DIR.glob("*/bundle.yaml"))


def root_bundle(name: str) -> str:
    """The bundle at the root of ``name``'s ``extends`` chain (``name`` itself when it extends none)."""
    return GENERATOR["spec_chain"](BUNDLES_DIR / name / "bundle.yaml")[0][0].parent.name


def prepare(script: str, root: Path) -> Path:
    """Write the datalist with the release's scripts/prepare_<script>.py, as a user would."""
    status = runpy.run_path(str(REPO / "scripts" / f"prepare_{script}.py"))["main"]([str(root)])
    assert status == 0, f"prepare_{script}.py failed on {root}"
    return root


RELEASE_WRITERS: dict[str, Callable[[Path], Path]] = {
    "acdc": lambda root: prepare(
        "acdc", write_acdc_dataset(root, num_subjects=4, seed=0, shape=(32, 32, 4), spacing=(2.5, 2.5, 10.0))
    ),
    "brats": lambda root: prepare("brats", write_fake_brats(root, n_subjects=4, shape=(24, 24, 8))),
    "kits19": lambda root: prepare("kits", write_fake_kits19(root, n_cases=4, shape=(8, 24, 24))),
    "msd_brain": lambda root: prepare(
        "msd", write_fake_msd(root, n_cases=4, shape=(16, 16, 8), label_names=BRAIN_LABELS, name="Brain")
    ),
    "msd_aorta": lambda root: prepare("msd", write_fake_msd(root, n_cases=4, shape=(16, 16, 8), name="Aorta")),
}


def test_every_bundle_has_a_test_case():
    assert sorted(METHODS) == ALL_BUNDLES
    assert sorted(CASES) == sorted({root_bundle(name) for name in ALL_BUNDLES})


def test_generated_files_are_up_to_date():
    assert GENERATOR["check"]() == [], "run python scripts/generate_bundles.py"


def test_every_generated_file_says_where_it_comes_from():
    for relative, text in GENERATOR["generate"]().items():
        if relative.endswith(".gitkeep") or relative == "README.md":
            continue
        first_line = text.splitlines()[0] if not relative.endswith(".json") else text.splitlines()[1]
        assert "generated by scripts/generate_bundles.py from" in first_line and "do not edit" in first_line, relative


def test_generator_reports_a_broken_spec(tmp_path, monkeypatch):
    spec = tmp_path / "bundles" / "broken" / "bundle.yaml"
    spec.parent.mkdir(parents=True)
    spec.write_text("pieces: [datasets/acdc.yaml]\nlosses: {}\n")
    monkeypatch.setitem(GENERATOR["find_specs"].__globals__, "REPO", tmp_path)
    with pytest.raises(GENERATOR["SpecError"], match=r"broken/bundle.yaml: unknown top-level keys \['losses'\]"):
        GENERATOR["compose"](spec)


@pytest.fixture
def spec_folder(tmp_path, monkeypatch) -> Callable[[str, str], Path]:
    """Writes specs under ``tmp_path/bundles/<name>/``, with the generator reading templates copied there."""
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    module = GENERATOR["compose"].__globals__
    monkeypatch.setitem(module, "REPO", tmp_path)
    monkeypatch.setitem(module, "TEMPLATES", tmp_path / "templates")

    def write(name: str, text: str) -> Path:
        spec = tmp_path / "bundles" / name / "bundle.yaml"
        spec.parent.mkdir(parents=True)
        spec.write_text(text)
        return spec

    return write


def test_extends_merges_the_child_on_top_of_the_parent_spec(spec_folder):
    parent = (BUNDLES_DIR / "aorta_sadice" / "bundle.yaml").read_text()
    spec_folder("parent", parent.replace("num_classes: 2", "num_classes: 2\n  extra: [1]"))
    spec_folder(
        "child",
        "extends: parent\ntrain: {method: sa_dice, imports+: ['$import math']}\nshared: {extra+: [2]}\n"
        "table: {loss: SA Dice only}\nmetadata: {name: Child}\n",
    )
    grandchild = spec_folder("grandchild", "extends: child\npieces+: [networks/vnet.yaml]\ndocs: {title: G}\n")
    sections, spec, sources = GENERATOR["compose"](grandchild)
    pieces = ["datasets/msd.yaml", "families/sa_dice3d.yaml", "networks/sa_unet.yaml", "networks/vnet.yaml"]
    assert spec["pieces"] == pieces  # inherited, then appended to
    assert sources == [
        "templates/base.yaml",
        *(f"templates/{piece}" for piece in pieces),
        "bundles/parent/bundle.yaml",
        "bundles/child/bundle.yaml",
        "bundles/grandchild/bundle.yaml",
    ]
    assert (spec["data_license"], spec["extends"]) == ("aorta.txt", "child")
    assert spec["table"]["loss"] == "SA Dice only" and spec["table"]["network"].startswith("3D U-Net")
    assert (sections["train"]["method"], sections["train"]["dataset_dir"]) == ("sa_dice", "/workspace/data/Aorta")
    assert sections["train"]["imports"][-2:] == ["$from common.methods import sa_dice_loss", "$import math"]
    assert sections["shared"]["extra"] == [1, 2]  # a child's key+ appends to the parent's list
    assert sections["shared"]["network_def"]["_target_"] == "VNet"  # the appended piece, later wins
    assert (sections["metadata"]["name"], sections["docs"]["title"]) == ("Child", "G")
    assert sections["metadata"]["task"] == "Segmentation of the aorta in CT"


def test_extends_reports_unknown_parents_and_cycles(spec_folder):
    orphan = spec_folder("orphan", "extends: missing\n")
    with pytest.raises(GENERATOR["SpecError"], match=r"orphan/bundle.yaml: extends unknown bundle 'missing'"):
        GENERATOR["compose"](orphan)
    spec_folder("first", "extends: second\n")
    second = spec_folder("second", "extends: first\n")
    with pytest.raises(
        GENERATOR["SpecError"], match=r"first/bundle.yaml: 'extends' makes a cycle \(second -> first -> second\)"
    ):
        GENERATOR["compose"](second)
    itself = spec_folder("itself", "extends: itself\n")
    with pytest.raises(
        GENERATOR["SpecError"], match=r"itself/bundle.yaml: 'extends' makes a cycle \(itself -> itself\)"
    ):
        GENERATOR["compose"](itself)
    path = spec_folder("path", "extends: ../acdc17_rrw\n")
    with pytest.raises(GENERATOR["SpecError"], match=r"path/bundle.yaml: 'extends' must name another bundle"):
        GENERATOR["compose"](path)


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Path]:
    """Prepared fake releases, written on first use."""
    written: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in written:
            written[name] = RELEASE_WRITERS[name](tmp_path_factory.mktemp(name))
        return written[name]

    return get


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_pairing_headers_name_the_parent_spec(name):
    specs = GENERATOR["spec_chain"](BUNDLES_DIR / name / "bundle.yaml")
    chain = [path.relative_to(REPO).as_posix() for path, _ in specs]
    for relative in ("configs/train.yaml", "configs/inference.yaml", "docs/README.md"):
        first_line = (BUNDLES_DIR / name / relative).read_text().splitlines()[0]
        listed = first_line.split(" from ", 1)[1].split("; do not edit")[0].split(", ")
        assert listed[-len(chain) :] == chain, relative  # the parent specs, root first, then the bundle's own


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_metadata_is_valid_and_matches_the_network(name, schema_file):
    configs = BUNDLES_DIR / name / "configs"
    verify_metadata(meta_file=str(configs / "metadata.json"), filepath=str(schema_file))
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.yaml"),
        n=2,
        device="cpu",
        **CASES[root_bundle(name)].network,
    )


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_train_config_builds_the_loss_of_its_pairing(name):
    parser = ConfigParser()
    train_config = BUNDLES_DIR / name / "configs" / "train.yaml"
    parser.read_config(str(train_config))
    parser.update({**CASES[root_bundle(name)].network, "num_classes": 3, "in_channels": 1, "label_weights": None})
    parser.update(dense_overrides(train_config))
    method = METHODS[name]
    assert parser["method"] == method
    target_key = parser.get_parsed_content("target_key")
    loss = parser.get_parsed_content("loss")
    if method in RW_LOSSES:  # the details of the RW paper's protocol: tests/test_rw_protocol.py
        assert type(loss.loss) is RW_LOSSES[method]
        dense_rrw = method == "rrw" and not COMPACT_MAPS  # RegionWiseLoss on the dense map alone
        label_keys = parser.get_parsed_content("label_keys")
        assert target_key == "target" and label_keys == (
            ["label"] if method in ("dice", "focal") else ["rw_map"] if dense_rrw else ["label", "rw_map"]
        )
    elif method == "exp_log":
        assert isinstance(loss, MultiResolutionLoss) and isinstance(loss.loss, ExpLogLoss)
        assert (loss.loss.w_dice, loss.loss.w_cross, loss.loss.gamma, target_key) == (0.8, 0.2, 0.3, "label")
    else:
        assert isinstance(loss, MultiResolutionLoss) and target_key == "label"
        alpha = [1.0, 0.0, 0.0] if method == "sa_dice" else [1.0, 0.1, 0.01]
        assert loss.alpha.detach().tolist() == pytest.approx(alpha)
        trainable = method == "sa_dice_wmla_trainable"
        assert bool(list(loss.parameters())) == trainable
        if trainable:  # the learnt alpha reaches the optimiser
            optimizer = parser.get_parsed_content("optimizer")
            optimised = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
            assert id(loss.theta) in optimised


@pytest.mark.parametrize("name", ALL_BUNDLES)
def test_inference_config_repeats_the_training_network(name):
    configs = BUNDLES_DIR / name / "configs"
    train, inference = ConfigParser(), ConfigParser()
    train.read_config(str(configs / "train.yaml"))
    inference.read_config(str(configs / "inference.yaml"))
    assert "network_def" in inference.get()
    sections = GENERATOR["compose"](BUNDLES_DIR / name / "bundle.yaml")[0]
    assert {"network_def", "patch_size"} <= set(sections["shared"])
    # train.yaml may read e.g. num_classes from the datalist; the RW family trains a network_def with heads
    shared = set(sections["shared"]) - set(sections["train"])
    for key in shared:
        assert inference[key] == train[key], key


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as stream:
        return list(csv.DictReader(stream))


def stack_modalities(entry_images: list[str], root: Path, path: Path) -> Path:
    """Write one case's modality files as one 4D NIfTI, modalities along the last axis."""
    images = [nib.load(root / image) for image in entry_images]
    stacked = np.stack([np.asanyarray(image.dataobj) for image in images], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(stacked, images[0].affine), path)
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_bundle_trains_evaluates_and_segments(name, releases, tmp_path):
    case = CASES[name]
    configs = BUNDLES_DIR / name / "configs"
    train, evaluate, inference = (str(configs / f"{part}.yaml") for part in ("train", "evaluate", "inference"))
    release = releases(case.release)
    overrides = {
        **case.network,
        **case.training,
        "dataset_dir": str(release),
        "bundle_root": str(tmp_path),
        "epochs": 1,
        "num_workers": 0,
    }
    run(config_file=train, **overrides, **dense_overrides(train))
    assert (tmp_path / "models" / "model.pt").is_file() and (tmp_path / "models" / "checkpoint_final.pt").is_file()
    assert [row["epoch"] for row in read_rows(tmp_path / "eval" / "validation_metrics.csv")] == ["1"]

    run(config_file=[train, evaluate], **overrides, **dense_overrides(train))
    rows = read_rows(tmp_path / "eval" / "evaluation" / "case_metrics_per_case.csv")
    parser = ConfigParser()
    parser.read_config([train, evaluate])
    parser.update(overrides)
    structures = parser.get_parsed_content("evaluation_structures")
    assert {row["structure"] for row in rows} == set(structures)
    assert all(0.0 <= float(row["dice"]) <= 1.0 for row in rows if row["status"] == "present")

    validation_case = parser.get_parsed_content("validate#dataset").data[0]
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    settings = {**case.network, **case.inference, "bundle_root": str(tmp_path)}
    if case.multi_channel:
        source = stack_modalities(validation_case["image"], release, inputs / "case.nii.gz")
    else:
        source = Path(shutil.copy(validation_case["image"], inputs / "case.nii.gz"))
    settings.update(heads_overrides(inference))
    run(config_file=inference, dataset_dir=str(inputs), output_dir=str(outputs), progress=False, **settings)
    result = nib.load(outputs / "case.nii.gz")
    assert result.shape == nib.load(source).shape[:3]
    np.testing.assert_allclose(result.affine, nib.load(source).affine, atol=1e-5)
    labels = np.asanyarray(result.dataobj)
    assert set(np.unique(labels).tolist()) <= case.label_values

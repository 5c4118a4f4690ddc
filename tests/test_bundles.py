"""The bundles: generated files, metadata, the loss each one trains, and end-to-end runs on tiny fake data.

For every bundle: the metadata is valid and matches the network, and the train config builds the loss and target
of the bundle's pairing (tests/test_generate_bundles.py checks the generated files). The bundles that
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

from common.data.synthetic_acdc import write_acdc_dataset
from common.data.synthetic_releases import write_fake_brats, write_fake_kits19, write_fake_msd
from common.losses import NNUNetDeepSupervisionLoss

pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")

REPO = Path(__file__).resolve().parents[1]
GENERATOR = runpy.run_path(str(REPO / "scripts" / "generate_bundles.py"))
BUNDLES_DIR = REPO / "bundles"
TINY_2D = {"patch_size": [64, 64], "filters": [4, 8, 8, 16, 16, 16], "sw_batch_size": 8}
TINY_WONG = {"patch_size": [32, 32, 32], "channels": [2, 4, 4, 8, 8], "convs_per_block": [1, 1, 1, 1, 1]}
TINY_SA_UNET = {"patch_size": [16, 16, 16], "filters": [4, 8, 8, 8]}
BRAIN_LABELS = ("background", "thalamus", "caudate", "hippocampus")
RW_TRAINING = {"samples_per_volume": 2, "iterations_per_epoch": 2}  # nnU-Net epochs are 250 iterations


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
    "msd_rrw": BundleCase("msd_aorta", TINY_2D, {"samples_per_volume": 2}, frozenset({0, 1})),
}


ALL_BUNDLES = sorted(path.parent.name for path in BUNDLES_DIR.glob("*/bundle.yaml"))
FAMILIES = ("rw_slices2d", "exp_log3d", "sa_dice3d")  # templates/families/*.yaml


def composed(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bundle's merged ``train`` section and resolved spec, as the generator composes them."""
    sections, spec, _ = GENERATOR["compose"](BUNDLES_DIR / name / "bundle.yaml")
    return GENERATOR["_plain"](sections["train"]), GENERATOR["_plain"](spec)


def family(name: str) -> str:
    """The family piece of the bundle's spec (``families/<family>.yaml``)."""
    [found] = [Path(piece).stem for piece in composed(name)[1]["pieces"] if piece.startswith("families/")]
    return found


# the RW paper's bundles, derived from the specs: a new dataset/loss pairing is tested without editing this file
# (the exp-log and SA Dice bundles: tests/test_bundles_3d.py)
RW_BUNDLES = [name for name in ALL_BUNDLES if family(name) == "rw_slices2d"]


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
    assert {family(name) for name in ALL_BUNDLES} <= set(FAMILIES)
    assert sorted(CASES) == sorted({root_bundle(name) for name in ALL_BUNDLES})


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


@pytest.mark.parametrize("name", RW_BUNDLES)
def test_train_config_builds_the_loss_of_its_pairing(name):
    """The loss the spec names, inside nnU-Net's deep supervision; the target holds the RW map when one is computed.

    The details of the RW paper's protocol: tests/test_rw_protocol.py.
    """
    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / name / "configs" / "train.yaml"))
    parser.update({**CASES[root_bundle(name)].network, "num_classes": 3, "in_channels": 1})
    train, _ = composed(name)
    loss = parser.get_parsed_content("loss")
    assert isinstance(loss, NNUNetDeepSupervisionLoss)
    assert type(loss.loss).__name__ == train["loss"]["loss"]["_target_"].rsplit(".", 1)[-1]
    computes_map = "rw_map" in train["train"]  # the pairings whose loss reads no map drop it (`~rw_map`)
    expected_keys = ["label", "rw_map"] if computes_map else ["label"]
    assert parser.get_parsed_content("target_key") == "target"
    assert parser.get_parsed_content("label_keys") == expected_keys


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
    for key in shared - set(sections["inference"]):
        assert inference[key] == train[key], key
    # inference.yaml may read the network's size from the weights: without weights it takes the training's values
    for key in shared & set(sections["inference"]):
        assert inference.get_parsed_content(key) == train[key], key


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
    run(config_file=train, **overrides)
    assert (tmp_path / "models" / "model.pt").is_file() and (tmp_path / "models" / "checkpoint.pt").is_file()
    assert [row["epoch"] for row in read_rows(tmp_path / "eval" / "validation_metrics.csv")] == ["1"]

    run(config_file=[train, evaluate], **overrides)
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
    run(config_file=inference, dataset_dir=str(inputs), output_dir=str(outputs), progress=False, **settings)
    result = nib.load(outputs / "case.nii.gz")
    assert result.shape == nib.load(source).shape[:3]
    np.testing.assert_allclose(result.affine, nib.load(source).affine, atol=1e-5)
    labels = np.asanyarray(result.dataobj)
    assert set(np.unique(labels).tolist()) <= case.label_values

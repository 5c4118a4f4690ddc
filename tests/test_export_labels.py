"""scripts/export_bundle.py on an MSD-style bundle: the checkpoint's classes, label values and names reach the
exported configs and metadata without --set."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from common.networks.weights import read_network_settings, save_network_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
INFERENCE = REPO_ROOT / "bundles" / "msd_rrw" / "configs" / "inference.yaml"
VERSION = json.loads((INFERENCE.parent / "metadata.json").read_text())["version"]
TINY_NETWORK = {"filters": [4, 4, 8, 8, 8, 8], "sw_batch_size": 8}
TRAINED = {  # a training run on a datalist keeping the aorta (27) and a kidney (40) of a release, sliced along axis 1
    "num_classes": 3,
    "in_channels": 1,
    "patch_size": [64, 64],
    "label_values": [0, 27, 40],
    "class_names": ["aorta", "kidney"],
    "slice_axis": 1,
    "in_plane_spacing": 1.5,
}
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


@pytest.fixture(scope="module")
def export_script():
    spec = importlib.util.spec_from_file_location("export_bundle", REPO_ROOT / "scripts" / "export_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    parser.update({**TINY_NETWORK, "num_classes": TRAINED["num_classes"], "patch_size": TRAINED["patch_size"]})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_network_weights(parser.get_parsed_content("network_def"), path, TRAINED)
    return path


def test_export_writes_the_checkpoints_classes_values_and_names(export_script, checkpoint, tmp_path):
    arguments = ["msd_rrw", str(tmp_path), "--checkpoint", str(checkpoint), "--inline-weights"]
    assert export_script.main([*arguments, *[f"--set={k}={json.dumps(v)}" for k, v in TINY_NETWORK.items()]]) == 0
    with zipfile.ZipFile(tmp_path / f"msd_rrw_v{VERSION}.zip") as archive:
        configs = {stem: json.loads(archive.read(f"msd_rrw/configs/{stem}.json")) for stem in ("inference", "train")}
        metadata = json.loads(archive.read("msd_rrw/configs/metadata.json"))
        archive.extract("msd_rrw/models/model.pt", tmp_path / "unzipped")
    for stem, config in configs.items():
        for key in ("num_classes", "label_values", "class_names", "slice_axis", "in_plane_spacing"):
            assert config[key] == TRAINED[key], (stem, key)
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == 3
    assert pred["channel_def"] == {"0": "background", "1": "aorta", "2": "kidney"}
    assert metadata["label_classes"].startswith("0 background, 27 aorta, 40 kidney")
    exported_settings = read_network_settings(tmp_path / "unzipped" / "msd_rrw" / "models" / "model.pt")
    assert exported_settings == {**TRAINED, "filters": TINY_NETWORK["filters"]}  # the network's filters recorded too


def test_export_refuses_label_values_contradicting_the_checkpoint(export_script, checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"label_values: \[0, 27, 40\] in the checkpoint, \[0, 1, 2\] in the config"):
        export_script.export_bundle(
            "msd_rrw", tmp_path, checkpoint=checkpoint, inline_weights=True,
            settings={**TINY_NETWORK, "label_values": [0, 1, 2]},
        )  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_class_labels_need_one_name_and_value_per_class(export_script):
    assert export_script.class_labels({"num_classes": 2}) is None
    assert export_script.class_labels({"num_classes": 2, "class_names": ["liver"]}) == [("background", 0), ("liver", 1)]
    with pytest.raises(ValueError, match="2 class_names and 2 label_values do not fit num_classes 3"):
        export_script.class_labels({"num_classes": 3, "class_names": ["a", "b"], "label_values": [0, 5]})

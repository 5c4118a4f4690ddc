"""A user's MSD-style task with sparse label values: the values and names travel from dataset.json through the
datalist, training and models/model.pt to the predictions and their evaluation, with nothing retyped."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run

from common.data.synthetic_releases import write_fake_msd
from common.evaluation.tables import read_results_csv
from common.networks.weights import load_network_weights, read_network_settings, save_network_weights

pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "msd_rrw" / "configs"
TINY_2D = {"patch_size": [64, 64], "filters": [4, 8, 8, 16, 16, 16], "sw_batch_size": 8}
RELEASE_VALUES = {1: 5, 2: 27}  # the fake release's kidney and aorta, renumbered as in a larger label set


def sparse_release(root: Path) -> Path:
    """A fake MSD task whose labels are 0 (background), 5 (kidney) and 27 (aorta)."""
    write_fake_msd(root, n_cases=2, shape=(16, 16, 8), label_names=("background", "kidney", "aorta"), name="Organs")
    for path in (root / "labelsTr").glob("*.nii.gz"):
        image = nib.load(path)
        labels = np.asanyarray(image.dataobj).astype(np.uint8)
        renumbered = labels.copy()
        for value, release_value in RELEASE_VALUES.items():
            renumbered[labels == value] = release_value
        nib.save(nib.Nifti1Image(renumbered, image.affine), path)
    description = json.loads((root / "dataset.json").read_text())
    description["labels"] = {"0": "background", "5": "kidney", "27": "aorta"}
    (root / "dataset.json").write_text(json.dumps(description))
    return root


def test_aorta_selected_from_a_release_is_predicted_and_evaluated_as_27(tmp_path):
    release = sparse_release(tmp_path / "Task")
    prepare = runpy.run_path(str(REPO / "scripts" / "prepare_msd.py"))["main"]
    assert prepare([str(release), "--labels", "aorta"]) == 0
    bundle = tmp_path / "bundle"
    overrides = {**TINY_2D, "samples_per_volume": 2, "epochs": 1, "num_workers": 0}
    run(config_file=str(CONFIGS / "train.yaml"), dataset_dir=str(release), bundle_root=str(bundle), **overrides)
    weights = bundle / "models" / "model.pt"
    settings = read_network_settings(weights)
    assert (settings["num_classes"], settings["label_values"], settings["class_names"]) == (2, [0, 27], ["aorta"])

    parser = ConfigParser()  # the trained weights, made to predict the aorta everywhere: what reaches the file?
    parser.read_config(str(CONFIGS / "inference.yaml"))
    parser.update({**TINY_2D, "bundle_root": str(bundle)})
    network = parser.get_parsed_content("network_def")
    load_network_weights(network, weights, parser.get_parsed_content("network_settings"))  # settings read back
    with torch.no_grad():
        network.output_block.conv.conv.weight.zero_()
        network.output_block.conv.conv.bias.copy_(torch.tensor([0.0, 10.0]))
    save_network_weights(network, weights, settings)

    case = sorted((release / "imagesTr").glob("*.nii.gz"))[0]
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / case.name).write_bytes(case.read_bytes())
    run(
        config_file=str(CONFIGS / "inference.yaml"), dataset_dir=str(inputs), output_dir=str(outputs),
        bundle_root=str(bundle), progress=False, **TINY_2D,
    )  # fmt: skip
    prediction = np.asanyarray(nib.load(outputs / case.name).dataobj)
    assert np.unique(prediction).tolist() == [27]

    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / case.name).write_bytes((release / "labelsTr" / case.name).read_bytes())
    evaluate = runpy.run_path(str(REPO / "scripts" / "evaluate_folder.py"))["main"]
    argv = ["--label-dir", str(labels), "--pred-dir", str(outputs), "--datalist", str(release / "datalist.json")]
    assert evaluate([*argv, "--output", str(tmp_path / "eval.csv")]) == 0
    (row,) = read_results_csv(tmp_path / "eval.csv")
    aorta = np.asanyarray(nib.load(labels / case.name).dataobj) == 27
    assert (row.structure, row.labels) == ("aorta", "27")
    assert row.dice == pytest.approx(2 * aorta.sum() / (aorta.sum() + aorta.size))

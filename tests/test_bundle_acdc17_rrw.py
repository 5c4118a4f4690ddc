"""ACDC17 RRW bundle behaviour beyond tests/test_bundles.py: run protection, per-case tables, folder inference."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run
from monai.data import MetaTensor

pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file:UserWarning")

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "acdc17_rrw"
CONFIGS = BUNDLE / "configs"
TRAIN, EVALUATE, INFERENCE = (str(CONFIGS / name) for name in ("train.yaml", "evaluate.yaml", "inference.yaml"))
# a 4-level-wide DynUNet: 64 x 64 slices still leave 2 x 2 at the bottleneck
TINY_NETWORK = {"patch_size": [64, 64], "filters": [4, 8, 8, 16, 16, 16], "sw_batch_size": 8}


@pytest.fixture(scope="module")
def prepared_release(prepared_acdc_release) -> Path:
    return prepared_acdc_release


@pytest.fixture(scope="module")
def trained_run(prepared_release, tmp_path_factory) -> dict:
    run_root = tmp_path_factory.mktemp("acdc17_rrw_run")
    overrides = {
        **TINY_NETWORK,
        "dataset_dir": str(prepared_release),
        "bundle_root": str(run_root),
        "epochs": 2,
        "samples_per_volume": 2,
        "iterations_per_epoch": 2,
        "num_workers": 0,
        "seed": 1,
    }
    run(config_file=TRAIN, **overrides)
    return overrides


@pytest.mark.parametrize("bundle", ["acdc17_rrw", "acdc17_boundary"])
def test_each_pairing_computes_its_map(bundle):
    train = str(BUNDLE.parent / bundle / "configs" / "train.yaml")
    parser = ConfigParser()
    parser.read_config(train)
    label = MetaTensor(torch.zeros(1, 12, 12, 3), affine=torch.diag(torch.tensor([1.5, 1.5, 8.0, 1.0])))
    label[:, 4:8, 4:8] = 3
    rw_map = parser.get_parsed_content("train#rw_map")({"label": label})["rw_map"]
    if bundle == "acdc17_boundary":  # dense RW-Boundary map: the distance to the LV grows away from it
        assert rw_map.shape == (4, 12, 12, 3) and rw_map[3][label[0] == 0].max() > 1
    else:  # one value per voxel, its own class's RRW value in [-1, 0)
        assert rw_map.shape == (1, 12, 12, 3) and bool(((rw_map >= -1) & (rw_map < 0)).all())


def test_training_writes_checkpoints_logs_and_per_epoch_metrics(trained_run):
    run_root = Path(trained_run["bundle_root"])
    assert (run_root / "models" / "model.pt").is_file()
    assert (run_root / "models" / "checkpoint.pt").is_file()
    assert list((run_root / "eval").glob("events.out.tfevents.*"))
    with open(run_root / "eval" / "validation_metrics.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    for row in rows:
        assert 0.0 <= float(row["val_mean_dice"]) <= 1.0
        for class_name in ("RV", "myocardium", "LV"):
            assert f"val_mean_dice_{class_name}" in row and f"val_hausdorff_mm_{class_name}" in row


def test_training_refuses_to_replace_an_earlier_run(trained_run):
    model = Path(trained_run["bundle_root"]) / "models" / "model.pt"
    before = model.read_bytes()
    with pytest.raises(RuntimeError) as error_info:
        run(config_file=TRAIN, **trained_run, overwrite="false")
    assert "overwrite must be True or False" in str(error_info.value.__cause__)
    with pytest.raises(RuntimeError) as error_info:  # monai.bundle wraps errors of config expressions
        run(config_file=TRAIN, **trained_run)
    assert isinstance(error_info.value.__cause__, FileExistsError)
    assert "checkpoint.pt: already exists" in str(error_info.value.__cause__)
    assert model.read_bytes() == before


def test_evaluation_writes_per_case_tables_once(trained_run):
    run(config_file=[TRAIN, EVALUATE], **trained_run)
    evaluation = Path(trained_run["bundle_root"]) / "eval" / "evaluation"
    with open(evaluation / "case_metrics_per_case.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 4 * 3  # 4 validation volumes x (RV, myocardium, LV)
    assert {row["structure"] for row in rows} == {"RV", "myocardium", "LV"}
    cases = {row["case"] for row in rows}
    assert len(cases) == 4 and all(case.startswith("patient") for case in cases)
    present = [row for row in rows if row["status"] == "present"]
    assert present
    assert all(0.0 <= float(row["dice"]) <= 1.0 and float(row["hd95"]) <= float(row["hd"]) for row in present)
    with open(evaluation / "case_metrics_summary.csv") as stream:
        assert {row["structure"] for row in csv.DictReader(stream)} >= {"RV", "myocardium", "LV"}
    with pytest.raises(RuntimeError) as error_info:
        run(config_file=[TRAIN, EVALUATE], **trained_run)
    assert "case_metrics_per_case.csv" in str(error_info.value.__cause__)


def test_inference_segments_a_folder_on_each_inputs_grid(trained_run, prepared_release, tmp_path, capsys):
    inputs = tmp_path / "in"
    source = prepared_release / "training" / "patient001" / "patient001_frame01.nii.gz"
    (inputs / "nested").mkdir(parents=True)
    shutil.copy(source, inputs / "nested" / "case.nii.gz")
    image = nib.load(source)
    oblique = image.affine @ np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj).swapaxes(0, 1), oblique), inputs / "swapped.nii")
    (inputs / "corrupt.nii.gz").write_bytes(b"\x1f\x8b broken")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2, 3), np.float32), np.eye(4)), inputs / "cine_4d.nii.gz")
    outputs = tmp_path / "out"
    settings = {key: trained_run[key] for key in ("bundle_root", *TINY_NETWORK)}

    with pytest.raises(SystemExit) as exit_info:
        run(config_file=INFERENCE, dataset_dir=str(inputs), output_dir=str(outputs), progress=False, **settings)
    assert exit_info.value.code == 1
    summary = capsys.readouterr().out
    assert "segmented 2 file(s), kept 0 existing output(s), 2 failure(s)" in summary
    assert "cine_4d.nii.gz: expected a 3D volume" in summary and "corrupt.nii.gz: cannot read as NIfTI" in summary
    for relative in ("nested/case.nii.gz", "swapped.nii"):
        source_image, result = nib.load(inputs / relative), nib.load(outputs / relative)
        assert result.shape == source_image.shape
        np.testing.assert_allclose(result.affine, source_image.affine, atol=1e-5)
        assert set(np.unique(np.asanyarray(result.dataobj))) <= {0, 1, 2, 3}

    first_output = (outputs / "swapped.nii").read_bytes()
    (inputs / "corrupt.nii.gz").unlink()
    (inputs / "cine_4d.nii.gz").unlink()
    run(config_file=INFERENCE, dataset_dir=str(inputs), output_dir=str(outputs), progress=False, **settings)
    assert "kept 2 existing output(s), 0 failure(s)" in capsys.readouterr().out
    assert (outputs / "swapped.nii").read_bytes() == first_output


@pytest.mark.slow
def test_multi_gpu_config_trains_with_two_cpu_processes(prepared_release, tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "--config_file", str([TRAIN, str(CONFIGS / "multi_gpu_train.yaml")]),
        "--dataset_dir", str(prepared_release), "--bundle_root", str(tmp_path), "--epochs", "1",
        "--samples_per_volume", "2", "--iterations_per_epoch", "2", "--num_workers", "0",
        *[item for key, value in TINY_NETWORK.items() for item in (f"--{key}", json.dumps(value))],
    ]  # fmt: skip
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()
    with open(tmp_path / "eval" / "validation_metrics.csv") as stream:
        assert [row["epoch"] for row in csv.DictReader(stream)] == ["1"]

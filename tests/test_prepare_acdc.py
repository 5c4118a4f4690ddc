from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.acdc import collect_acdc_cases
from common.data.nifti import save_nifti
from common.data.splits import random_split
from common.data.synthetic_acdc import write_acdc_dataset, write_acdc_subject

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "prepare_acdc.py"
sys.path.insert(0, str(SCRIPT.parent))
import prepare_acdc  # noqa: E402


def run_prepare(*args: str) -> int:
    return prepare_acdc.main([str(arg) for arg in args])


def test_synthetic_release_has_the_acdc_layout(acdc_release):
    subject = acdc_release / "training" / "patient001"
    info = dict(line.split(": ") for line in (subject / "Info.cfg").read_text().splitlines())
    assert set(info) == {"ED", "ES", "Group", "Height", "NbFrame", "Weight"}
    for frame in (int(info["ED"]), int(info["ES"])):
        image = nib.load(subject / f"patient001_frame{frame:02d}.nii.gz")
        label = nib.load(subject / f"patient001_frame{frame:02d}_gt.nii.gz")
        assert image.shape == label.shape == (32, 32, 4)
        assert np.array_equal(image.affine, label.affine)
        assert set(np.unique(np.asanyarray(label.dataobj))) == {0, 1, 2, 3}
    assert nib.load(subject / "patient001_4d.nii.gz").shape == (32, 32, 4, int(info["NbFrame"]))


def test_synthetic_writer_is_seeded_and_refuses_existing_subjects(tmp_path):
    write_acdc_dataset(tmp_path / "a", num_subjects=1, shape=(16, 16, 2))
    write_acdc_dataset(tmp_path / "b", num_subjects=1, shape=(16, 16, 2))
    first, second = (
        nib.load(root / "training/patient001/patient001_frame01.nii.gz") for root in (tmp_path / "a", tmp_path / "b")
    )
    assert np.array_equal(np.asanyarray(first.dataobj), np.asanyarray(second.dataobj))
    with pytest.raises(FileExistsError, match="patient001"):
        write_acdc_dataset(tmp_path / "a", num_subjects=1, shape=(16, 16, 2))


def test_prepare_defaults_to_the_authors_even_odd_split(acdc_release, tmp_path, capsys):
    release = tmp_path / "release"
    shutil.copytree(acdc_release, release)
    rng = np.random.default_rng(0)
    write_acdc_subject(release / "testing/patient102", 102, rng, shape=(16, 16, 2), num_frames=2)  # beyond 1-100
    assert run_prepare(release) == 0
    assert "left out testing/patient102: not among patients 1-100" in capsys.readouterr().out
    datalist = json.loads((release / "datalist.json").read_text())
    assert {case["patient_id"] for case in datalist["training"]} == {2, 4}
    assert {case["patient_id"] for case in datalist["validation"]} == {1, 3}
    assert datalist["split"] == {"protocol": "authors"}
    assert datalist["slice_axis"] == 2 and datalist["training"][0]["spacing"] == [2.5, 2.5, 10.0]
    assert datalist["class_names"] == ["RV", "myocardium", "LV"]


def test_two_sites_with_the_same_patient_folder_stay_two_subjects(acdc_release, tmp_path):
    sites = tmp_path / "sites"
    shutil.copytree(acdc_release / "training", sites / "siteA")
    shutil.copytree(acdc_release / "training", sites / "siteB")
    assert run_prepare(sites, "--split", "random", "--seed", 0) == 0
    datalist = json.loads((sites / "datalist.json").read_text())
    subjects = [case["subject"] for section in ("training", "validation") for case in datalist[section]]
    assert len(set(subjects)) == 8 and "siteA/patient001" in subjects and "siteB/patient001" in subjects
    assert len(subjects) == 16  # ED and ES of 8 subjects: nothing merged, nothing dropped


def test_prepare_writes_a_seeded_subject_level_half_split(acdc_release, tmp_path):
    output = tmp_path / "datalist.json"
    assert run_prepare(acdc_release, "--output", output, "--seed", 3, "--split", "random") == 0
    datalist = json.loads(output.read_text())
    training_subjects = {case["subject"] for case in datalist["training"]}
    validation_subjects = {case["subject"] for case in datalist["validation"]}
    assert len(training_subjects) == len(validation_subjects) == 2
    assert not training_subjects & validation_subjects
    assert datalist["numTraining"] == datalist["numValidation"] == 4  # ED and ES of each subject
    case = datalist["training"][0]
    assert (acdc_release / case["image"]).is_file() and case["label"].endswith("_gt.nii.gz")
    assert {case["phase"] for case in datalist["training"]} == {"ED", "ES"}

    again = tmp_path / "again.json"
    assert run_prepare(acdc_release, "--output", again, "--seed", 3, "--split", "random") == 0
    assert json.loads(again.read_text()) == datalist


def test_split_is_stratified_and_exact():
    cases = [{"subject": f"s{index}", "group": group} for index, group in enumerate(["A"] * 6 + ["B"] * 4)]
    training, validation = random_split(cases, 0.5, seed=1)
    assert len(validation) == 5
    assert sum(case["group"] == "A" for case in validation) == 3
    with pytest.raises(ValueError, match="empty"):
        random_split(cases[:1], 0.5)


def test_prepare_reports_bad_subjects_and_keeps_the_others(acdc_release, tmp_path, capsys):
    release = tmp_path / "release"
    shutil.copytree(acdc_release, release)
    bad_label = release / "training/patient002/patient002_frame01_gt.nii.gz"
    label = nib.load(bad_label)
    save_nifti(np.asanyarray(label.dataobj).astype(np.uint8) * 3, label.affine, bad_label)  # values up to 9
    (release / "training/patient003/patient003_frame01.nii.gz").write_bytes(b"not a nifti")
    (release / "testing/patient101").mkdir(parents=True)
    (release / "testing/patient101/Info.cfg").write_text("ED: 1\nES: 2\n")

    assert run_prepare(release) == 1
    captured = capsys.readouterr()
    assert f"{bad_label}: label values must lie in [0, 3]" in captured.err
    assert "patient003_frame01.nii.gz: cannot read as NIfTI" in captured.err
    assert "skipped testing/patient101: no ground truth" in captured.out
    datalist = json.loads((release / "datalist.json").read_text())
    subjects = {case["subject"] for case in datalist["training"] + datalist["validation"]}
    assert subjects == {"training/patient001", "training/patient004"}


def test_prepare_never_replaces_an_existing_datalist(acdc_release, tmp_path, capsys):
    output = tmp_path / "datalist.json"
    output.write_text("{}")
    assert run_prepare(acdc_release, "--output", output) == 2
    assert "already exists" in capsys.readouterr().err
    assert output.read_text() == "{}"
    assert run_prepare(acdc_release, "--output", output, "--overwrite") == 0
    assert json.loads(output.read_text())["numTraining"] == 4


def test_prepare_rejects_an_empty_folder(tmp_path, capsys):
    assert run_prepare(tmp_path) == 2
    assert "split of 0 subject(s) leaves training or validation empty" in capsys.readouterr().err
    assert run_prepare(tmp_path / "missing") == 2
    assert "not a folder" in capsys.readouterr().err
    assert not (tmp_path / "datalist.json").exists()


def test_collect_reports_missing_frames(acdc_release, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(acdc_release, release)
    (release / "training/patient001/patient001_frame01.nii.gz").unlink()
    report = collect_acdc_cases(release)
    assert "patient001_frame01.nii.gz: missing (ED frame" in report.failures["training/patient001"]
    assert len(report.cases) == 6


def test_prepare_script_runs_from_the_command_line(acdc_release, tmp_path):
    output = tmp_path / "datalist.json"
    result = subprocess.run([sys.executable, SCRIPT, acdc_release, "--output", output], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "4 training / 4 validation frames from 4 subjects" in result.stdout

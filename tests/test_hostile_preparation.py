"""Hostile inputs to preparation and datalist reading (issue 21): nothing lost, nothing run, nothing silently wrong.

Each test is one class of problem, checked at its one mechanism: outputs never replace inputs
(``preparation.check_output``), every label value is mapped or refused (preparation and ``CheckedMapLabelValued``),
a header claiming a huge volume is refused before allocation (``nifti.load_nifti``), bad or ambiguous class names
and selections are refused (``datalists.check_class_names``, ``preparation.plan_classes``), and datalists that
would train on nothing or on repeated cases are refused or warned about (``datalists.load_datalist``).
"""

from __future__ import annotations

import gzip
import json
import runpy
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.datalists import load_datalist, read_datalist_field
from common.data.nifti import UnreadableVolumeError, load_nifti, load_volume, save_nifti
from common.data.synthetic_acdc import write_acdc_dataset
from common.data.synthetic_releases import write_fake_brats, write_fake_kits19, write_fake_msd
from common.data.validation import CheckedMapLabelValued, validate_datalist
from common.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
MAINS = {name: runpy.run_path(str(SCRIPTS / f"prepare_{name}.py"))["main"] for name in ("acdc", "brats", "kits", "msd")}
LABELS = ("background", "liver", "aorta", "kidney")


def prepare(name: str, *args: object) -> int:
    return MAINS[name]([str(arg) for arg in args])


def error_lines(capsys: pytest.CaptureFixture) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small release of each kind, with the input files the tests try to overwrite."""
    root = tmp_path_factory.mktemp("hostile")
    return {
        "acdc": write_acdc_dataset(root / "acdc", num_subjects=2, shape=(16, 16, 4), num_frames=2),
        "brats": write_fake_brats(root / "brats", 2, (16, 16, 8)),
        "kits": write_fake_kits19(root / "kits", 2, (8, 16, 16)),
        "msd": write_fake_msd(root / "msd", n_cases=2, label_names=LABELS),
    }


def release_inputs(name: str, root: Path) -> list[Path]:
    """A few files each release's preparation reads: its description and an image and label of the first case."""
    if name == "acdc":
        subject = sorted(root.rglob("patient001"))[0]
        return [subject / "Info.cfg", subject / "patient001_frame01.nii.gz", subject / "patient001_frame01_gt.nii.gz"]
    if name == "brats":
        subject = sorted((root / "HGG").iterdir())[0]
        return [subject / f"{subject.name}_flair.nii.gz", subject / f"{subject.name}_seg.nii.gz"]
    if name == "kits":
        return [root / "case_00000" / "imaging.nii.gz", root / "case_00000" / "segmentation.nii.gz"]
    first = json.loads((root / "dataset.json").read_text())["training"][0]
    return [root / "dataset.json", root / first["image"], root / first["label"]]


@pytest.mark.parametrize("name", ["acdc", "brats", "kits", "msd"])
def test_no_output_ever_replaces_an_input_of_the_release(name, releases, tmp_path, capsys):
    root = releases[name]
    for path in release_inputs(name, root):
        assert path.is_file(), path
        before = path.read_bytes()
        relative = path.parent / ".." / path.parent.name / path.name  # the same file by another path
        link = tmp_path / f"link_to_{path.parent.name}_{path.name}"
        link.symlink_to(path)
        for output in (path, relative, link):
            assert prepare(name, root, "--output", output, "--overwrite") == 2, output
            [line] = error_lines(capsys)
            assert line.startswith(f"error: {output}:") and "is an input of the preparation" in line, line
        assert path.read_bytes() == before
    folder = tmp_path / "a folder"
    folder.mkdir()
    for extra in ([], ["--overwrite"]):
        assert prepare(name, root, "--output", folder, *extra) == 2
        assert error_lines(capsys) == [f"error: {folder}: is a folder, and this output is a file; give a file name"]
    assert not (root / "datalist.json").exists()


def test_refusals_are_one_line_with_exit_status_2_from_the_command_line(releases, tmp_path):
    root = releases["msd"]
    for output in (root / "dataset.json", tmp_path):
        result = subprocess.run(
            [sys.executable, str(SCRIPTS / "prepare_msd.py"), str(root), "--output", str(output), "--overwrite"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.splitlines() == [result.stderr.splitlines()[-1]]
        assert result.stderr.startswith(f"error: {output}:")
    assert json.loads((root / "dataset.json").read_text())["labels"]["1"] == "liver"


def test_merge_alone_says_which_labels_become_background_and_help_says_so(releases, tmp_path, capsys):
    output = tmp_path / "datalist.json"
    assert prepare("msd", releases["msd"], "--merge", "organs=liver,kidney", "--output", output) == 0
    out = capsys.readouterr().out
    assert "classes: 0 background, 1 organs" in out
    assert "background also takes labels 2 aorta (named by neither --labels nor --merge)" in out
    datalist = json.loads(output.read_text())
    assert datalist["label_mapping"] == {"orig_labels": [0, 1, 2, 3], "target_labels": [0, 1, 0, 1]}
    assert datalist["classes"][0] == {"index": 0, "name": "background", "values": [0, 2]}
    for name in ("msd", "brats", "kits"):
        with pytest.raises(SystemExit):
            prepare(name, "--help")
        help_text = " ".join(capsys.readouterr().out.split())
        assert "becomes background, also with ``--merge`` alone" in help_text, name
        assert "merged classes are kept and every other label becomes background" in help_text, name


def sparse_task(root: Path, stray_value: int) -> Path:
    """A task whose dataset.json declares 0, 1, 4 and whose first label also holds an undeclared value."""
    write_fake_msd(root, n_cases=2, label_names=("background", "liver", "tumour"))
    description = json.loads((root / "dataset.json").read_text())
    description["labels"] = {"0": "background", "1": "liver", "4": "tumour"}
    (root / "dataset.json").write_text(json.dumps(description))
    for index, path in enumerate(sorted((root / "labelsTr").glob("*.nii.gz"))):
        image = nib.load(path)
        label = np.asanyarray(image.dataobj).astype(np.uint8)
        label[label == 2] = 4
        if index == 0:
            label[0, 0, 0] = stray_value
        nib.save(nib.Nifti1Image(label, image.affine), path)
    return root


def test_every_label_value_is_mapped_or_refused_naming_the_file_and_value(tmp_path, capsys):
    root = sparse_task(tmp_path / "Task", stray_value=2)
    stray = sorted((root / "labelsTr").glob("*.nii.gz"))[0]
    # preparation: the case fails by name, the other is written
    assert prepare("msd", root, "--validation-fraction", 0) == 1
    assert f"{stray}: label values [2] are not among the release's [0, 1, 4]" in capsys.readouterr().err
    # training on the plain dataset.json: 0, 1, 4 -> 0, 1, 2, so a stray 2 would be trained as the tumour
    mapping = read_datalist_field(root / "dataset.json", "label_mapping")
    assert mapping == {"orig_labels": [0, 1, 4], "target_labels": [0, 1, 2]}
    cases = load_datalist(root / "dataset.json")
    with pytest.raises(ValueError, match=r"1 of 2 case\(s\) failed") as caught:
        validate_datalist(cases, num_classes=3, label_mapping=mapping)
    assert f"{stray}: label value(s) [2] are not among the values [0, 1, 4]" in str(caught.value)
    transform = CheckedMapLabelValued("label", **mapping)
    good = np.array([[[0, 1], [4, 4]]], dtype=np.uint8)
    np.testing.assert_array_equal(transform({"label": good})["label"], [[[0, 1], [2, 2]]])
    with pytest.raises(ValueError, match=r"<label>: label value\(s\) \[2, 7\] are not among"):
        transform({"label": np.array([[[0, 2], [7, 4]]])})


def write_huge_header(path: Path, nifti2: bool) -> Path:
    """A NIfTI file whose header claims 100000^3 (NIfTI-2) or 30000^3 (NIfTI-1, int16 dims) voxels of 4 bytes."""
    image_type = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    image = image_type(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    image.header.set_data_shape((100000,) * 3 if nifti2 else (30000,) * 3)
    raw = image.header.binaryblock + bytes(4 + 64)
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


@pytest.mark.parametrize("nifti2", [True, False])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_header_claiming_a_huge_volume_is_refused_before_allocation(nifti2, suffix, tmp_path):
    path = write_huge_header(tmp_path / f"huge{suffix}", nifti2)
    side = "100000" if nifti2 else "30000"
    for opener in (load_nifti, load_volume):
        with pytest.raises(UnreadableVolumeError, match=rf"huge{suffix}: cannot read as NIfTI: its header claims "):
            opener(path)
    with pytest.raises(UnreadableVolumeError, match=rf"shape \({side}, {side}, {side}\)"):
        load_volume(path)
    small = save_nifti(np.ones((40, 40, 40), np.uint8), np.eye(4), tmp_path / f"zeros{suffix}")
    assert load_volume(small)[0].sum() == 40**3  # a real, highly compressible volume still opens


def test_huge_headers_are_refused_by_preparation_and_datalist_reading(tmp_path, capsys):
    root = write_fake_msd(tmp_path / "Task", n_cases=3)
    label = sorted((root / "labelsTr").glob("*.nii.gz"))[0]
    write_huge_header(label, nifti2=True)
    assert prepare("msd", root, "--validation-fraction", 0) == 1
    assert f"{label}: cannot read as NIfTI: its header claims shape (100000, 100000, 100000)" in (
        capsys.readouterr().err
    )
    with pytest.raises(UnreadableVolumeError, match=f"{label}: cannot read as NIfTI"):
        load_datalist(root / "dataset.json")  # before any data loader allocates it


def test_an_empty_training_section_names_the_datalist(tmp_path):
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"labels": {"0": "background", "1": "x"}, "training": [], "validation": []}))
    with pytest.raises(UserError, match=rf"{datalist}: no cases in 'training', nothing to train on; prepare the"):
        load_datalist(datalist, "training")
    with pytest.warns(UserWarning, match="no validation cases"):  # validation falls back to the training cases
        with pytest.raises(UserError, match=rf"{datalist}: no cases in 'training'"):
            load_datalist(datalist, "validation")


@pytest.mark.parametrize(
    ("labels", "options", "message"),
    [
        ({"1": "liver|left", "2": "aorta"}, [], "class name 'liver|left' holds '|'"),
        ({"1": "liver\nleft", "2": "aorta"}, [], "class name 'liver\\nleft' holds '\\n'"),
        ({"1": "liver", "2": "aorta"}, ["--merge", "a|b=1,2"], "class name 'a|b' holds '|'"),
        ({"1": "liver", "2": "aorta"}, ["--labels", "aorta", "--merge", "Aorta=1"], "two classes are named 'aorta'"),
        ({"1": "liver", "2": "aorta"}, ["--merge", "background=1"], "two classes are named 'background'"),
        ({"1": "kidney", "2": "kidney"}, [], "two classes are named 'kidney'"),
        ({"1": "kidney", "2": "kidney"}, ["--labels", "kidney"], "label name 'kidney' is ambiguous: values [1, 2]"),
        ({"1": "liver", "01": "aorta"}, [], "'labels' names one value twice"),
        ({"1": "liver", "2": 7}, [], "'labels' names must be strings"),
    ],
)
def test_bad_or_ambiguous_class_names_are_refused(labels, options, message, tmp_path, capsys):
    root = write_fake_msd(tmp_path / "Task", n_cases=2, label_names=("background", "a", "b"))
    description = json.loads((root / "dataset.json").read_text())
    description["labels"] = {"0": "background", **labels}
    (root / "dataset.json").write_text(json.dumps(description))
    assert prepare("msd", root, *options) == 2
    [line] = error_lines(capsys)
    assert message in line, line
    assert not (root / "datalist.json").exists()


def test_a_case_listed_twice_or_in_both_sections_is_warned_about(tmp_path, capsys):
    root = write_fake_msd(tmp_path / "Task", n_cases=3)
    description = json.loads((root / "dataset.json").read_text())
    first, second, third = description["training"]
    datalist = tmp_path / "datalist.json"
    content = {"labels": description["labels"], "training": [first, first, second], "validation": [second, third]}
    datalist.write_text(json.dumps(content))
    assert len(load_datalist(datalist, "training", root)) == 3
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"warning: {datalist}: case {first['image']} is listed more than once in 'training'",
        f"warning: {datalist}: case {second['image']} is in both 'training' and 'validation'; the validation score "
        "is not a held-out score (prepare the datalist again with scripts/prepare_*.py)",
    ]
    load_datalist(datalist, "validation", root)
    assert capsys.readouterr().err == ""  # warned once, when training reads it

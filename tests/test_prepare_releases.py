from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from common.data.nifti import save_nifti
from common.data.synthetic_releases import write_fake_brats, write_fake_kits19, write_fake_msd

SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "scripts"
SCRIPT_NAMES = ("brats", "kits", "msd")
MAINS = {name: runpy.run_path(str(SCRIPTS_DIR / f"prepare_{name}.py"))["main"] for name in SCRIPT_NAMES}
SHAPE = (16, 16, 8)
KITS_SHAPE = (8, 16, 16)  # KiTS19 stores slices along the first axis
MSD_MODALITIES = ("FLAIR", "T1w")
MSD_LABELS = ("background", "oedema", "tumour")


def write_release(name: str, root: Path, n_subjects: int = 4, seed: int = 0) -> Path:
    if name == "brats":
        return write_fake_brats(root, n_subjects, SHAPE, seed)
    if name == "kits":
        return write_fake_kits19(root, n_subjects, KITS_SHAPE, seed, n_unlabelled=1)
    return write_fake_msd(root, n_subjects, SHAPE, seed, MSD_MODALITIES, MSD_LABELS, n_test=1)


def run_prepare(name: str, *args: object) -> int:
    return MAINS[name]([str(arg) for arg in args])


def subjects_of(cases: list[dict]) -> set[str]:
    return {case["subject"] for case in cases}


def read_array(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One fake release per script, four labelled subjects each (read-only)."""
    root = tmp_path_factory.mktemp("releases")
    return {name: write_release(name, root / name, seed=index) for index, name in enumerate(SCRIPT_NAMES)}


def test_fake_brats_has_the_release_layout(releases):
    root = releases["brats"]
    assert [path.name for path in sorted((root / "HGG").iterdir())] == ["Brats18_FAKE_001_1", "Brats18_FAKE_003_1"]
    assert [path.name for path in sorted((root / "LGG").iterdir())] == ["Brats18_FAKE_002_1", "Brats18_FAKE_004_1"]
    subject = root / "HGG" / "Brats18_FAKE_001_1"
    suffixes = ("t1", "t1ce", "t2", "flair", "seg")
    assert sorted(path.name for path in subject.iterdir()) == sorted(f"{subject.name}_{s}.nii.gz" for s in suffixes)
    for modality in suffixes[:4]:
        image = read_array(subject / f"{subject.name}_{modality}.nii.gz")
        assert image.shape == SHAPE and image[0, 0, 0] == 0  # skull-stripped: zero outside the brain
    assert set(np.unique(read_array(subject / f"{subject.name}_seg.nii.gz"))) == {0, 1, 2, 4}


def test_fake_kits_and_msd_have_the_release_layouts(releases):
    kits = releases["kits"]
    assert sorted(path.name for path in kits.iterdir()) == [f"case_{index:05d}" for index in range(5)]
    assert not (kits / "case_00004" / "segmentation.nii.gz").exists()
    segmentation = nib.load(kits / "case_00000" / "segmentation.nii.gz")
    assert segmentation.shape == KITS_SHAPE and abs(segmentation.affine[2, 0]) > 0  # first axis runs along z
    assert set(np.unique(np.asanyarray(segmentation.dataobj))) == {0, 1, 2}

    msd = releases["msd"]
    description = json.loads((msd / "dataset.json").read_text())
    assert description["modality"] == {"0": "FLAIR", "1": "T1w"}
    assert description["labels"] == {"0": "background", "1": "oedema", "2": "tumour"}
    assert len(description["training"]) == description["numTraining"] == 4
    first = description["training"][0]
    assert nib.load(msd / first["image"]).shape == (*SHAPE, 2)
    assert set(np.unique(read_array(msd / first["label"]))) == {0, 1, 2}
    assert [path.name for path in (msd / "imagesTs").iterdir()] == ["faketask_005.nii.gz"]


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_fake_writers_are_seeded_and_refuse_existing_data(name, tmp_path):
    first = write_release(name, tmp_path / "a", n_subjects=2, seed=5)
    second = write_release(name, tmp_path / "b", n_subjects=2, seed=5)
    other = write_release(name, tmp_path / "c", n_subjects=2, seed=6)
    files = sorted(path.relative_to(first) for path in first.rglob("*.nii.gz"))
    assert files == sorted(path.relative_to(second) for path in second.rglob("*.nii.gz"))
    assert all(np.array_equal(read_array(first / file), read_array(second / file)) for file in files)
    assert not all(np.array_equal(read_array(first / file), read_array(other / file)) for file in files)
    with pytest.raises(FileExistsError, match="already exists"):
        write_release(name, first, n_subjects=2)


def test_fake_writers_reject_volumes_too_small_for_a_lesion(tmp_path):
    with pytest.raises(ValueError, match="at least 8 voxels"):
        write_fake_brats(tmp_path, 1, shape=(16, 16, 4))


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_prepare_writes_a_seeded_subject_level_half_split(name, releases, tmp_path):
    root = releases[name]
    output = tmp_path / "datalist.json"
    assert run_prepare(name, root, "--output", output, "--seed", 3, "--split", "random") == 0
    datalist = json.loads(output.read_text())
    training, validation = subjects_of(datalist["training"]), subjects_of(datalist["validation"])
    assert len(training) == len(validation) == 2 and not training & validation
    assert datalist["numTraining"] == datalist["numValidation"] == 2
    assert datalist["split"] == {"protocol": "random", "seed": 3, "validation_fraction": 0.5}
    for case in datalist["training"] + datalist["validation"]:
        images = case["image"] if isinstance(case["image"], list) else [case["image"]]
        assert all((root / path).is_file() for path in [*images, case["label"]])
    assert run_prepare(name, root, "--output", tmp_path / "again.json", "--seed", 3, "--split", "random") == 0
    assert json.loads((tmp_path / "again.json").read_text()) == datalist

    splits = set()
    for seed in range(6):
        seeded = tmp_path / f"seed{seed}.json"
        assert run_prepare(name, root, "--output", seeded, "--seed", seed, "--split", "random") == 0
        splits.add(frozenset(subjects_of(json.loads(seeded.read_text())["validation"])))
    assert len(splits) > 1


def test_brats_split_is_stratified_by_grade_and_keeps_modality_order(releases, tmp_path):
    output = tmp_path / "datalist.json"
    assert run_prepare("brats", releases["brats"], "--output", output, "--split", "random") == 0
    datalist = json.loads(output.read_text())
    for side in ("training", "validation"):
        assert sorted(case["group"] for case in datalist[side]) == ["HGG", "LGG"]
    case = datalist["training"][0]
    assert [path.rsplit("_", 1)[1] for path in case["image"]] == [
        "t1.nii.gz",
        "t1ce.nii.gz",
        "t2.nii.gz",
        "flair.nii.gz",
    ]
    assert case["shape"] == list(SHAPE)
    assert datalist["modality"] == {"0": "t1", "1": "t1ce", "2": "t2", "3": "flair"}


def test_brats_label_mapping_is_recorded_and_works_with_monai(releases, tmp_path):
    from monai.data import load_decathlon_datalist
    from monai.transforms import MapLabelValued

    root = releases["brats"]
    output = tmp_path / "datalist.json"
    assert run_prepare("brats", root, "--output", output) == 0
    datalist = json.loads(output.read_text())
    assert datalist["num_classes"] == 4
    assert datalist["label_mapping"] == {"orig_labels": [0, 1, 2, 4], "target_labels": [0, 1, 2, 3]}
    assert datalist["inverse_label_mapping"] == {"orig_labels": [0, 1, 2, 3], "target_labels": [0, 1, 2, 4]}
    assert datalist["labels"]["3"] == "enhancing tumour"

    case = load_decathlon_datalist(output, data_list_key="validation", base_dir=root)[0]
    assert len(case["image"]) == 4 and all(Path(path).is_file() for path in case["image"])
    raw = read_array(Path(case["label"]))
    training_labels = MapLabelValued("label", **datalist["label_mapping"])({"label": raw})["label"]
    assert set(np.unique(training_labels)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(training_labels == 3, raw == 4)
    restored = MapLabelValued("label", **datalist["inverse_label_mapping"])({"label": training_labels})["label"]
    np.testing.assert_array_equal(restored, raw)


def test_kits_and_msd_metadata_follow_the_release(releases, tmp_path, capsys):
    kits_output, msd_output = tmp_path / "kits.json", tmp_path / "msd.json"
    assert run_prepare("kits", releases["kits"], "--output", kits_output) == 0
    assert "skipped case_00004: no segmentation.nii.gz" in capsys.readouterr().out
    kits = json.loads(kits_output.read_text())
    assert kits["num_classes"] == 3 and kits["labels"] == {"0": "background", "1": "kidney", "2": "tumour"}
    assert kits["label_mapping"] == {"orig_labels": [0, 1, 2], "target_labels": [0, 1, 2]}
    assert kits["training"][0]["image"].endswith("imaging.nii.gz") and kits["split"]["protocol"] == "authors"

    assert run_prepare("msd", releases["msd"], "--output", msd_output) == 0
    msd = json.loads(msd_output.read_text())
    assert msd["name"] == "FakeTask" and msd["num_classes"] == 3
    assert msd["labels"] == {"0": "background", "1": "oedema", "2": "tumour"}
    assert msd["modality"] == {"0": "FLAIR", "1": "T1w"}
    assert msd["training"][0]["image"].startswith("imagesTr/")


def test_validation_fraction_is_configurable(releases, tmp_path):
    output = tmp_path / "datalist.json"
    assert (
        run_prepare("kits", releases["kits"], "--output", output, "--validation-fraction", "0.25", "--split", "random")
        == 0
    )
    datalist = json.loads(output.read_text())
    assert (datalist["numTraining"], datalist["numValidation"]) == (3, 1)
    assert datalist["split"]["validation_fraction"] == 0.25
    with pytest.raises(SystemExit):
        run_prepare("kits", releases["kits"], "--output", tmp_path / "bad.json", "--validation-fraction", "1")
    assert not (tmp_path / "bad.json").exists()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def replace_volume(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    save_nifti(array, nib.load(path).affine if affine is None else affine, path)


def break_brats(root: Path) -> dict[str, str]:
    """Break three subjects; return subject -> text the report must contain."""
    missing = root / "LGG/Brats18_FAKE_002_1/Brats18_FAKE_002_1_flair.nii.gz"
    missing.unlink()
    bad_values = root / "HGG/Brats18_FAKE_003_1/Brats18_FAKE_003_1_seg.nii.gz"
    replace_volume(bad_values, np.full(SHAPE, 3, dtype=np.uint8))
    mismatched = root / "LGG/Brats18_FAKE_004_1/Brats18_FAKE_004_1_t2.nii.gz"
    replace_volume(mismatched, np.zeros((16, 16, 9), dtype=np.int16))
    return {
        "Brats18_FAKE_002_1": f"missing {missing}",
        "Brats18_FAKE_003_1": f"{bad_values}: label values [3] are not among the release's [0, 1, 2, 4]",
        "Brats18_FAKE_004_1": f"{mismatched}: shape (16, 16, 9) differs from the label's (16, 16, 8)",
    }


def break_kits(root: Path) -> dict[str, str]:
    corrupt = root / "case_00001/imaging.nii.gz"
    truncate(corrupt)
    moved = root / "case_00002/segmentation.nii.gz"
    replace_volume(moved, read_array(moved), affine=np.diag([2.0, 1.0, 1.0, 1.0]))
    return {
        "case_00001": f"{corrupt}: cannot read as NIfTI",
        "case_00002": f"{root / 'case_00002/imaging.nii.gz'}: affine differs from the label's ({moved})",
    }


def break_msd(root: Path) -> dict[str, str]:
    description_path = root / "dataset.json"
    description = json.loads(description_path.read_text())
    wrong_channels = root / "imagesTr/faketask_002.nii.gz"
    replace_volume(wrong_channels, np.zeros((*SHAPE, 3), dtype=np.float32))
    missing_label = root / "labelsTr/faketask_003.nii.gz"
    missing_label.unlink()
    description["training"].append({"image": "./imagesTr/faketask_001.nii.gz"})  # hand-added, no label path
    description_path.write_text(json.dumps(description))
    shutil.copy(root / "imagesTr/faketask_001.nii.gz", root / "imagesTr/unlisted_001.nii.gz")
    return {
        "faketask_002": f"{wrong_channels}: 3 channels, expected 2",
        "faketask_003": f"missing {missing_label}",
        "training[6]": f"{description_path}: training entry 6 lacks an image or label path",
    }


BREAKERS: dict[str, Callable[[Path], dict[str, str]]] = {"brats": break_brats, "kits": break_kits, "msd": break_msd}


def subject_names(name: str, n_subjects: int) -> set[str]:
    if name == "brats":
        return {f"Brats18_FAKE_{index:03d}_1" for index in range(1, n_subjects + 1)}
    if name == "kits":
        return {f"case_{index:05d}" for index in range(n_subjects)}
    return {f"faketask_{index:03d}" for index in range(1, n_subjects + 1)}


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_bad_cases_are_reported_by_file_and_the_others_written(name, tmp_path, capsys):
    n_subjects = 6
    root = write_release(name, tmp_path / name, n_subjects)
    expected = BREAKERS[name](root)

    assert run_prepare(name, root, "--split", "random") == 1
    captured = capsys.readouterr()
    for item, message in expected.items():
        assert f"  {item}: {message}" in captured.err
    datalist = json.loads((root / "datalist.json").read_text())
    written = subjects_of(datalist["training"]) | subjects_of(datalist["validation"])
    assert written == subject_names(name, n_subjects) - set(expected)
    if name == "msd":
        assert (
            f"skipped unlisted_001: {root / 'imagesTr/unlisted_001.nii.gz'}: not listed in dataset.json" in captured.out
        )


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_an_existing_datalist_is_kept_without_overwrite(name, releases, tmp_path, capsys):
    output = tmp_path / "datalist.json"
    output.write_text("{}")
    assert run_prepare(name, releases[name], "--output", output) == 2
    assert f"error: {output}: already exists from an earlier run; pass --overwrite" in capsys.readouterr().err
    assert output.read_text() == "{}"
    assert run_prepare(name, releases[name], "--output", output, "--overwrite", "--split", "random") == 0
    assert json.loads(output.read_text())["numTraining"] == 2


def test_unusable_release_folders_are_refused_with_the_reason(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    description = {"name": "NoModality", "labels": {"0": "background", "1": "x"}, "training": []}
    (tmp_path / "task").mkdir()
    (tmp_path / "task/dataset.json").write_text(json.dumps(description))
    (tmp_path / "named").mkdir()
    (tmp_path / "named/dataset.json").write_text(
        json.dumps({**description, "modality": {"0": "CT"}, "labels": {"a": 1}})
    )
    cases = [
        ("brats", tmp_path / "empty", "no HGG/ or LGG/ folder"),
        ("kits", tmp_path / "empty", "no case_XXXXX folders"),
        ("msd", tmp_path / "empty", f"{tmp_path / 'empty/dataset.json'}: cannot read the MSD description"),
        ("msd", tmp_path / "task", f"{tmp_path / 'task/dataset.json'}: missing entries ['modality']"),
        ("msd", tmp_path / "named", "'labels' keys must be integers written as strings"),
        ("kits", tmp_path / "absent", f"{tmp_path / 'absent'}: not a folder"),
    ]
    for name, root, message in cases:
        assert run_prepare(name, root, "--output", tmp_path / "datalist.json") == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "datalist.json").exists()


def test_a_single_usable_subject_is_not_split(tmp_path, capsys):
    root = write_fake_kits19(tmp_path / "kits", n_cases=2, shape=KITS_SHAPE)
    truncate(root / "case_00000/segmentation.nii.gz")
    assert run_prepare("kits", root) == 2
    err = capsys.readouterr().err
    assert "1 subject(s)" in err and f"{root / 'case_00000/segmentation.nii.gz'}: cannot read as NIfTI" in err
    assert not (root / "datalist.json").exists()


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_scripts_run_from_the_command_line(name, releases, tmp_path):
    output = tmp_path / "datalist.json"
    command = [sys.executable, SCRIPTS_DIR / f"prepare_{name}.py", releases[name], "--output", output, "--seed", "1"]
    command += ["--split", "random"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert f"wrote {output}: 2 training / 2 validation cases from 4 " in result.stdout
    assert json.loads(output.read_text())["split"]["seed"] == 1

"""Datalist writing and reading, split protocols, MSD preparation options and slice geometry on small real layouts."""

from __future__ import annotations

import json
import os
import runpy
import stat
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import MapLabelValued

from common.data.datalists import load_datalist, read_datalist_field
from common.data.geometry import AddSliceAxisd, SliceSpacingd, SliceStepd, volume_geometry
from common.data.nifti import save_nifti
from common.data.splits import holdout_folds, parity_split, position_parity_split, random_split
from common.data.synthetic_releases import write_fake_msd
from common.data.validation import ValidateSegmentationd, validate_datalist
from common.files import atomic_output, write_json_atomic

REPO = Path(__file__).resolve().parents[1]
PREPARE_MSD = runpy.run_path(str(REPO / "scripts" / "prepare_msd.py"))["main"]
LABELS = ("background", "liver", "aorta", "kidney")


def prepare_msd(*args: object) -> int:
    return PREPARE_MSD([str(arg) for arg in args])


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake MSD task with 4 classes, 6 cases (read-only)."""
    return write_fake_msd(tmp_path_factory.mktemp("task") / "Task", n_cases=6, label_names=LABELS)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        plain = tmp_path / "plain.json"
        plain.write_text("{}")
        atomic = write_json_atomic({}, tmp_path / "atomic.json")
        image = save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), tmp_path / "x.nii.gz")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert stat.S_IMODE(plain.stat().st_mode) == expected
    assert stat.S_IMODE(atomic.stat().st_mode) == expected == stat.S_IMODE(image.stat().st_mode)


def test_atomic_output_keeps_an_upper_case_nifti_extension(tmp_path):
    target = tmp_path / "CASE.NII.GZ"
    with atomic_output(target) as temporary:
        assert temporary.name.endswith(".NII.GZ")
        nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4)), temporary)
    assert np.asanyarray(nib.load(target).dataobj).sum() == 8


def test_a_plain_decathlon_dataset_json_is_a_datalist(task):
    description = task / "dataset.json"  # image/label entries only, labels keyed by value
    with pytest.warns(UserWarning, match="validating on the 6 training case"):
        validation = load_datalist(description, "validation")
    assert validation == load_datalist(description, "training")
    assert Path(validation[0]["image"]).is_file() and set(validation[0]) == {"image", "label"}
    assert read_datalist_field(description, "num_classes") == 4
    assert read_datalist_field(description, "class_names") == ["liver", "aorta", "kidney"]
    assert read_datalist_field(description, "label_mapping") == {
        "orig_labels": [0, 1, 2, 3],
        "target_labels": [0, 1, 2, 3],
    }
    assert read_datalist_field(description, "slice_axis", 2) == 2
    with pytest.raises(KeyError, match="no 'spacing' entry"):
        read_datalist_field(description, "spacing")
    assert read_datalist_field(description.parent / "absent.json", "slice_axis", 2) == 2
    with pytest.raises(FileNotFoundError, match="absent.json: datalist not found"):
        read_datalist_field(description.parent / "absent.json", "num_classes")


def test_non_consecutive_plain_labels_map_to_consecutive_indices(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"0": "bg", "4": "b", "1": "a"}, "training": []}))
    assert read_datalist_field(path, "label_mapping") == {"orig_labels": [0, 1, 4], "target_labels": [0, 1, 2]}
    assert read_datalist_field(path, "inverse_label_mapping")["target_labels"] == [0, 1, 4]
    assert read_datalist_field(path, "class_names") == ["a", "b"]


def cases_of(subjects: list[str]) -> list[dict]:
    return [{"subject": subject, "phase": phase} for subject in subjects for phase in ("ED", "ES")]


def test_parity_splits_follow_the_authors():
    cases = cases_of([f"patient{number:03d}" for number in range(1, 11)])
    training, validation = parity_split(cases, lambda case: int(case["subject"][-3:]))
    assert {case["subject"] for case in training} == {f"patient{n:03d}" for n in (2, 4, 6, 8, 10)}
    assert len(training) == len(validation) == 10
    training, validation = position_parity_split(cases_of(["c", "a", "d", "b"]))
    assert {case["subject"] for case in training} == {"a", "c"}  # sorted a b c d: positions 0 and 2


def test_explog_shuffles_are_70_30_and_differ(tmp_path):
    task = write_fake_msd(tmp_path / "Task", n_cases=10, label_names=LABELS)
    held_out = []
    for shuffle in range(5):
        output = tmp_path / f"shuffle{shuffle}.json"
        assert prepare_msd(task, "--split", "explog", "--shuffle", shuffle, "--output", output) == 0
        datalist = json.loads(output.read_text())
        assert (datalist["numTraining"], datalist["numValidation"]) == (7, 3)
        assert datalist["split"] == {"protocol": "explog", "seed": 0, "shuffle": shuffle, "test_fraction": 0.3}
        held_out.append(frozenset(case["subject"] for case in datalist["validation"]))
    assert len(set(held_out)) > 1
    assert prepare_msd(task, "--split", "explog", "--shuffle", 5, "--output", tmp_path / "bad.json") == 2


def test_sadice_folds_are_disjoint_and_cover_the_non_test_subjects():
    cases = cases_of([f"s{index:02d}" for index in range(20)])
    tests, validations = set(), []
    for fold in range(5):
        training, validation, test = holdout_folds(cases, fold, folds=5, seed=3)
        tests.add(frozenset(case["subject"] for case in test))
        validations.append({case["subject"] for case in validation})
        assert not {case["subject"] for case in training} & validations[-1]
    assert len(tests) == 1 and len(next(iter(tests))) == 2  # the same 10 % test subjects for every fold
    pooled = set().union(*validations)
    assert len(pooled) == 18 and sum(map(len, validations)) == 18 and not pooled & next(iter(tests))


def test_random_split_allows_a_train_only_datalist():
    training, validation = random_split(cases_of(["only"]), 0.0)
    assert len(training) == 2 and validation == []
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        random_split(cases_of(["a", "b"]), 1.0)


def test_selected_and_merged_labels_map_back_to_the_data_set_values(task, tmp_path, capsys):
    output = tmp_path / "datalist.json"
    assert prepare_msd(task, "--labels", "aorta", "--merge", "organs=liver,3", "--output", output) == 0
    assert "classes: 0 background, 1 aorta, 2 organs" in capsys.readouterr().out
    datalist = json.loads(output.read_text())
    assert datalist["num_classes"] == 3 and datalist["class_names"] == ["aorta", "organs"]
    assert datalist["classes"][2] == {"index": 2, "name": "organs", "values": [1, 3]}
    raw = np.asanyarray(nib.load(task / datalist["training"][0]["label"]).dataobj)
    indices = MapLabelValued("label", **datalist["label_mapping"])({"label": raw})["label"]
    np.testing.assert_array_equal(indices == 1, raw == 2)
    np.testing.assert_array_equal(indices == 2, (raw == 1) | (raw == 3))
    written = MapLabelValued("label", **datalist["inverse_label_mapping"])({"label": indices})["label"]
    assert set(np.unique(written)) <= {0, 2, 1} and np.array_equal(written == 2, raw == 2)
    for bad in (["--labels", "spleen"], ["--labels", "aorta", "--merge", "x=aorta,1"], ["--merge", "nogroup"]):
        assert prepare_msd(task, *bad, "--output", tmp_path / "bad.json") == 2
    assert not (tmp_path / "bad.json").exists()


def test_hostile_dataset_json_entries_are_refused_by_name(task, tmp_path, capsys):
    root = tmp_path / "Task"
    root.mkdir()
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).symlink_to(task / folder)
    description = json.loads((task / "dataset.json").read_text())
    first = description["training"][0]
    outside = tmp_path / "outside.nii.gz"
    save_nifti(np.zeros((8, 8, 8), np.float32), np.eye(4), outside)
    description["training"] += [
        dict(first),  # listed twice
        {"image": "../outside.nii.gz", "label": first["label"]},
        {"image": str(outside), "label": first["label"]},
        {"image": str(root / first["image"]), "label": first["label"]},  # absolute but inside: the same image again
    ]
    (root / "dataset.json").write_text(json.dumps(description))
    assert prepare_msd(root, "--validation-fraction", 0.5) == 1
    err = capsys.readouterr().err
    assert "training entry 6 lists imagesTr/faketask_001.nii.gz again (first in entry 0)" in err
    assert "training entry 7 names '../outside.nii.gz', outside the task folder" in err
    assert f"training entry 8 names '{outside}', outside the task folder" in err
    assert "training entry 9 lists imagesTr/faketask_001.nii.gz again" in err
    datalist = json.loads((root / "datalist.json").read_text())
    images = [case["image"] for section in ("training", "validation") for case in datalist[section]]
    assert len(images) == len(set(images)) == 6 and all(not image.startswith("..") for image in images)


def test_same_file_names_in_two_folders_stay_two_cases(tmp_path):
    root = write_fake_msd(tmp_path / "Task", n_cases=2)
    description = json.loads((root / "dataset.json").read_text())
    for site in ("siteA", "siteB"):
        for folder in ("imagesTr", "labelsTr"):
            (root / folder / site).mkdir()
            (root / folder / site / "case.nii.gz").write_bytes((root / folder / "faketask_001.nii.gz").read_bytes())
    description["training"] = [
        {"image": f"imagesTr/{site}/case.nii.gz", "label": f"labelsTr/{site}/case.nii.gz"}
        for site in ("siteA", "siteB")
    ]
    (root / "dataset.json").write_text(json.dumps(description))
    assert prepare_msd(root, "--validation-fraction", 0.5) == 0
    datalist = json.loads((root / "datalist.json").read_text())
    subjects = {case["subject"] for section in ("training", "validation") for case in datalist[section]}
    assert subjects == {"imagesTr/siteA/case", "imagesTr/siteB/case"}


def test_a_single_case_folder_prepares_train_only_and_2d_files_pass(tmp_path, capsys):
    root = tmp_path / "Slices"
    affine = np.diag([-0.8, 0.8, 6.5, 1.0])
    label = np.zeros((16, 12), np.uint8)
    label[4:9, 3:7] = 1
    save_nifti(label.astype(np.float32) * 100, affine, root / "imagesTr/slice.nii.gz")
    save_nifti(label, affine, root / "labelsTr/slice.nii.gz")
    description = {"labels": {"0": "background", "1": "lesion"}, "modality": {"0": "MR"}, "training": []}
    description["training"].append({"image": "imagesTr/slice.nii.gz", "label": "labelsTr/slice.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(description))
    assert prepare_msd(root) == 2  # the default 50/50 split needs two cases
    assert "use 0 for a train-only datalist" in capsys.readouterr().err
    assert prepare_msd(root, "--validation-fraction", 0) == 0
    datalist = json.loads((root / "datalist.json").read_text())
    assert (datalist["numTraining"], datalist["numValidation"]) == (1, 0)
    case = datalist["training"][0]
    assert case["shape"] == [16, 12] and case["spacing"] == [0.8, 0.8, 6.5] and datalist["slice_axis"] == 2
    cases = load_datalist(root / "datalist.json")
    assert validate_datalist(cases, num_classes=2, allow_2d=True) == cases
    with pytest.raises(ValueError, match="slice.nii.gz: expected a 3D image, got 2 spatial dimension"):
        validate_datalist(cases, num_classes=2)


def test_volume_geometry_counts_axes_in_ras():
    kits_like = np.array([[0.0, 0.0, -0.8, 0.0], [0.0, -0.8, 0.0, 0.0], [-3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert volume_geometry(kits_like) == volume_geometry(np.diag([0.8, 0.8, 3.0, 1.0]))
    assert volume_geometry(kits_like).slice_axis == 2 and volume_geometry(kits_like).spacing == [0.8, 0.8, 3.0]
    assert volume_geometry(np.diag([1.0, 1.0, 1.0, 1.0])).slice_axis == 2  # isotropic: axial
    assert volume_geometry(np.diag([5.0, 1.0, 1.0, 1.0])).slice_axis == 0
    assert volume_geometry(np.diag([3.0, 3.0, 1.0, 1.0]), spatial_dims=2).slice_axis == 2  # a 2D file's own slice


def volume(shape: tuple[int, ...], spacing: tuple[float, ...]) -> MetaTensor:
    return MetaTensor(torch.rand(1, *shape), affine=torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64)))


def test_slice_spacing_resamples_in_plane_only_and_refuses_a_finer_slice_axis():
    resample = SliceSpacingd(["image"], slice_axis=2, pixdim=1.0, mode="bilinear")
    out = resample({"image": volume((20, 10, 23), (0.5, 2.0, 6.5))})["image"]
    assert tuple(out.shape) == (1, 10, 19, 23)  # extents 9.5 and 18 mm at 1 mm; the 23 slices are kept
    with pytest.raises(ValueError, match=r"<image>: slice_axis 0 has spacing 0.5 mm but axis 2 is coarser"):
        SliceSpacingd(["image"], slice_axis=0, pixdim=1.0)({"image": volume((20, 10, 23), (0.5, 0.5, 6.5))})
    with pytest.raises(ValueError, match="slice_axis must be 0, 1 or 2"):
        SliceSpacingd(["image"], slice_axis=3, pixdim=1.0)


def test_slice_step_keeps_every_kth_slice_exactly_with_its_position():
    image = volume((6, 5, 10), (0.8, 0.8, 2.5))
    image.affine[:3, 3] = torch.tensor([10.0, -4.0, 7.0], dtype=torch.float64)
    label = MetaTensor((image > 0.5).to(torch.uint8), affine=image.affine.clone())
    original = image.as_tensor().clone()
    thinned = SliceStepd(["image", "label"], slice_axis=2, step=4)({"image": image, "label": label})
    assert torch.equal(thinned["image"].as_tensor(), image.as_tensor()[..., [0, 4, 8]])  # no interpolation
    assert torch.equal(thinned["label"].as_tensor(), label.as_tensor()[..., [0, 4, 8]])
    for key in ("image", "label"):  # kept slice j lies where slice 4 j of the input lies
        for kept in range(3):
            voxel = torch.tensor([2.0, 3.0, kept, 1.0], dtype=torch.float64)
            source = torch.tensor([2.0, 3.0, 4 * kept, 1.0], dtype=torch.float64)
            assert torch.allclose(thinned[key].affine @ voxel, image.affine @ source)
    assert thinned["image"].pixdim.tolist() == pytest.approx([0.8, 0.8, 10.0])
    assert tuple(image.shape) == (1, 6, 5, 10) and torch.equal(image.as_tensor(), original)  # input kept
    one_slice = SliceStepd(["image"], slice_axis=0, step=3)({"image": volume((1, 4, 4), (1.0, 1.0, 1.0))})
    assert tuple(one_slice["image"].shape) == (1, 1, 4, 4)  # a one-slice volume keeps its slice
    unchanged = {"image": image}
    assert SliceStepd(["image"], slice_axis=2, step=1)(unchanged)["image"] is image
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="slice step must be a whole number"):
            SliceStepd(["image"], slice_axis=2, step=bad)


def test_2d_files_pass_validation_only_where_the_network_is_2d():
    image = volume((16, 12), (0.8, 0.8))
    label = MetaTensor(torch.zeros(1, 16, 12), affine=image.affine)
    label[0, 3:6, 3:6] = 1
    data = {"image": image, "label": label}
    with pytest.raises(ValueError, match="this bundle's network is 3D: segment 2D files with a 2D-network bundle"):
        ValidateSegmentationd(["image", "label"], num_classes=2)(data)
    checked = ValidateSegmentationd(["image", "label"], num_classes=2, allow_2d=True)(data)
    lifted = AddSliceAxisd(["image", "label"])(checked)
    assert tuple(lifted["image"].shape) == (1, 16, 12, 1) and tuple(lifted["label"].shape) == (1, 16, 12, 1)
    assert torch.equal(lifted["image"].affine, image.affine)
    unchanged = AddSliceAxisd(["image"])({"image": volume((4, 4, 4), (1.0, 1.0, 1.0))})
    assert tuple(unchanged["image"].shape) == (1, 4, 4, 4)


def test_msd_rrw_pipeline_trains_on_selected_labels_of_reoriented_volumes_and_2d_files(tmp_path):
    from monai.bundle import ConfigParser

    task = write_fake_msd(tmp_path / "Task", n_cases=2, shape=(16, 12, 8), label_names=LABELS)
    for folder in ("imagesTr", "labelsTr"):  # one case stored LPS, the other RAS: both must reach training as RAS
        path = task / folder / "faketask_002.nii.gz"
        image = nib.load(path)
        flipped = np.asanyarray(image.dataobj)[::-1, ::-1].copy()
        save_nifti(flipped, image.affine @ np.diag([-1.0, -1.0, 1.0, 1.0]), path)
    slice_label = np.zeros((20, 14), np.uint8)
    slice_label[5:12, 4:9] = 2
    slice_affine = np.diag([3.0, 3.0, 1.0, 1.0])  # a 2D file whose header gives the slice 1 mm, finer than in-plane
    save_nifti(slice_label.astype(np.float32), slice_affine, task / "imagesTr/slice.nii.gz")
    save_nifti(slice_label, slice_affine, task / "labelsTr/slice.nii.gz")
    description = json.loads((task / "dataset.json").read_text())
    description["training"].append({"image": "imagesTr/slice.nii.gz", "label": "labelsTr/slice.nii.gz"})
    (task / "dataset.json").write_text(json.dumps(description))
    assert prepare_msd(task, "--labels", "aorta", "--validation-fraction", 0) == 0
    parser = ConfigParser()
    parser.read_config(REPO / "bundles" / "msd_rrw" / "configs" / "train.yaml")
    parser.update({"dataset_dir": str(task), "patch_size": [16, 16], "samples_per_volume": 1, "cache_rate": 0.0})
    dataset = parser.get_parsed_content("train#dataset")
    assert parser.get_parsed_content("num_classes") == 2 and parser.get_parsed_content("class_names") == ["aorta"]
    assert parser.get_parsed_content("slice_axis") == 2
    volumes = parser.get_parsed_content("validate#preprocessing")  # the deterministic part, before augmentation
    for index in range(3):  # two volumes and the 2D file as a one-slice volume
        [sample] = dataset[index]
        label = sample["target"][0]  # the training target is [label, compact RRW map]
        assert tuple(sample["image"].shape) == (1, 16, 16) and set(torch.unique(label).tolist()) <= {0, 1}
        volume = volumes(dict(dataset.data[index]))
        assert nib.aff2axcodes(np.asarray(volume["image"].affine)) == ("R", "A", "S")


def test_rw_validation_grid_is_settable_and_evaluation_scores_every_slice(tmp_path):
    from monai.bundle import ConfigParser

    task = write_fake_msd(tmp_path / "Task", n_cases=2, shape=(16, 12, 8), label_names=LABELS)
    assert prepare_msd(task, "--validation-fraction", 0.5) == 0
    configs = REPO / "bundles" / "msd_rrw" / "configs"
    train_config = tmp_path / "train.yaml"  # a user's train.yaml validating on every third slice
    train_config.write_text((configs / "train.yaml").read_text().replace("val_slice_step: 1", "val_slice_step: 3"))
    slices = {}
    for name, files in {"train": [train_config], "evaluate": [train_config, configs / "evaluate.yaml"]}.items():
        parser = ConfigParser()
        parser.read_config([str(file) for file in files])
        parser.update({"dataset_dir": str(task), "cache_rate": 0.0})
        [case] = parser.get_parsed_content("validate#dataset")
        slices[name] = (case["image"].shape[-1], case["label"].shape[-1], float(case["label"].pixdim[2]))
    spacing = slices["evaluate"][2]
    assert slices["train"] == (3, 3, pytest.approx(3 * spacing))  # slices 0, 3, 6 of 8
    assert slices["evaluate"][:2] == (8, 8)


@pytest.mark.parametrize("bundle", ["acdc17_rrw", "msd_rrw"])
def test_bundles_train_from_a_plain_decathlon_dataset_json(acdc_release, bundle):
    from monai.bundle import ConfigParser

    labels = sorted(acdc_release.rglob("*_gt.nii.gz"))[:2]
    entries = [{"image": str(p).replace("_gt", ""), "label": str(p)} for p in labels]  # absolute paths, no extras
    plain = {"labels": {"0": "background", "1": "RV", "2": "myocardium", "3": "LV"}, "training": entries}
    plain["test"] = ["imagesTs/unlabelled.nii.gz"]  # the MSD test list holds bare paths
    parser = ConfigParser()
    parser.read_config(REPO / "bundles" / bundle / "configs" / "train.yaml")
    with tempfile.TemporaryDirectory() as folder:
        datalist = Path(folder) / "dataset.json"
        datalist.write_text(json.dumps(plain))
        parser.update({"dataset_dir": folder, "datalist": str(datalist), "cache_rate": 0.0, "patch_size": [32, 32]})
        with pytest.warns(UserWarning, match="no validation cases"):
            assert len(parser.get_parsed_content("validate#dataset")) == 2
        [sample] = parser.get_parsed_content("train#dataset")[0][:1]
    assert tuple(sample["image"].shape) == (1, 32, 32) and parser.get_parsed_content("num_classes") == 4

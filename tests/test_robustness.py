"""Faulty inputs: each gets a clear error naming its file (folder inference: tests/test_inference.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from common.data.nifti import save_nifti
from common.data.validation import ValidateSegmentationd, validate_datalist

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN = REPO_ROOT / "bundles" / "acdc17_rrw" / "configs" / "train.yaml"
AFFINE = np.diag([1.5, 1.5, 8.0, 1.0])
SHAPE = (12, 10, 3)


def good_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    label = np.zeros(SHAPE, np.uint8)
    label[3:8, 3:7] = 1
    label[5:7, 4:6] = 3
    return rng.normal(size=SHAPE).astype(np.float32), label


def faulty_cases() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, str]]:
    """name -> (image, label, label affine, expected message); the good case expects no message."""
    image, label = good_pair()
    nan_image, inf_image = image.copy(), image.copy()
    nan_image[0, 0, 0] = np.nan
    inf_image[1, 1, 1] = -np.inf
    shifted = AFFINE.copy()
    shifted[0, 3] = 5.0
    outside = label.copy()
    outside[0, 0, 0] = 7
    return {
        "good": (image, label, AFFINE, ""),
        "shape": (image, label[:, :, :2], AFFINE, "does not match the image's"),
        "affine": (image, label, shifted, "affine differs from the image's"),
        "nan": (nan_image, label, AFFINE, "1 NaN and 0 infinite intensities"),
        "inf": (inf_image, label, AFFINE, "0 NaN and 1 infinite intensities"),
        "channels": (np.stack([image, image], axis=-1), label, AFFINE, "has 2 channel(s), the bundle expects 1"),
        "classes": (image, outside, AFFINE, "label values must lie in [0, 3]"),
        "empty": (image, np.zeros_like(label), AFFINE, "no foreground voxel"),
        "flat2d": (image[:, :, 0], label[:, :, 0], AFFINE, "expected a 3D image, got 2 spatial dimension(s)"),
    }


@pytest.fixture
def datalist(tmp_path) -> list[dict]:
    cases = []
    for name, (image, label, label_affine, message) in faulty_cases().items():
        image_path, label_path = tmp_path / f"{name}.nii.gz", tmp_path / f"{name}_gt.nii.gz"
        save_nifti(image, AFFINE, image_path)
        save_nifti(label, label_affine, label_path)
        cases.append({"image": str(image_path), "label": str(label_path), "name": name, "message": message})
    return cases


def load_and_check(case: dict) -> None:
    checks = Compose(
        [
            LoadImaged(["image", "label"], image_only=True),
            EnsureChannelFirstd(["image", "label"]),
            ValidateSegmentationd(["image", "label"], num_classes=4, in_channels=1, spatial_dims=3),
        ],
        map_items=False,
    )
    checks({"image": case["image"], "label": case["label"]})


def innermost(error: BaseException) -> BaseException:
    """The error that MONAI's transform wrappers (RuntimeError ... from error) wrap."""
    while isinstance(error, RuntimeError) and error.__cause__ is not None:
        error = error.__cause__
    return error


def test_each_faulty_case_is_rejected_naming_its_file(datalist):
    for case in datalist:
        if not case["message"]:
            load_and_check(case)
            continue
        with pytest.raises(Exception) as error_info:  # noqa: B017 (MONAI wraps the ValueError in a RuntimeError)
            load_and_check(case)
        error = innermost(error_info.value)
        assert isinstance(error, ValueError), case["name"]
        assert case["message"] in str(error), (case["name"], str(error))
        assert Path(str(error).split(": ")[0]).name.startswith(case["name"]), (case["name"], str(error))


def test_a_datalist_check_reports_every_bad_case_at_once(datalist):
    with pytest.raises(ValueError) as error_info:
        validate_datalist(datalist, num_classes=4)
    lines = str(error_info.value).splitlines()
    assert lines[0] == "8 of 9 case(s) failed the checks:"
    for case, line in zip(datalist[1:], lines[1:], strict=True):
        assert case["message"] in line and case["name"] in line
    good = [case for case in datalist if case["name"] == "good"]
    assert validate_datalist(good, num_classes=4) == good
    assert validate_datalist([case for case in datalist if case["name"] == "empty"], 4, allow_empty_foreground=True)


def test_the_bundle_pipeline_with_the_checks_stops_at_the_bad_file(datalist):
    parser = ConfigParser()
    parser.read_config(str(TRAIN))
    parser.update({"patch_size": [8, 8], "samples_per_volume": 1})
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    good = next(case for case in datalist if case["name"] == "good")
    assert preprocessing({"image": good["image"], "label": good["label"]})["image"].shape[0] == 1
    training = parser.get_parsed_content("train#preprocessing")
    assert len(training({"image": good["image"], "label": good["label"]})) == 1  # one sampled slice
    bad = next(case for case in datalist if case["name"] == "classes")
    with pytest.raises(RuntimeError) as error_info:
        training({"image": bad["image"], "label": bad["label"]})
    assert str(innermost(error_info.value)).startswith(bad["label"] + ": label values must lie in [0, 3]")


def test_run_outputs_are_ignored_by_git_and_bundle_files_are_not():
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    outputs = [
        "bundles/acdc17_rrw/eval/validation_metrics.csv",
        "bundles/acdc17_rrw/predictions/case.nii.gz",
        "bundles/acdc17_rrw/models/model.pt",
        "bundles/acdc17_rrw/models/checkpoint.pt",
        "bundles/acdc17_rrw/models/settings.json",
        "dist/acdc17_rrw.zip",
        "acdc17_rrw.zip",
        "bundles/acdc17_rrw/models/.model.pt.x1y2.tmp.pt",
    ]
    kept = ["bundles/acdc17_rrw/models/.gitkeep", "bundles/acdc17_rrw/configs/train.yaml", "common/errors.py"]

    def ignored(path: str) -> bool:
        result = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO_ROOT, check=False)
        return result.returncode == 0

    assert [path for path in outputs if not ignored(path)] == []
    assert [path for path in kept if ignored(path)] == []

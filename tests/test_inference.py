"""Folder inference: the MONAI workflow of inference.yaml, its file rules and the bounded-memory inversion."""

from __future__ import annotations

import errno
import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImaged,
    Orientationd,
    Resized,
    Spacingd,
)

from common.data.nifti import load_nifti, save_nifti
from common.errors import OptionError, OptionValueError, error_line, exit_status
from common.inference import segmentations
from common.inference.folders import LISTED_PER_KIND, FolderPlan, check_output_postfix, mirrored_output_path
from common.inference.inputs import AsVolumed, CheckFiniteIntensityd, CheckInputFiled
from common.inference.inversion import InvertedArgmaxd, SlabLabelInferer
from common.inference.segmentations import is_own_segmentation, write_segmentation
from common.inference.workflow import FolderEvaluator
from common.networks.weights import save_network_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = REPO_ROOT / "bundles"
INFERENCE = BUNDLES / "acdc17_rrw" / "configs" / "inference.yaml"
MSD_INFERENCE = BUNDLES / "msd_rrw" / "configs" / "inference.yaml"
TINY_NETWORK = {"patch_size": [64, 64], "filters": [4, 4, 8, 8, 8, 8], "sw_batch_size": 8}


def oblique_affine() -> np.ndarray:
    rotation = np.array([[0.0, -1.0, 0.0], [0.8, 0.0, 0.6], [-0.6, 0.0, 0.8]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array([1.4, 1.4, 8.0])
    affine[:3, 3] = [12.0, -40.0, 7.5]
    return affine


LPS_AFFINE = np.diag([-1.5, -1.5, 8.0, 1.0])


def image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle root with initialised weights of acdc17_rrw's network at tiny size."""
    root = tmp_path_factory.mktemp("bundle")
    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    parser.update(TINY_NETWORK)
    torch.manual_seed(0)
    (root / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")
    return root


def segment(
    bundle_root: Path, inputs: Path | str, outputs: Path | str | int, config_file: Path = INFERENCE, **settings
) -> int:
    """Run inference.yaml as the model zoo does (initialize, check_properties, run); returns the exit status."""
    workflow = ConfigWorkflow(
        config_file=str(config_file),
        workflow_type="infer",
        dataset_dir=inputs if isinstance(inputs, int) else str(inputs),
        output_dir=outputs if isinstance(outputs, int) else str(outputs),
        bundle_root=str(bundle_root),
        progress=False,
        **TINY_NETWORK,
        **settings,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    try:
        workflow.run()
    except SystemExit as exit_info:
        return int(exit_info.code)
    return 0


def read(path: Path) -> np.ndarray:
    return np.asanyarray(load_nifti(path).dataobj)


def test_workflow_segments_a_folder_on_each_inputs_own_geometry(bundle_root, tmp_path, capsys):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    save_nifti(image((20, 18, 4)), LPS_AFFINE, inputs / "lps.nii.gz")
    save_nifti(image((20, 18, 3), 1), oblique_affine(), inputs / "site/a/oblique.NII.GZ")
    save_nifti(image((20, 18), 2), np.diag([1.5, 1.5, 8.0, 1.0]), inputs / "site/b/flat2d.nii")
    (inputs / "site/b/flat2d.nii").rename(inputs / "site/b/flat2d.Nii")
    nib.save(nib.as_closest_canonical(nib.load(inputs / "lps.nii.gz")), inputs / "ras.nii.gz")  # same image, RAS
    (inputs / "notes.txt").write_text("not an image")
    assert segment(bundle_root, inputs, outputs) == 0
    summary = capsys.readouterr().out
    assert "segmented 4 file(s), kept 0 existing output(s), 0 failure(s)" in summary
    # both storage orders reach the network as the same RAS volume: the same segmentation in world space
    np.testing.assert_array_equal(read(outputs / "lps.nii.gz")[::-1, ::-1], read(outputs / "ras.nii.gz"))
    for relative in ("lps.nii.gz", "ras.nii.gz", "site/a/oblique.NII.GZ", "site/b/flat2d.Nii"):
        source, result = load_nifti(inputs / relative), load_nifti(outputs / relative)
        assert result.shape == source.shape, relative
        np.testing.assert_allclose(result.affine, source.affine, atol=1e-6)
        assert nib.aff2axcodes(result.affine) == nib.aff2axcodes(source.affine)
        assert result.header.get_data_dtype() == np.uint8 and set(np.unique(read(outputs / relative))) <= {0, 1, 2, 3}
        assert is_own_segmentation(outputs / relative)
    assert sorted(path.name for path in outputs.rglob("*") if path.is_file()) == [
        "flat2d.Nii", "lps.nii.gz", "oblique.NII.GZ", "ras.nii.gz"
    ]  # fmt: skip
    mode = stat.S_IMODE((outputs / "lps.nii.gz").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask

    first = (outputs / "lps.nii.gz").read_bytes()
    (outputs / "lps.nii.gz").write_bytes(b"an earlier result")
    assert segment(bundle_root, inputs, outputs) == 0
    summary = capsys.readouterr().out
    assert "segmented 0 file(s), kept 4 existing output(s), 0 failure(s)" in summary and "--overwrite True" in summary
    assert (outputs / "lps.nii.gz").read_bytes() == b"an earlier result"
    assert segment(bundle_root, inputs, outputs, overwrite=True) == 0
    assert (outputs / "lps.nii.gz").read_bytes() == first  # deterministic
    assert "segmented 4 file(s)" in capsys.readouterr().out


def test_bad_files_are_listed_with_their_reason_and_the_run_exits_1(bundle_root, tmp_path, capsys, monkeypatch):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    good = image((16, 16, 3))
    save_nifti(good, LPS_AFFINE, inputs / "good.nii.gz")
    save_nifti(good, LPS_AFFINE, inputs / "full_disk.nii.gz")
    (inputs / "corrupt.nii.gz").write_bytes(b"\x1f\x8b broken")
    (inputs / "truncated.nii.gz").write_bytes((inputs / "good.nii.gz").read_bytes()[:300])
    save_nifti(np.zeros((8, 8, 3, 2), np.float32), LPS_AFFINE, inputs / "cine_4d.nii.gz")
    nan = good.copy()
    nan[1, 2, 1] = np.nan
    save_nifti(nan, LPS_AFFINE, inputs / "nan.nii.gz")
    huge = np.full((16, 16, 3), 1e39)  # float64 values beyond float32: infinite once cast
    nib.save(nib.Nifti1Image(huge, LPS_AFFINE), inputs / "overflow.nii.gz")
    scaled = nib.Nifti1Image(np.arange(16 * 16 * 3, dtype=np.int16).reshape(16, 16, 3), LPS_AFFINE)
    scaled.header.set_slope_inter(1e37, 0.0)  # a scale factor that overflows float32
    nib.save(scaled, inputs / "scale_factor.nii.gz")
    (inputs / "dangling.nii.gz").symlink_to(inputs / "missing.nii.gz")
    (inputs / "loop.nii.gz").symlink_to(inputs / "loop.nii.gz")
    (inputs / ".hidden.nii.gz").write_bytes((inputs / "good.nii.gz").read_bytes())
    (inputs / "empty.nii").touch()
    os.mkfifo(inputs / "pipe.nii")
    (inputs / "linked_folder").symlink_to(tmp_path, target_is_directory=True)

    original_fsync = segmentations.os.fsync

    def fsync_on_a_full_disk(descriptor: int) -> None:  # the temporary file of full_disk's output cannot be stored
        if Path(os.readlink(f"/proc/self/fd/{descriptor}")).name.startswith(".full_disk"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original_fsync(descriptor)

    monkeypatch.setattr(segmentations.os, "fsync", fsync_on_a_full_disk)
    assert segment(bundle_root, inputs, outputs) == 1
    summary = capsys.readouterr().out
    assert "segmented 1 file(s), kept 0 existing output(s), 11 failure(s)" in summary
    expected = {
        "FAILED": {
            "corrupt.nii.gz": "cannot read as NIfTI",
            "truncated.nii.gz": "",
            "cine_4d.nii.gz": "expected a 3D volume or a 2D image, got shape (8, 8, 3, 2)",
            "nan.nii.gz": "1 NaN and 0 infinite intensities in the file",
            "overflow.nii.gz": "intensities become non-finite after scaling, casting to float32 or normalising",
            "scale_factor.nii.gz": "intensities become non-finite after scaling",
            "full_disk.nii.gz": f"{outputs / 'full_disk.nii.gz'}: cannot write the segmentation (No space left",
            "dangling.nii.gz": "dangling symbolic link",
            "loop.nii.gz": "cannot be opened",
            "empty.nii": "empty file",
            "pipe.nii": "not a regular file",
        },
        "SKIPPED": {
            ".hidden.nii.gz": "hidden file",
            "linked_folder": "symbolic link to a folder, not followed",
        },
    }
    for kind, reasons in expected.items():
        for name, reason in reasons.items():
            line = next((line for line in summary.splitlines() if line.startswith(f"{kind} {inputs / name}:")), None)
            assert line is not None and reason in line, (name, summary)
    assert [path.name for path in outputs.rglob("*")] == ["good.nii.gz"]  # no partial or temporary files


def test_an_input_file_is_never_written(bundle_root, tmp_path, capsys):
    inputs = tmp_path / "in"
    original = image((16, 16, 3))
    for relative in ("a.nii.gz", "seg/a.nii.gz", "seg/b.nii.gz"):  # seg/ holds inputs and becomes the output folder
        save_nifti(original, LPS_AFFINE, inputs / relative)
    (inputs / "link.nii.gz").symlink_to(inputs / "a.nii.gz")
    before = {path: path.read_bytes() for path in inputs.rglob("*.nii.gz")}

    assert segment(bundle_root, inputs, inputs / "seg", overwrite=True) == 1
    summary = capsys.readouterr().out
    assert all(path.read_bytes() == content for path, content in before.items())
    assert f"FAILED {inputs / 'a.nii.gz'}: its output {inputs / 'seg/a.nii.gz'} would replace an input file" in summary
    assert is_own_segmentation(inputs / "seg/seg/a.nii.gz") and is_own_segmentation(inputs / "seg/link.nii.gz")

    assert segment(bundle_root, inputs, inputs / "seg") == 1  # the earlier outputs are recognised, not inputs
    summary = capsys.readouterr().out
    assert f"SKIPPED {inputs / 'seg/link.nii.gz'}: a segmentation written by folder inference" in summary
    assert f"KEPT {inputs / 'seg/seg/a.nii.gz'}" in summary and f"KEPT {inputs / 'seg/link.nii.gz'}" in summary
    assert segment(bundle_root, inputs, inputs / "seg", overwrite=True) == 1  # its own outputs may be replaced
    assert "segmented 3 file(s), kept 0 existing output(s), 1 failure(s)" in capsys.readouterr().out
    assert all(path.read_bytes() == content for path, content in before.items())

    with pytest.raises(RuntimeError) as error_info:
        segment(bundle_root, inputs, inputs, overwrite=True)
    assert "is the input folder" in str(error_info.value.__cause__)


def test_command_line_run_exits_1_on_a_failed_case_and_takes_a_numeric_output_dir(bundle_root, tmp_path):
    save_nifti(image((16, 16, 3)), LPS_AFFINE, tmp_path / "in" / "good.nii.gz")
    (tmp_path / "in" / "bad.nii").write_bytes(b"not a NIfTI file")
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", str(INFERENCE), "--dataset_dir", "in",
        "--output_dir", "2024", "--bundle_root", str(bundle_root), "--progress", "False",
        *[item for key, value in TINY_NETWORK.items() for item in (f"--{key}", json.dumps(value))],
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"FAILED {Path('in') / 'bad.nii'}: cannot read as NIfTI" in result.stdout
    assert load_nifti(tmp_path / "2024" / "good.nii.gz").shape == (16, 16, 3)


def test_outputs_never_leave_the_output_folder(tmp_path, monkeypatch):
    inputs, outputs, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    save_nifti(image((4, 4, 2)), LPS_AFFINE, inputs / "sub/a.nii.gz")
    save_nifti(image((4, 4, 2)), LPS_AFFINE, inputs / "b.nii.gz")
    elsewhere.mkdir()
    outputs.mkdir()
    (outputs / "sub").symlink_to(elsewhere, target_is_directory=True)
    (outputs / "b.nii.gz").symlink_to(inputs / "b.nii.gz")
    plan = FolderPlan(inputs, outputs, overwrite=True).make()
    assert plan.cases == []
    assert "leads outside the output folder" in plan.report.failures[inputs / "sub/a.nii.gz"]
    assert "would replace an input file" in plan.report.failures[inputs / "b.nii.gz"]
    for postfix in ("/../../escaped", "..", "_a/b", "a\\b", "x\0"):
        with pytest.raises(OptionValueError, match="--output_postfix"):
            FolderPlan(inputs, outputs, postfix=postfix)
    assert check_output_postfix("_seg.v2") == "_seg.v2"

    monkeypatch.chdir(tmp_path)
    plan = FolderPlan("in", 2024).make()  # --output_dir 2024 reaches the config as an int
    assert sorted(case["output"] for case in plan.cases) == ["2024/b.nii.gz", "2024/sub/a.nii.gz"]
    with pytest.raises(OptionError, match="--overwrite"):
        FolderPlan(inputs, outputs, overwrite="false")
    with pytest.raises(OptionError, match="--output_dir"):
        FolderPlan(inputs, None)


def test_setup_errors_name_the_option(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="--dataset_dir .*no .nii or .nii.gz files found"):
        FolderPlan(tmp_path / "empty", tmp_path / "out").make()
    plan = FolderPlan(tmp_path / "missing", tmp_path / "out")  # options only: the folders are read by make()
    with pytest.raises(NotADirectoryError, match="--dataset_dir .*does not exist"):
        plan.make()
    assert not (tmp_path / "out").exists()
    save_nifti(image((4, 4, 2)), LPS_AFFINE, tmp_path / "in" / "a.nii.gz")
    (tmp_path / "a_file").touch()
    with pytest.raises(NotADirectoryError, match="--output_dir .*exists and is not a folder"):
        FolderPlan(tmp_path / "in", tmp_path / "a_file").make()
    with pytest.raises(OptionValueError, match="--output_dir .*is the input folder"):
        FolderPlan(tmp_path / "in", tmp_path / "in" / "." / "").make()


def test_files_that_are_not_nifti_are_listed_at_the_end_with_how_to_convert_them(tmp_path):
    inputs = tmp_path / "in"
    save_nifti(image((4, 4, 2)), LPS_AFFINE, inputs / "a.nii.gz")
    (inputs / "sub").mkdir()
    nib.save(nib.AnalyzeImage(image((4, 4, 2)), LPS_AFFINE), inputs / "sub" / "b.hdr")  # b.hdr + b.img
    (inputs / "scan.mha").write_bytes(b"MetaImage")
    (inputs / "notes.txt").write_text("not an image")
    (inputs / ".DS_Store").write_bytes(b"")  # hidden: not the user's image, not listed
    (inputs / "dicom").mkdir()
    for index in range(LISTED_PER_KIND + 2):
        (inputs / "dicom" / f"{index:03}.dcm").write_bytes(b"DICM")
    plan = FolderPlan(inputs, tmp_path / "out").make()
    assert plan.cases == [{"image": str(inputs / "a.nii.gz"), "source": str(inputs / "a.nii.gz"),
                           "output": str(tmp_path / "out" / "a.nii.gz")}]  # fmt: skip
    lines = plan.report.summary().splitlines()
    listed = [line for line in lines if line.startswith("not processed: ")]
    assert lines[-len(listed) :] == listed and len(listed) == 3 + LISTED_PER_KIND + 1  # at the end
    analyze = next(line for line in listed if "b.hdr" in line)
    assert analyze.startswith(f"not processed: {inputs / 'sub' / 'b.hdr'} (not NIfTI: Analyze/NIfTI .hdr/.img pair")
    assert not [line for line in listed if "b.img" in line.split(" (")[0] or ".DS_Store" in line]
    assert "SimpleITK" in next(line for line in listed if "scan.mha" in line)
    assert "(not NIfTI; convert it to .nii.gz" in next(line for line in listed if "notes.txt" in line)
    dicom = [line for line in listed if ".dcm" in line]
    assert len(dicom) == LISTED_PER_KIND + 1 and all("dcm2niix" in line for line in dicom[:-1])
    assert dicom[-1] == "not processed: 2 more .dcm file(s) like these"

    command = analyze.split("convert with ", 1)[1].removesuffix(")")  # the command given converts the pair
    subprocess.run([sys.executable, *shlex.split(command)[1:]], check=True, timeout=120)
    np.testing.assert_allclose(load_nifti(inputs / "sub" / "b.nii.gz").get_fdata(), image((4, 4, 2)))

    only_analyze = tmp_path / "analyze"
    only_analyze.mkdir()
    nib.save(nib.AnalyzeImage(image((4, 4, 2)), LPS_AFFINE), only_analyze / "c.img")
    with pytest.raises(
        FileNotFoundError, match=r"no .nii or .nii.gz files found .*; 1 other file\(s\), e\.g\. .*c\.hdr"
    ):
        FolderPlan(only_analyze, tmp_path / "out").make()


def test_the_shipped_inference_config_initialises_and_a_missing_input_folder_ends_with_one_line(tmp_path):
    """The default --dataset_dir need not exist to initialise; running with it is a user error (exit 2)."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(INFERENCE), "--progress", "False"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: --dataset_dir /workspace/data/ACDC/testing: input folder does not exist")
    )
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())  # nothing written
    with pytest.raises(RuntimeError) as error_info:
        segment(tmp_path, tmp_path, tmp_path / "out", output_postfix="/../x")
    assert exit_status(error_info.value) == 2
    assert error_line(error_info.value).startswith("error: --output_postfix '/../x': must not contain path")


def distinct_inference_configs() -> list[str]:
    """One bundle per distinct inference.yaml (pairing bundles share their parent's, apart from the header)."""
    first: dict[str, str] = {}
    for path in sorted(BUNDLES.glob("*/configs/inference.yaml")):
        first.setdefault(path.read_text().split("\n", 1)[1], path.parent.parent.name)
    return sorted(first.values())


@pytest.mark.parametrize("name", distinct_inference_configs())
def test_every_inference_config_is_a_complete_monai_inference_workflow(name, tmp_path):
    save_nifti(image((4, 4, 2)), LPS_AFFINE, tmp_path / "in" / "a.nii.gz")
    workflow = ConfigWorkflow(
        config_file=str(BUNDLES / name / "configs" / "inference.yaml"),
        workflow_type="infer",
        dataset_dir=str(tmp_path / "in"),
        output_dir=str(tmp_path / "out"),
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert isinstance(workflow.evaluator, FolderEvaluator) and len(workflow.dataset) == 0  # planned by run()
    workflow.evaluator.folder.make()
    assert len(workflow.dataset) == 1
    network_dims = workflow.parser.get_parsed_content("network_def#spatial_dims", default=3)
    assert workflow.parser.get_parsed_content("network_spatial_dims") == network_dims  # 2D inputs only for 2D nets


def test_missing_or_mismatched_weights_stop_the_run(tmp_path):
    save_nifti(image((16, 16, 3)), LPS_AFFINE, tmp_path / "in" / "a.nii.gz")
    with pytest.raises(RuntimeError) as error_info:
        segment(tmp_path, tmp_path / "in", tmp_path / "out")
    assert "checkpoint not found" in str(error_info.value.__cause__)
    (tmp_path / "models").mkdir()
    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    parser.update({**TINY_NETWORK, "num_classes": 3})
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "models" / "model.pt")
    with pytest.raises(RuntimeError) as error_info:
        segment(tmp_path, tmp_path / "in", tmp_path / "out")
    assert "does not fit the network" in str(error_info.value.__cause__)
    assert not (tmp_path / "out").exists()


MSD_TRAINED = {  # what training on a datalist with the aorta (27) and a kidney (40) of a release stores
    "num_classes": 3,
    "in_channels": 1,
    "patch_size": TINY_NETWORK["patch_size"],
    "label_values": [0, 27, 40],
    "class_names": ["aorta", "kidney"],
    "slice_axis": 2,
    "in_plane_spacing": 1.0,
    "filters": TINY_NETWORK["filters"],
}


@pytest.fixture(scope="module")
def msd_bundle_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """msd_rrw trained (tiny) on 3 classes: weights that predict training index 2 everywhere, with their settings."""
    root = tmp_path_factory.mktemp("msd_bundle")
    parser = ConfigParser()
    parser.read_config(str(MSD_INFERENCE))
    parser.update({**TINY_NETWORK, "num_classes": 3})
    network = parser.get_parsed_content("network_def")
    with torch.no_grad():
        network.output_block.conv.conv.weight.zero_()
        network.output_block.conv.conv.bias.copy_(torch.tensor([0.0, 0.0, 10.0]))
    save_network_weights(network, root / "models" / "model.pt", MSD_TRAINED)
    return root


def test_msd_inference_takes_classes_and_label_values_from_the_weights(msd_bundle_root, tmp_path):
    save_nifti(image((20, 16, 3)), LPS_AFFINE, tmp_path / "in" / "a.nii.gz")
    parser = ConfigParser()
    parser.read_config(str(MSD_INFERENCE))
    parser.update({"bundle_root": str(msd_bundle_root)})
    for key in (
        "num_classes",
        "label_values",
        "class_names",
        "slice_axis",
        "in_plane_spacing",
        "patch_size",
        "filters",
    ):
        assert parser.get_parsed_content(key) == MSD_TRAINED[key]  # nothing retyped, the network's geometry included
    workflow = ConfigWorkflow(  # no --patch_size / --filters: a CPU-sized model runs as trained
        config_file=str(MSD_INFERENCE),
        workflow_type="infer",
        dataset_dir=str(tmp_path / "in"),
        output_dir=str(tmp_path / "out"),
        bundle_root=str(msd_bundle_root),
        progress=False,
    )
    workflow.initialize()
    workflow.run()
    prediction = read(tmp_path / "out" / "a.nii.gz")
    assert prediction.shape == (20, 16, 3)
    assert np.unique(prediction).tolist() == [40]  # training index 2 written as the data set's value


def test_msd_inference_without_weights_uses_the_bundle_defaults(tmp_path):
    parser = ConfigParser()
    parser.read_config(str(MSD_INFERENCE))
    parser.update({"bundle_root": str(tmp_path)})
    assert parser.get_parsed_content("num_classes") == parser.get_parsed_content("default_num_classes") == 2
    assert parser.get_parsed_content("label_values") is None
    assert parser.get_parsed_content("postprocessing").transforms[1:] == ()  # training indices are written


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"num_classes": 2}, "num_classes: 3 in the checkpoint, 2 in the config"),
        ({"label_values": [0, 1, 2]}, "label_values: [0, 27, 40] in the checkpoint, [0, 1, 2] in the config"),
        ({"slice_axis": 0}, "slice_axis: 2 in the checkpoint, 0 in the config"),
        ({"in_plane_spacing": 1.5}, "in_plane_spacing: 1.0 in the checkpoint, 1.5 in the config"),
    ],
)
def test_msd_inference_settings_contradicting_the_weights_name_both_values(msd_bundle_root, tmp_path, setting, message):
    save_nifti(image((20, 16, 3)), LPS_AFFINE, tmp_path / "in" / "a.nii.gz")
    with pytest.raises(RuntimeError) as error_info:
        segment(msd_bundle_root, tmp_path / "in", tmp_path / "out", config_file=MSD_INFERENCE, **setting)
    assert message in str(error_info.value.__cause__)
    assert not (tmp_path / "out").exists()


def test_mirrored_paths_keep_the_extension_as_written(tmp_path):
    source = tmp_path / "in" / "p1" / "scan.NII.GZ"
    assert (
        mirrored_output_path(source, tmp_path / "in", tmp_path / "out", "_seg") == tmp_path / "out/p1/scan_seg.NII.GZ"
    )
    assert mirrored_output_path(tmp_path / "in/x.Nii", tmp_path / "in", tmp_path / "o") == tmp_path / "o/x.Nii"


def test_segmentations_are_written_atomically_without_replacing(tmp_path):
    reference = tmp_path / "image.nii.gz"
    save_nifti(image((5, 4, 3)), oblique_affine(), reference)
    labels = np.arange(60).reshape(5, 4, 3) % 4
    written = write_segmentation(labels, reference, tmp_path / "seg.NII.GZ")
    assert np.array_equal(read(written), labels) and np.allclose(nib.load(written).affine, oblique_affine())
    with pytest.raises(FileExistsError, match="not replaced"):
        write_segmentation(labels, reference, written)
    write_segmentation(labels[::-1], reference, written, replace=True)
    assert np.array_equal(read(written), labels[::-1])
    with pytest.raises(ValueError, match="differs from the input's"):
        write_segmentation(labels[:, :, :2], reference, tmp_path / "bad.nii.gz")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["image.nii.gz", "seg.NII.GZ"]


def test_input_checks_follow_the_network(tmp_path):
    flat, volume, four_d = tmp_path / "flat.nii", tmp_path / "volume.nii", tmp_path / "modalities.nii"
    save_nifti(image((6, 5)), np.eye(4), flat)
    save_nifti(image((6, 5, 4)), np.eye(4), volume)
    save_nifti(image((6, 5, 4, 2)), np.eye(4), four_d)
    CheckInputFiled("image", network_spatial_dims=2)({"image": str(flat)})
    with pytest.raises(ValueError, match="2D image of shape \\(6, 5\\), but this bundle's network is 3D"):
        CheckInputFiled("image", network_spatial_dims=3)({"image": str(flat)})
    CheckInputFiled("image", in_channels=2)({"image": str(four_d)})
    with pytest.raises(ValueError, match="expected a 4D volume with 4 channels along the last axis"):
        CheckInputFiled("image", in_channels=4)({"image": str(four_d)})
    with pytest.raises(ValueError, match="expected a 3D volume, got shape \\(6, 5, 4, 2\\)"):
        CheckInputFiled("image")({"image": str(four_d)})

    loaded = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])({"image": str(flat)})
    for slice_axis, shape in ((2, (1, 6, 5, 1)), (0, (1, 1, 6, 5))):
        one_slice = AsVolumed("image", slice_axis=slice_axis)(loaded)["image"]
        assert tuple(one_slice.shape) == shape
        voxel = np.array([2, 3, 0, 1.0]) if slice_axis == 2 else np.array([0, 2, 3, 1.0])
        np.testing.assert_allclose(one_slice.affine.numpy() @ voxel, loaded["image"].affine.numpy() @ [2, 3, 0, 1.0])
    volume_item = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")])({"image": str(volume)})
    assert AsVolumed("image")(volume_item)["image"].shape == volume_item["image"].shape


def test_finite_check_names_the_file():
    data = MetaTensor(torch.tensor([[1.0, float("inf"), float("nan")]]), meta={"filename_or_obj": "in-memory"})
    with pytest.raises(ValueError, match="in-memory: 1 NaN and 1 infinite intensities"):
        CheckFiniteIntensityd("image")({"image": data})


@pytest.fixture
def resampled_case(tmp_path: Path) -> tuple[dict, Compose, torch.Tensor]:
    """An LPS volume brought to RAS, 1 mm and a 12^3 cube, and class scores on that cube."""
    path = tmp_path / "case.nii.gz"
    save_nifti(image((15, 11, 5)), np.diag([-0.7, -0.9, 2.5, 1.0]), path)
    preprocessing = Compose(
        [
            LoadImaged("image", image_only=True),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(1.0, 1.0, 1.0), mode="bilinear"),
            Resized("image", spatial_size=(12, 12, 12), mode="area"),
        ]
    )
    data = preprocessing({"image": str(path)})
    torch.manual_seed(0)
    coarse = torch.randn(1, 5, 3, 3, 3) * 3  # smooth scores, as a network's: regions with borders between them
    scores = torch.nn.functional.interpolate(coarse, size=(12, 12, 12), mode="trilinear")[0]
    return data, preprocessing, scores


def test_streamed_inversion_gives_the_labels_of_the_usual_pipeline(resampled_case):
    data, preprocessing, scores = resampled_case
    usual = Compose(
        [
            Activationsd("pred", softmax=True),
            Invertd("pred", preprocessing, orig_keys="image", nearest_interp=False),
            AsDiscreted("pred", argmax=True),
        ]
    )({**data, "pred": scores.clone()})["pred"]
    assert tuple(usual.shape) == (1, 15, 11, 5)
    for channels_per_step in (1, 2, 5):
        streamed = InvertedArgmaxd("pred", preprocessing, channels_per_step=channels_per_step)({**data, "pred": scores})
        labels = streamed["pred"]
        assert labels.shape == usual.shape
        np.testing.assert_array_equal(labels.numpy(), usual.numpy())
        np.testing.assert_allclose(labels.affine, usual.affine)
    nearest = InvertedArgmaxd("pred", preprocessing, argmax_first=True)({**data, "pred": scores})["pred"]
    assert nearest.shape == usual.shape and set(np.unique(nearest.numpy())) <= set(range(5))
    assert (nearest.numpy() == usual.numpy()).mean() > 0.8  # borders follow the network grid instead


def test_non_finite_network_output_is_an_error(resampled_case):
    data, preprocessing, scores = resampled_case
    scores[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="case.nii.gz: the network output holds 1 NaN and 0 infinite values"):
        InvertedArgmaxd("pred", preprocessing)({**data, "pred": scores})


def test_slab_labels_are_the_argmax_of_the_whole_volume_scores():
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 5, 3, padding=1)
    volume = MetaTensor(torch.randn(1, 1, 40, 36, 23), meta={"filename_or_obj": ["scan.nii.gz"]})
    slice_inferer = SliceInferer(roi_size=(32, 32), sw_batch_size=4, spatial_dim=2)
    with torch.no_grad():
        expected = slice_inferer(volume, network).argmax(1, keepdim=True)
        for slab_slices in (1, 5, 23, 40):  # slabs that do and do not divide the 23 slices
            labels = SlabLabelInferer(slice_inferer, spatial_dim=2, slab_slices=slab_slices)(volume, network)
            assert labels.dtype == torch.float32
            torch.testing.assert_close(torch.as_tensor(labels), expected.as_tensor().float(), rtol=0, atol=0)
        broken = torch.nn.Conv2d(1, 5, 3, padding=1)
        broken.bias.data[2] = float("nan")
        with pytest.raises(ValueError, match="scan.nii.gz: the network output holds"):
            SlabLabelInferer(slice_inferer, spatial_dim=2)(volume, broken)
    with pytest.raises(ValueError, match="slab_slices must be at least 1"):
        SlabLabelInferer(slice_inferer, spatial_dim=2, slab_slices=0)


def test_given_labels_are_inverted_by_nearest_neighbour(resampled_case):
    data, preprocessing, scores = resampled_case
    from_scores = InvertedArgmaxd("pred", preprocessing, argmax_first=True)({**data, "pred": scores})["pred"]
    network_labels = scores.argmax(0, keepdim=True).to(torch.float32)
    from_labels = InvertedArgmaxd("pred", preprocessing, labels_given=True)({**data, "pred": network_labels})["pred"]
    np.testing.assert_array_equal(from_labels.numpy(), from_scores.numpy())
    np.testing.assert_allclose(from_labels.affine, from_scores.affine)


def test_labels_first_folder_inference_keeps_geometry_and_label_values(msd_bundle_root, tmp_path):
    save_nifti(image((20, 16, 37)), LPS_AFFINE, tmp_path / "in" / "a.nii.gz")
    outputs = {}
    for labels_first in (False, True):
        output_dir = tmp_path / f"out_{labels_first}"
        status = segment(
            msd_bundle_root, tmp_path / "in", output_dir, config_file=MSD_INFERENCE, labels_first=labels_first
        )
        assert status == 0
        outputs[labels_first] = load_nifti(output_dir / "a.nii.gz")
    assert outputs[True].shape == outputs[False].shape == (20, 16, 37)
    np.testing.assert_allclose(outputs[True].affine, outputs[False].affine)
    np.testing.assert_array_equal(np.asanyarray(outputs[True].dataobj), np.asanyarray(outputs[False].dataobj))
    assert np.unique(np.asanyarray(outputs[True].dataobj)).tolist() == [40]  # the data set's value of index 2

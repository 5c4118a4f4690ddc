from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.inference import (
    VolumeSegmenter,
    discover_images,
    mirrored_output_path,
    run_folder_segmentation,
    segment_folder,
)
from common.synthetic import save_nifti


def oblique_affine() -> np.ndarray:
    rotation = np.array([[0.0, -1.0, 0.0], [0.8, 0.0, 0.6], [-0.6, 0.0, 0.8]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array([1.4, 1.4, 8.0])
    affine[:3, 3] = [12.0, -40.0, 7.5]
    return affine


class ThresholdSegmenter:
    """Stands in for a network: label 1 where the image is above its mean; records the files it saw."""

    def __init__(self) -> None:
        self.seen: list[Path] = []
        self.checkpoint: Path | None = None

    def load_weights(self, checkpoint: Path) -> None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"{checkpoint}: checkpoint not found")
        self.checkpoint = Path(checkpoint)

    def __call__(self, path: Path) -> np.ndarray:
        self.seen.append(Path(path))
        image = np.asanyarray(nib.load(path).dataobj)
        return (image > image.mean()).astype(np.uint8)


@pytest.fixture
def input_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "in"
    save_nifti(rng.normal(size=(10, 12, 3)).astype(np.float32), oblique_affine(), root / "a.nii.gz")
    save_nifti(
        rng.integers(0, 500, size=(9, 7, 5)).astype(np.int16), np.diag([-2.0, 1.5, 6.0, 1.0]), root / "x/y/b.nii"
    )
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights")
    return path


def test_discovery_is_recursive_and_skips_the_output_folder(input_folder):
    save_nifti(np.zeros((2, 2, 2), np.uint8), np.eye(4), input_folder / "out" / "a.nii.gz")
    found = discover_images(input_folder, exclude=input_folder / "out")
    assert [path.relative_to(input_folder).as_posix() for path in found] == ["a.nii.gz", "x/y/b.nii"]


def test_output_paths_mirror_the_input_tree(tmp_path):
    image = tmp_path / "in" / "p1" / "scan.NII.GZ"
    assert mirrored_output_path(image, tmp_path / "in", tmp_path / "out") == tmp_path / "out/p1/scan.NII.GZ"
    assert mirrored_output_path(image, tmp_path / "in", tmp_path / "out", "_seg") == tmp_path / "out/p1/scan_seg.NII.GZ"


def test_outputs_keep_each_inputs_geometry(input_folder, tmp_path):
    output = tmp_path / "out"
    report = segment_folder(input_folder, output, ThresholdSegmenter(), progress=False)
    assert not report.failures and len(report.written) == 2
    for relative in ("a.nii.gz", "x/y/b.nii"):
        source, result = nib.load(input_folder / relative), nib.load(output / relative)
        assert result.shape == source.shape
        np.testing.assert_allclose(result.affine, source.affine, atol=1e-6)
        assert nib.aff2axcodes(result.affine) == nib.aff2axcodes(source.affine)
        assert result.header.get_data_dtype() == np.uint8
        image = np.asanyarray(source.dataobj)
        np.testing.assert_array_equal(np.asanyarray(result.dataobj), image > image.mean())
    assert not [path for path in output.rglob(".*")], "temporary files left behind"


def test_existing_outputs_are_kept_unless_overwrite(input_folder, tmp_path):
    output = tmp_path / "out"
    save_nifti(np.full((10, 12, 3), 7, np.uint8), np.eye(4), output / "a.nii.gz")
    segmenter = ThresholdSegmenter()
    report = segment_folder(input_folder, output, segmenter, progress=False)
    assert report.kept == [output / "a.nii.gz"] and report.written == [output / "x/y/b.nii"]
    assert segmenter.seen == [input_folder / "x/y/b.nii"]
    assert np.all(np.asanyarray(nib.load(output / "a.nii.gz").dataobj) == 7)
    assert "not replaced" in report.summary()

    report = segment_folder(input_folder, output, segmenter, overwrite=True, progress=False)
    assert len(report.written) == 2
    assert np.asanyarray(nib.load(output / "a.nii.gz").dataobj).max() == 1
    with pytest.raises(TypeError, match="True or False"):
        segment_folder(input_folder, output, segmenter, overwrite="false", progress=False)


def test_bad_files_are_reported_and_the_rest_is_segmented(input_folder, tmp_path, checkpoint, capsys):
    (input_folder / "corrupt.nii.gz").write_bytes(gzip.compress(b"\x00" * 100))
    (input_folder / "truncated.nii.gz").write_bytes((input_folder / "a.nii.gz").read_bytes()[:200])
    save_nifti(np.zeros((4, 4, 3, 2), np.float32), np.eye(4), input_folder / "cine_4d.nii.gz")
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        run_folder_segmentation(input_folder, output, ThresholdSegmenter(), checkpoint, progress=False)
    assert exit_info.value.code == 1
    summary = capsys.readouterr().out
    assert "segmented 2 file(s), kept 0 existing output(s), 3 failure(s)" in summary
    assert f"FAILED {input_folder / 'cine_4d.nii.gz'}: expected a 3D volume, got shape (4, 4, 3, 2)" in summary
    assert f"FAILED {input_folder / 'corrupt.nii.gz'}: cannot read as NIfTI" in summary
    assert f"FAILED {input_folder / 'truncated.nii.gz'}: cannot read as NIfTI" in summary
    assert sorted(path.relative_to(output).as_posix() for path in output.rglob("*.nii*")) == ["a.nii.gz", "x/y/b.nii"]


def test_setup_errors_exit_with_a_clear_message(input_folder, tmp_path, checkpoint, capsys):
    cases = [
        (tmp_path / "empty", checkpoint, "no .nii or .nii.gz files found"),
        (tmp_path / "missing", checkpoint, "input folder does not exist"),
        (input_folder, tmp_path / "nope.pt", "checkpoint not found"),
    ]
    (tmp_path / "empty").mkdir()
    for input_dir, weights, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_folder_segmentation(input_dir, tmp_path / "out", ThresholdSegmenter(), weights, progress=False)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="equals the input folder"):
        segment_folder(input_folder, input_folder, ThresholdSegmenter(), progress=False)


def test_volume_segmenter_loads_weights_and_checks_them(tmp_path):
    from monai.inferers import SliceInferer
    from monai.networks.nets import BasicUNet
    from monai.transforms import AsDiscreted, Compose, EnsureChannelFirstd, LoadImaged

    torch.manual_seed(0)
    network = BasicUNet(2, 1, 3, features=(4, 4, 4, 4, 4, 4))
    weights = tmp_path / "model.pt"
    torch.save({"model": network.state_dict()}, weights)
    segmenter = VolumeSegmenter(
        BasicUNet(2, 1, 3, features=(4, 4, 4, 4, 4, 4)),
        Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image")]),
        SliceInferer(roi_size=(32, 32), spatial_dim=2),
        AsDiscreted("pred", argmax=True),
    )
    segmenter.load_weights(weights)
    save_nifti(np.random.default_rng(0).normal(size=(32, 32, 3)).astype(np.float32), np.eye(4), tmp_path / "v.nii.gz")
    labels = segmenter(tmp_path / "v.nii.gz")
    assert labels.shape == (32, 32, 3) and set(np.unique(labels)) <= {0, 1, 2}

    torch.save(BasicUNet(2, 1, 2, features=(4, 4, 4, 4, 4, 4)).state_dict(), weights)
    with pytest.raises(ValueError, match="does not fit this network"):
        segmenter.load_weights(weights)


class ChannelMeanSegmenter(ThresholdSegmenter):
    """Stands in for a multi-channel network: label 1 where the mean over the last (channel) axis is positive."""

    def __call__(self, path: Path) -> np.ndarray:
        return (np.asanyarray(nib.load(path).dataobj).mean(axis=-1) > 0).astype(np.uint8)


def test_multi_channel_inputs_are_4d_files_segmented_on_their_3d_grid(tmp_path, checkpoint, capsys):
    rng = np.random.default_rng(1)
    inputs, output = tmp_path / "brats", tmp_path / "out"
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    save_nifti(rng.normal(size=(8, 9, 5, 4)).astype(np.float32), affine, inputs / "case1.nii.gz")
    save_nifti(rng.normal(size=(8, 9, 5, 2)).astype(np.float32), affine, inputs / "two_modalities.nii.gz")
    save_nifti(rng.normal(size=(8, 9, 5)).astype(np.float32), affine, inputs / "single.nii.gz")
    with pytest.raises(SystemExit) as exit_info:
        run_folder_segmentation(inputs, output, ChannelMeanSegmenter(), checkpoint, progress=False, in_channels=4)
    assert exit_info.value.code == 1
    summary = capsys.readouterr().out
    assert "segmented 1 file(s), kept 0 existing output(s), 2 failure(s)" in summary
    assert f"FAILED {inputs / 'two_modalities.nii.gz'}: expected 4 channels along the last axis" in summary
    assert f"FAILED {inputs / 'single.nii.gz'}: expected a 4D volume, got shape (8, 9, 5)" in summary
    written = nib.load(output / "case1.nii.gz")
    assert written.shape == (8, 9, 5) and np.allclose(written.affine, affine)
    expected = (np.asanyarray(nib.load(inputs / "case1.nii.gz").dataobj).mean(axis=-1) > 0).astype(np.uint8)
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), expected)

from __future__ import annotations

import csv
import os
import runpy
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.engines import SupervisedTrainer

from common.evaluation.diagnostics import (
    DiagnosticInputError,
    InstabilityDiagnosticHandler,
    check_finite_scores,
    integer_labels,
    multi_negative_counts,
    multi_negative_fraction,
    negative_component_count,
    rw_logit_gradient,
)
from common.losses import NNUNetDeepSupervisionLoss, RegionWiseLoss
from common.maps import boundary_map, rrw_map
from common.training.batches import PrepareBatchKeys


def four_class_label() -> np.ndarray:
    label = np.zeros((24, 24), dtype=np.int64)
    label[4:20, 4:20] = 1
    label[8:16, 8:16] = 2
    label[10:14, 10:14] = 3
    return label


def test_closed_form_matches_autograd_of_the_region_wise_loss():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 5, generator=generator, requires_grad=True)
    rw_map = torch.randn(2, 4, 6, 5, generator=generator)
    RegionWiseLoss()(logits, rw_map).backward()
    # the loss is the mean of the per-voxel loss over batch, classes and voxels
    scale = logits.numel()
    closed_form = rw_logit_gradient(logits.detach(), rw_map)
    torch.testing.assert_close(logits.grad * scale, closed_form, atol=1e-6, rtol=1e-5)
    assert torch.equal(negative_component_count(logits.detach(), rw_map), (logits.grad < 0).sum(dim=1))


def test_hand_computed_voxel():
    # uniform probabilities: the gradient sign is the sign of z_j - mean(z); mean(-1, 2, 0.5, 3) = 1.125
    rw_map = torch.tensor([-1.0, 2.0, 0.5, 3.0]).view(1, 4, 1)
    logits = torch.zeros_like(rw_map)
    torch.testing.assert_close(rw_logit_gradient(logits, rw_map), (rw_map - 1.125) / 4)
    assert negative_component_count(logits, rw_map).item() == 2


def test_rrw_map_gives_exactly_one_negative_component_on_the_true_class():
    label = four_class_label()
    rw_map = torch.as_tensor(rrw_map(label, 4))[None]
    logits = torch.randn(1, 4, *label.shape, generator=torch.Generator().manual_seed(1)) * 3
    gradient = rw_logit_gradient(logits, rw_map)
    assert torch.all(negative_component_count(logits, rw_map) == 1)
    assert torch.equal(gradient.argmin(dim=1)[0], torch.as_tensor(label))


def test_boundary_map_has_multiple_negative_components_only_with_more_than_two_classes():
    label = four_class_label()
    uniform = torch.zeros(1, 4, *label.shape)
    four_classes = torch.as_tensor(boundary_map(label, 4))[None]
    assert multi_negative_fraction(uniform, four_classes) > 0.1
    binary = (label > 0).astype(np.int64)
    two_classes = torch.as_tensor(boundary_map(binary, 2))[None]
    assert multi_negative_fraction(uniform[:, :2], two_classes) == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        rw_logit_gradient(torch.zeros(1, 3, 4), torch.zeros(1, 2, 4))


class TwoHeadNet(torch.nn.Module):
    """Two outputs at their own resolutions in training mode, like the RW bundles' DeepSupervisionDynUNet."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.conv(x)
        return [out, 0.5 * torch.nn.functional.avg_pool2d(out, 2)] if self.training else out


def test_handler_logs_the_epoch_fraction_of_a_deep_supervision_trainer(tmp_path):
    torch.manual_seed(0)
    label = four_class_label()
    rw_map = torch.as_tensor(boundary_map(label, 4))
    images = torch.randn(4, 1, *label.shape)
    data = [{"image": image, "rw_map": rw_map} for image in images]
    network = TwoHeadNet()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=torch.utils.data.DataLoader(data, batch_size=2),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.0),  # fixed weights: the fraction can be recomputed
        loss_function=NNUNetDeepSupervisionLoss(RegionWiseLoss(), num_outputs=2),
        prepare_batch=PrepareBatchKeys(target_key="rw_map"),
    )
    handler = InstabilityDiagnosticHandler(filename=tmp_path / "instability.csv")
    handler.attach(trainer)
    trainer.run()
    with torch.no_grad():
        logits = network.conv(images)
    expected = multi_negative_fraction(logits, rw_map.expand(4, -1, -1, -1))
    assert trainer.state.metrics["multi_negative_fraction"] == pytest.approx(expected)
    rows = list(csv.DictReader(open(tmp_path / "instability.csv")))
    assert rows == [{"epoch": "1", "multi_negative_fraction": str(handler.history[0][1])}]
    with pytest.raises(FileExistsError):
        InstabilityDiagnosticHandler(filename=tmp_path / "instability.csv").attach(trainer)


def test_instability_script_prints_fractions_and_reports_bad_files(tmp_path, capsys):
    script = Path(__file__).resolve().parents[1] / "scripts" / "instability_diagnostic.py"
    main = runpy.run_path(str(script))["main"]
    label = np.repeat(four_class_label()[:, :, None], 3, axis=2)
    affine = np.diag([1.5, 1.5, 5.0, 1.0])
    label_path = tmp_path / "case_gt.nii.gz"
    nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), label_path)
    argv = ["--label", str(label_path), str(tmp_path / "missing.nii.gz"), "--num-classes", "4"]
    assert main([*argv, "--output-dir", str(tmp_path / "figures")]) == 1
    out, err = capsys.readouterr()
    expected = multi_negative_fraction(
        torch.zeros(1, 4, *label.shape), torch.as_tensor(boundary_map(label, 4, (1.5, 1.5, 5.0)))[None]
    )
    assert out.splitlines()[2].split() == ["case_gt", "0.0000", f"{expected:.4f}"]
    assert "missing.nii.gz" in err
    assert (tmp_path / "figures" / "case_gt_instability.png").is_file()

    # equally named labels of two folders get two figures, even with --overwrite; a label given twice is refused
    for site in ("siteA", "siteB"):
        (tmp_path / site).mkdir()
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), tmp_path / site / "case_gt.NII.GZ")
    argv = ["--label", str(tmp_path / "siteA" / "case_gt.NII.GZ"), str(tmp_path / "siteB" / "case_gt.NII.GZ")]
    argv += ["--num-classes", "4", "--output-dir", str(tmp_path / "sites"), "--overwrite"]
    assert main(argv) == 0
    assert sorted(path.relative_to(tmp_path / "sites").as_posix() for path in (tmp_path / "sites").rglob("*.png")) == [
        "siteA/case_gt_instability.png",
        "siteB/case_gt_instability.png",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["--label", str(label_path), str(label_path), "--num-classes", "4", "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "each --label file may be given once" in capsys.readouterr().err


def test_voxels_without_supervision_are_left_out():
    # two supervised voxels (one with two negative components) and two padded voxels with an all-zero map
    rw_map = torch.tensor([[-1.0, 2.0, 0.5, 3.0], [-1.0, 1.0, 1.0, 1.0], [0, 0, 0, 0], [0, 0, 0, 0]]).T[None]
    logits = torch.zeros_like(rw_map)
    assert multi_negative_counts(logits, rw_map) == (1, 2)
    assert multi_negative_fraction(logits, rw_map) == 0.5
    assert np.isnan(multi_negative_fraction(logits, torch.zeros_like(rw_map)))


def test_label_values_must_be_whole_numbers_and_scores_finite():
    assert integer_labels(np.array([[0.0, 3.0], [1.0, 2.0]], dtype=np.float32), "a.nii.gz").tolist() == [[0, 3], [1, 2]]
    assert integer_labels(np.array([[0, 3]], dtype=np.uint8), "a.nii.gz").dtype == np.int64
    # 1.5 and 2.25 in two voxels, NaN in one: three voxels, never rounded
    with pytest.raises(DiagnosticInputError, match=r"^a\.nii\.gz: 3 voxel\(s\) hold .*\(1\.5, 2\.25, nan\)"):
        integer_labels(np.array([[0.0, 1.5], [2.25, np.nan]]), "a.nii.gz")
    check_finite_scores(np.array([-1e30, 0.0, 7.5]), "p.nii.gz")
    with pytest.raises(DiagnosticInputError, match=r"^p\.nii\.gz: 1 NaN and 2 infinite value\(s\) among the logits"):
        check_finite_scores(np.array([np.nan, np.inf, -np.inf, 0.0]), "p.nii.gz")
    with pytest.raises(DiagnosticInputError, match="among the probabilities"):
        check_finite_scores(np.array([np.nan, 1.0]), "p.nii.gz", probabilities=True)


def test_instability_script_refuses_fractional_labels_and_non_finite_predictions(tmp_path, capsys):
    script = Path(__file__).resolve().parents[1] / "scripts" / "instability_diagnostic.py"
    main = runpy.run_path(str(script))["main"]
    label = np.zeros((4, 4, 2), dtype=np.float32)
    label[1:3, 1:3] = 1.0
    good_path, fractional_path = tmp_path / "good_gt.nii.gz", tmp_path / "fractional_gt.nii.gz"
    nib.save(nib.Nifti1Image(label, np.eye(4)), good_path)
    label[0, 0, 0] = 0.5  # e.g. a label resampled with linear interpolation: rounding would hide it
    nib.save(nib.Nifti1Image(label, np.eye(4)), fractional_path)
    figures = tmp_path / "figures"

    # the good label first: nothing is written before the refusal
    argv = ["--label", str(good_path), str(fractional_path), "--num-classes", "2", "--output-dir", str(figures)]
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {fractional_path}: 1 voxel(s) hold values that are not whole numbers (0.5)")
    assert not figures.exists()

    logits = np.zeros((4, 4, 2, 2), dtype=np.float32)
    logits[0, 0, 0, 1] = np.nan
    logits[1, 1, 1, 0] = np.inf
    prediction_path = tmp_path / "logits.nii.gz"
    nib.save(nib.Nifti1Image(logits, np.eye(4)), prediction_path)
    argv = ["--label", str(good_path), "--prediction", str(prediction_path), "--num-classes", "2"]
    for extra, kind in (([], "logits"), (["--probabilities"], "probabilities")):
        assert main([*argv, *extra, "--output-dir", str(figures)]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last == (
            f"error: {prediction_path}: 1 NaN and 1 infinite value(s) among the {kind}; the gradient signs are "
            f"undefined there: give finite {kind}"
        )
    assert not figures.exists()

    # the entry point itself: one error line last, exit status 2
    env = {**os.environ, "PYTHONPATH": str(script.parents[1])}
    argv = ["--label", str(fractional_path), "--num-classes", "2", "--output-dir", str(figures)]
    result = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {fractional_path}: 1 voxel(s)")

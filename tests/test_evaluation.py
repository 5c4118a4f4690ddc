from __future__ import annotations

import csv
import math
import runpy
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.metrics import DiceMetric, compute_hausdorff_distance
from monai.networks.utils import one_hot
from scipy import ndimage

from common.evaluation.case_metrics import CaseMetricsWriter, case_ids
from common.evaluation.metrics import (
    STATUS_ABSENT,
    STATUS_FALSE_POSITIVE,
    STATUS_MISSED,
    STATUS_PRESENT,
    StructureResult,
    brats_regions,
    class_structures,
    evaluate_case,
    hausdorff_from_masks,
    spacing_from_affine,
)
from common.evaluation.tables import read_epoch_column, read_results_csv, summarize, write_results_csv


def random_label_map(shape: tuple[int, ...], num_classes: int, seed: int) -> np.ndarray:
    """Smooth random multi-class map: argmax of blurred noise, background where all channels are low."""
    rng = np.random.default_rng(seed)
    fields = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) for _ in range(num_classes - 1)])
    label = fields.argmax(axis=0) + 1
    label[fields.max(axis=0) < 0.05] = 0
    return label.astype(np.int32)


def monai_hd(pred: np.ndarray, label: np.ndarray, num_classes: int, spacing, percentile=None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compute_hausdorff_distance(
            one_hot(torch.as_tensor(pred[None, None]).long(), num_classes),
            one_hot(torch.as_tensor(label[None, None]).long(), num_classes),
            include_background=False,
            spacing=spacing,
            percentile=percentile,
        )[0].numpy()


def test_shifted_cube_has_known_dice_and_hausdorff():
    label = np.zeros((20, 20, 20), dtype=np.int32)
    label[4:12, 4:12, 4:12] = 1
    pred = np.roll(label, 3, axis=0)
    (result,) = evaluate_case(pred, label, {"cube": (1,)}, spacing=(2.0, 1.0, 1.0), case="c")
    assert result.status == STATUS_PRESENT
    # overlap 5 x 8 x 8 voxels out of 512 in each mask
    assert result.dice == pytest.approx(2 * 320 / 1024)
    # the far faces are 3 voxels of 2 mm apart; every surface point is within 3 voxels along axis 0
    assert result.hd == pytest.approx(6.0)
    assert result.gt_voxels == result.pred_voxels == 512


def test_hd95_of_a_single_outlier_voxel_is_linear_interpolation():
    label = np.zeros((30, 30), dtype=np.int32)
    label[5:10, 5:10] = 1
    pred = label.copy()
    pred[25, 25] = 1
    hd, hd95 = hausdorff_from_masks(pred == 1, label == 1)
    # pred surface: 16 square border pixels at 0 and the outlier at sqrt(16^2 + 16^2) from (9, 9); gt->pred all 0
    outlier = math.hypot(16, 16)
    assert hd == pytest.approx(outlier)
    distances = np.array([0.0] * 16 + [outlier])
    assert hd95 == pytest.approx(np.quantile(distances, 0.95), abs=1e-5)


@pytest.mark.parametrize(
    ("shape", "spacing"), [((40, 36, 24), (1.0, 0.8, 2.5)), ((64, 48), (0.7, 1.3)), ((20, 22, 18), None)]
)
def test_matches_monai_hausdorff_and_dice(shape, spacing):
    num_classes = 5
    label = random_label_map(shape, num_classes, seed=1)
    pred = random_label_map(shape, num_classes, seed=2)
    pred[label == 1] = 1  # mix of overlapping and disjoint structures
    results = evaluate_case(pred, label, class_structures(num_classes), spacing)
    assert [r.status for r in results] == [STATUS_PRESENT] * (num_classes - 1)
    expected_hd = monai_hd(pred, label, num_classes, spacing)
    expected_hd95 = monai_hd(pred, label, num_classes, spacing, percentile=95)
    np.testing.assert_allclose([r.hd for r in results], expected_hd, atol=1e-4, rtol=0)
    np.testing.assert_allclose([r.hd95 for r in results], expected_hd95, atol=1e-4, rtol=0)
    expected_dice = DiceMetric(include_background=False)(
        one_hot(torch.as_tensor(pred[None, None]).long(), num_classes),
        one_hot(torch.as_tensor(label[None, None]).long(), num_classes),
    )[0].numpy()
    np.testing.assert_allclose([r.dice for r in results], expected_dice, atol=1e-6)


def test_background_and_structures_touching_the_border_match_monai():
    label = random_label_map((24, 24, 24), 3, seed=5)
    pred = np.roll(label, 2, axis=1)
    results = evaluate_case(pred, label, class_structures(3, include_background=True), (1.0, 1.0, 1.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = compute_hausdorff_distance(
            one_hot(torch.as_tensor(pred[None, None]).long(), 3),
            one_hot(torch.as_tensor(label[None, None]).long(), 3),
            include_background=True,
            spacing=(1.0, 1.0, 1.5),
        )[0].numpy()
    np.testing.assert_allclose([r.hd for r in results], expected, atol=1e-4, rtol=0)


def test_brats_regions_equal_metrics_of_binarised_maps():
    rng = np.random.default_rng(3)
    label = np.choose(random_label_map((32, 32, 16), 4, seed=3), [0, 1, 2, 4])
    pred = label.copy()
    pred[rng.random(label.shape) < 0.05] = 2
    regions = brats_regions()
    results = {r.structure: r for r in evaluate_case(pred, label, regions, (1.0, 1.0, 1.0))}
    for name, values in regions.items():
        binary_pred, binary_label = np.isin(pred, values), np.isin(label, values)
        (binary,) = evaluate_case(binary_pred.astype(np.int32), binary_label.astype(np.int32), {name: (1,)})
        manual_dice = 2 * (binary_pred & binary_label).sum() / (binary_pred.sum() + binary_label.sum())
        assert results[name].dice == pytest.approx(manual_dice)
        assert results[name].hd == pytest.approx(binary.hd)
        assert results[name].hd95 == pytest.approx(binary.hd95)
        assert results[name].labels == "+".join(map(str, values))
    assert brats_regions(enhancing_label=3)["TC"] == (1, 3)


def test_absent_missed_and_false_positive_are_explicit():
    label = np.zeros((10, 10), dtype=np.int32)
    pred = np.zeros_like(label)
    label[2:5, 2:5] = 1  # class 1 only in the label -> missed
    pred[6:8, 6:8] = 2  # class 2 only in the prediction -> false positive
    results = {r.structure: r for r in evaluate_case(pred, label, class_structures(4))}
    assert results["class_1"].status == STATUS_MISSED
    assert (results["class_1"].dice, results["class_1"].hd) == (0.0, math.inf)
    assert results["class_2"].status == STATUS_FALSE_POSITIVE
    assert results["class_2"].hd95 == math.inf
    assert results["class_3"].status == STATUS_ABSENT
    assert math.isnan(results["class_3"].dice) and math.isnan(results["class_3"].hd)


def make_result(case: str, status: str, dice: float, hd: float) -> StructureResult:
    return StructureResult(case, "class_1", "1", status, dice, hd, hd / 2, 10, 10)


def test_summary_counts_statuses_and_excludes_undefined_values():
    results = [
        make_result("a", STATUS_PRESENT, 0.8, 4.0),
        make_result("b", STATUS_PRESENT, 0.6, 2.0),
        make_result("c", STATUS_MISSED, 0.0, math.inf),
        make_result("d", STATUS_ABSENT, math.nan, math.nan),
    ]
    (entry,) = summarize(results)
    assert (entry["n_cases"], entry["n_present"], entry["n_missed"], entry["n_absent"]) == (4, 2, 1, 1)
    assert entry["n_false_positive"] == 0
    assert entry["dice_mean"] == pytest.approx(1.4 / 3)  # the missed case counts as 0, the absent one not at all
    assert entry["dice_std"] == pytest.approx(np.std([0.8, 0.6, 0.0], ddof=1))
    assert entry["hd_mean"] == pytest.approx(3.0) and entry["hd_std"] == pytest.approx(math.sqrt(2))
    assert entry["hd95_mean"] == pytest.approx(1.5)


def test_csv_round_trip_and_no_silent_overwrite(tmp_path):
    results = [make_result("a", STATUS_PRESENT, 0.8, 4.0), make_result("b", STATUS_MISSED, 0.0, math.inf)]
    path = tmp_path / "out" / "metrics.csv"
    write_results_csv(results, path)
    assert read_results_csv(path) == results
    with pytest.raises(FileExistsError, match="metrics.csv"):
        write_results_csv(results, path)
    write_results_csv(results[:1], path, overwrite=True)
    assert read_results_csv(path) == results[:1]


def test_reading_a_foreign_csv_names_the_file(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="other.csv"):
        read_results_csv(path)


def test_spacing_from_a_rotated_affine():
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 1.2, 3.0])
    assert spacing_from_affine(affine) == pytest.approx((0.7, 1.2, 3.0))


@pytest.mark.parametrize(
    ("pred", "label", "message"),
    [
        (np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32), "differs"),
        (np.zeros((4, 4), np.int32), -np.ones((4, 4), np.int32), "non-negative"),
        (np.full((4, 4), 0.5), np.zeros((4, 4), np.int32), "integers"),
        (np.zeros(4, np.int32), np.zeros(4, np.int32), "2D or 3D"),
    ],
)
def test_bad_inputs_raise_clear_errors(pred, label, message):
    with pytest.raises(ValueError, match=message):
        evaluate_case(pred, label, {"x": (1,)}, case="case7")


@pytest.mark.parametrize("decollate", [True, False])
def test_handler_writes_per_case_csv_with_spacing_from_the_affine(tmp_path, decollate):
    num_classes = 3
    items = []
    expected = []
    for index, spacing in enumerate([(1.0, 2.0, 1.0), (0.5, 0.5, 3.0)]):
        label = random_label_map((16, 16, 12), num_classes, seed=10 + index)
        pred = np.roll(label, 1, axis=2)
        affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
        items.append(
            {
                # the Identity network below returns the image, so the image is the predicted one-hot map
                "image": one_hot(torch.as_tensor(pred[None]).long(), num_classes, dim=0).float(),
                "label": MetaTensor(
                    torch.as_tensor(label[None]), affine=affine, meta={"filename_or_obj": f"/d/case{index}.nii.gz"}
                ),
            }
        )
        expected.append(monai_hd(pred, label, num_classes, spacing))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(items, batch_size=2),
        network=torch.nn.Identity(),
        decollate=decollate,
    )
    writer = CaseMetricsWriter(tmp_path, class_structures(num_classes), prefix="val")
    writer.attach(evaluator)
    evaluator.run()
    rows = list(csv.DictReader(open(tmp_path / "val_per_case.csv")))
    assert [row["case"] for row in rows] == ["case0", "case0", "case1", "case1"]
    np.testing.assert_allclose([float(row["hd"]) for row in rows], np.concatenate(expected), atol=1e-4)
    summary = list(csv.DictReader(open(tmp_path / "val_summary.csv")))
    assert [row["structure"] for row in summary] == ["class_1", "class_2"]
    with pytest.raises(FileExistsError):
        CaseMetricsWriter(tmp_path, class_structures(num_classes), prefix="val").check_outputs(evaluator)


def test_handler_names_cases_evaluated_twice(tmp_path, caplog):
    label = random_label_map((12, 12, 6), 3, seed=1)
    item = {
        "image": one_hot(torch.as_tensor(label[None]).long(), 3, dim=0).float(),
        "label": MetaTensor(torch.as_tensor(label[None]), meta={"filename_or_obj": "/d/site/case0.nii.gz"}),
    }
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader([item, item], batch_size=1), network=torch.nn.Identity()
    )
    CaseMetricsWriter(tmp_path, class_structures(3), prefix="val").attach(evaluator)
    evaluator.run()
    assert "case(s) evaluated more than once (listed twice in the datalist?): case0" in caplog.text
    assert len(read_results_csv(tmp_path / "val_per_case.csv")) == 4  # every row kept, nothing merged silently


def test_evaluate_folder_reports_bad_cases_and_evaluates_the_rest(tmp_path, capsys):
    script = Path(__file__).resolve().parents[1] / "scripts" / "evaluate_folder.py"
    evaluate_folder_main = runpy.run_path(str(script))["main"]
    label_dir, pred_dir = tmp_path / "labels", tmp_path / "preds"
    (label_dir / "sub").mkdir(parents=True)
    pred_dir.mkdir()
    affine = np.diag([0.8, 1.2, 3.0, 1.0])
    good_label = random_label_map((20, 20, 8), 4, seed=7)
    good_pred = np.roll(good_label, 1, axis=0)
    nib.save(nib.Nifti1Image(good_label.astype(np.uint8), affine), label_dir / "good_gt.nii.gz")
    nib.save(nib.Nifti1Image(good_pred.astype(np.uint8), affine), pred_dir / "good_seg.nii.gz")
    nib.save(nib.Nifti1Image(good_label.astype(np.uint8), affine), label_dir / "sub" / "missing_gt.nii.gz")
    nib.save(nib.Nifti1Image(good_label.astype(np.uint8), affine), label_dir / "shape_gt.nii.gz")
    nib.save(nib.Nifti1Image(good_pred[:10].astype(np.uint8), affine), pred_dir / "shape_seg.nii")
    output = tmp_path / "eval" / "run.csv"
    argv = ["--label-dir", str(label_dir), "--pred-dir", str(pred_dir), "--num-classes", "4", "--output", str(output)]
    argv += ["--label-postfix", "_gt", "--pred-postfix", "_seg"]
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    nib.save(nib.Nifti1Image(good_label.astype(np.float32) * 100, affine), image_dir / "good.nii.gz")
    argv += ["--overlays", str(tmp_path / "overlays"), "--image-dir", str(image_dir)]
    assert evaluate_folder_main(argv) == 1
    errors = capsys.readouterr().err
    assert "2 of 3 cases failed" in errors
    assert "missing_seg.nii.gz: prediction missing" in errors and "shape_seg.nii: shape" in errors
    expected = evaluate_case(good_pred, good_label, class_structures(4), (0.8, 1.2, 3.0), case="good")
    assert read_results_csv(output) == expected
    assert (tmp_path / "eval" / "run_summary.csv").exists()
    assert [p.name for p in (tmp_path / "overlays").iterdir()] == ["good_overlay.png"]
    assert evaluate_folder_main(argv) == 2  # outputs exist and --overwrite was not given
    assert "exists" in capsys.readouterr().err
    output.unlink()
    (tmp_path / "eval" / "run_summary.csv").unlink()
    assert evaluate_folder_main(argv) == 2  # an overlay exists: refused before any case is evaluated
    assert f"{tmp_path / 'overlays' / 'good_overlay.png'}: already exists" in capsys.readouterr().err
    assert not output.exists()


def test_case_ids_keep_cases_of_two_sites_apart():
    sources = ["/d/siteA/p1/label.nii.gz", "/d/siteB/p1/label.nii.gz", "/d/siteA/p2/label.NII", "iteration3_item0"]
    assert case_ids(sources + sources[:1]) == {
        "/d/siteA/p1/label.nii.gz": "siteA/p1/label",
        "/d/siteB/p1/label.nii.gz": "siteB/p1/label",
        "/d/siteA/p2/label.NII": "siteA/p2/label",
        "iteration3_item0": "iteration3_item0",
    }
    assert case_ids(["/d/x/a.nii.gz", "/d/x/b.nii.gz"]) == {"/d/x/a.nii.gz": "a", "/d/x/b.nii.gz": "b"}
    assert case_ids(["/d/a.nii.gz", "/d/a.nii", "/d/b.nii"]) == {
        "/d/a.nii.gz": "a.nii.gz",
        "/d/a.nii": "a.nii",
        "/d/b.nii": "b",
    }


def test_class_structures_names():
    assert class_structures(3) == {"class_1": (1,), "class_2": (2,)}
    assert class_structures(3, names=["RV", "LV"]) == {"RV": (1,), "LV": (2,)}
    assert class_structures(2, include_background=True) == {"class_0": (0,), "class_1": (1,)}
    with pytest.raises(ValueError, match="distinct class names"):
        class_structures(3, names=["RV"])


def test_epoch_column_skips_epochs_without_validation_and_names_bad_files(tmp_path):
    table = tmp_path / "validation_metrics.csv"
    table.write_text("epoch,train_loss,val_mean_dice\n1,0.9,\n2,0.8,0.25\n3,0.7,\n4,0.6,0.5\n")
    assert read_epoch_column(table, "val_mean_dice") == ([2, 4], [0.25, 0.5])
    assert read_epoch_column(table, "train_loss") == ([1, 2, 3, 4], [0.9, 0.8, 0.7, 0.6])
    with pytest.raises(ValueError, match=r"validation_metrics\.csv: no 'epoch' and 'val_hd' columns"):
        read_epoch_column(table, "val_hd")
    table.write_text("epoch,val_mean_dice\n1,0.5\n2,high\n")
    with pytest.raises(ValueError, match=r"validation_metrics\.csv, line 3: could not convert"):
        read_epoch_column(table, "val_mean_dice")

"""Validation metrics in training (common.training.metrics.SegmentationMetric): MONAI's values, no warning floods."""

from __future__ import annotations

import csv
import logging
import math
import warnings

import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.handlers import from_engine
from monai.metrics import DiceMetric, compute_hausdorff_distance
from monai.networks.utils import one_hot
from scipy import ndimage

from common.errors import OptionError
from common.training.metric_tables import EpochMetricsCSV
from common.training.metrics import SegmentationMetric

NUM_CLASSES = 4
SPACINGS = [(1.0, 2.0, 1.5), (0.7, 0.7, 3.0)]


def smooth_label_map(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Every class present: argmax of blurred noise channels."""
    rng = np.random.default_rng(seed)
    return np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) for _ in range(NUM_CLASSES)]).argmax(0)


def evaluator_items() -> tuple[list[dict], list[tuple[np.ndarray, np.ndarray, tuple]]]:
    """Two cases: (image = one-hot prediction, label); the second lacks class 3 in the label, the first predicts 3."""
    items, pairs = [], []
    for index, spacing in enumerate(SPACINGS):
        label = smooth_label_map((18, 16, 10), seed=index)
        pred = np.roll(label, 2, axis=0)
        if index == 1:
            label[label == 3] = 0  # class 3 missing from the label, predicted: Dice 0, HD undefined
        affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
        prediction = one_hot(torch.as_tensor(pred[None]).long(), NUM_CLASSES, dim=0).float()
        items.append({"image": prediction, "label": MetaTensor(torch.as_tensor(label[None]), affine=affine)})
        pairs.append((pred, label, spacing))
    return items, pairs


def run_evaluator(items: list[dict], handlers: list | None = None) -> SupervisedEvaluator:
    transform = from_engine(["pred", "label"])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(items, batch_size=2),
        network=torch.nn.Identity(),  # the image is the one-hot prediction
        key_val_metric={"val_mean_dice": SegmentationMetric(NUM_CLASSES, "dice", output_transform=transform)},
        additional_metrics={
            "val_hausdorff_mm": SegmentationMetric(NUM_CLASSES, "hd", output_transform=transform, log_time=True)
        },
        val_handlers=handlers,
    )
    evaluator.run()
    return evaluator


def monai_reference(pairs) -> tuple[np.ndarray, np.ndarray]:
    """(cases, classes) Dice and HD (mm) from MONAI; the false-positive class of case 2 handled by hand."""
    dice_rows, hd_rows = [], []
    for pred, label, spacing in pairs:
        onehot_pred = one_hot(torch.as_tensor(pred[None, None]).long(), NUM_CLASSES)
        onehot_label = one_hot(torch.as_tensor(label[None, None]).long(), NUM_CLASSES)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dice = DiceMetric(include_background=False, ignore_empty=True)(onehot_pred, onehot_label)[0].numpy()
            hd = compute_hausdorff_distance(onehot_pred, onehot_label, spacing=spacing)[0].numpy()
        dice_rows.append(np.nan_to_num(dice, nan=0.0))  # a class predicted but not in the label: Dice 0
        hd_rows.append(np.where(np.isfinite(hd), hd, np.nan))  # ... and no HD
    return np.array(dice_rows), np.array(hd_rows)


def test_values_and_details_match_monai_without_warnings(caplog):
    items, pairs = evaluator_items()
    expected_dice, expected_hd = monai_reference(pairs)
    assert math.isnan(expected_hd[1, 2]) and expected_dice[1, 2] == 0.0  # the case the rule is about
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="common.training.metrics"):
        warnings.simplefilter("error")  # MONAI's HD warns for each class a case lacks; this metric does not
        evaluator = run_evaluator(items)
    details = evaluator.state.metric_details
    np.testing.assert_allclose(details["val_mean_dice"].numpy(), expected_dice, atol=1e-6)
    np.testing.assert_allclose(details["val_hausdorff_mm"].numpy(), expected_hd, atol=1e-4)
    # mean over classes per case, then over cases, undefined values left out (MONAI's "mean" reduction)
    metrics = evaluator.state.metrics
    assert metrics["val_mean_dice"] == pytest.approx(expected_dice.mean(axis=1).mean())
    assert metrics["val_hausdorff_mm"] == pytest.approx(np.nanmean(np.nanmean(expected_hd, axis=1)))
    (message,) = [record.getMessage() for record in caplog.records if "validation of epoch" in record.message]
    assert message.startswith("validation of epoch 1: 2 case(s) in ") and "hd scoring" in message


def test_epoch_table_keeps_its_per_class_columns(tmp_path):
    items, pairs = evaluator_items()
    expected_dice, expected_hd = monai_reference(pairs)
    table = EpochMetricsCSV(tmp_path / "validation_metrics.csv", class_names=["RV", "myocardium", "LV"])
    run_evaluator(items, handlers=[table])
    (row,) = csv.DictReader(open(tmp_path / "validation_metrics.csv"))
    assert list(row) == [
        "epoch", "val_mean_dice", "val_hausdorff_mm", "val_mean_dice_RV", "val_mean_dice_myocardium",
        "val_mean_dice_LV", "val_hausdorff_mm_RV", "val_hausdorff_mm_myocardium", "val_hausdorff_mm_LV",
    ]  # fmt: skip
    assert float(row["val_mean_dice_LV"]) == pytest.approx(expected_dice[:, 2].mean())
    assert float(row["val_hausdorff_mm_LV"]) == pytest.approx(expected_hd[0, 2])  # case 2 has no LV distance


def test_empty_runs_and_bad_settings():
    metric = SegmentationMetric(3, "hd95")
    assert math.isnan(metric.compute()) and metric.details().shape == (0, 2)
    with pytest.raises(OptionError, match="metric must be 'dice', 'hd' or 'hd95', got 'jaccard'"):
        SegmentationMetric(3, "jaccard")

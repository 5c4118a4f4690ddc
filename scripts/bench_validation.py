"""Benchmark one training-time validation case: the bundles' metrics against MONAI's, side by side in one process.

Both paths start from the network's logits of one volume and end with the mean Dice and the Hausdorff distance
(mm) of every foreground class:

- ``bundles``: ``AsDiscreted(argmax)`` on the prediction, then two ``common.training.metrics.SegmentationMetric``
  (Dice, HD) on the label maps (what templates/base.yaml validates with);
- ``monai``: ``AsDiscreted(argmax, to_onehot)`` on prediction and label, then MONAI's ``DiceMetric`` and
  ``HausdorffDistanceMetric`` with the spacing (what the bundles validated with before).

The label is a synthetic parcellation (``scripts/bench_evaluation.py``), the logits a one-hot of a warped copy plus
noise. Times are medians over ``--repeats`` interleaved runs; the values of both paths are printed to show they
agree.

    python scripts/bench_validation.py --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from monai.data import MetaTensor
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.transforms import AsDiscreted

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_evaluation import synthetic_parcellation, warped  # noqa: E402

from common.training.metrics import SegmentationMetric  # noqa: E402

SETTINGS = {  # name: (classes incl. background, cube size, spacing)
    "4 classes, 96^3, 1.5x1.5x3 mm": (4, 96, (1.5, 1.5, 3.0)),
    "20 classes, 128^3, 1 mm": (20, 128, (1.0, 1.0, 1.0)),
}


def case(num_classes: int, size: int, spacing: tuple[float, ...], seed: int = 0) -> dict[str, MetaTensor]:
    label = synthetic_parcellation(size, num_classes - 1, seed)
    prediction = torch.as_tensor(warped(label, 3.0, seed + 1)).long()
    logits = torch.nn.functional.one_hot(prediction, num_classes).movedim(-1, 0).float()
    logits += 0.1 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed))
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return {"pred": MetaTensor(logits, affine=affine), "label": MetaTensor(torch.as_tensor(label[None]), affine=affine)}


def bundles_path(item: dict, num_classes: int) -> tuple[float, float]:
    item = AsDiscreted(keys="pred", argmax=True)(dict(item))
    values = []
    for metric in ("dice", "hd"):
        scorer = SegmentationMetric(num_classes, metric)
        scorer.update(([item["pred"]], [item["label"]]))
        values.append(scorer.compute())
    return values[0], values[1]


def monai_path(item: dict, num_classes: int, spacing: tuple[float, ...]) -> tuple[float, float]:
    item = AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=num_classes)(dict(item))
    dice, hausdorff = DiceMetric(include_background=False), HausdorffDistanceMetric(include_background=False)
    dice([item["pred"]], [item["label"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hausdorff([item["pred"]], [item["label"]], spacing=[list(spacing)])
    return float(dice.aggregate()), float(hausdorff.aggregate())


def timed(function, *args) -> tuple[float, tuple[float, float]]:
    started = time.perf_counter()
    values = function(*args)
    return time.perf_counter() - started, values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{'setting':<34}{'bundles s':>11}{'monai s':>10}{'ratio':>8}   values (bundles / monai)")
    for name, (num_classes, size, spacing) in SETTINGS.items():
        item = case(num_classes, size, spacing)
        ours, theirs = [], []
        for _ in range(args.repeats):
            seconds, our_values = timed(bundles_path, item, num_classes)
            ours.append(seconds)
            seconds, their_values = timed(monai_path, item, num_classes, spacing)
            theirs.append(seconds)
        ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
        print(
            f"{name:<34}{ours_median:>11.2f}{theirs_median:>10.2f}{theirs_median / ours_median:>7.1f}x   "
            f"Dice {our_values[0]:.4f} / {their_values[0]:.4f}, HD {our_values[1]:.3f} / {their_values[1]:.3f} mm"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

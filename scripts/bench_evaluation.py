"""Benchmark common.evaluation.metrics against MONAI's Hausdorff/Dice metrics on a multi-class volume.

Both run side by side in this process, interleaved, and the table shows medians over repeats and the ratio.
The default volume is a synthetic 20-structure parcellation of a sphere (Voronoi cells, like a brain atlas) at
128^3 with anisotropic spacing (``--layout spheres``: 20 separate small spheres instead); the prediction is the
label warped by a smooth random displacement field.
``--label FILE`` benchmarks a real NIfTI label map instead (the prediction is warped the same way).

    python scripts/bench_evaluation.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import nibabel as nib
import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot
from scipy import ndimage
from scipy.spatial import KDTree

from common.evaluation.metrics import class_structures, evaluate_case


def synthetic_parcellation(size: int, num_structures: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.indices((size,) * 3).reshape(3, -1).T
    centre = (size - 1) / 2
    seeds = rng.uniform(0.2 * size, 0.8 * size, (num_structures, 3))
    nearest = KDTree(seeds).query(grid)[1].reshape((size,) * 3)
    label = (nearest + 1).astype(np.uint8)
    label[np.linalg.norm(grid - centre, axis=1).reshape((size,) * 3) > 0.43 * size] = 0
    return label


def synthetic_spheres(size: int, num_structures: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.indices((size,) * 3, dtype=np.float32)
    label = np.zeros((size,) * 3, dtype=np.uint8)
    for index in range(num_structures):
        radius = rng.uniform(0.03, 0.1) * size
        centre = rng.uniform(radius, size - radius, 3)
        inside = sum((grid[axis] - centre[axis]) ** 2 for axis in range(3)) <= radius**2
        label[inside] = index + 1
    return label


def warped(label: np.ndarray, amplitude: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    displacement = [ndimage.gaussian_filter(rng.standard_normal(label.shape), sigma=8) for _ in range(label.ndim)]
    displacement = [d * amplitude / (np.abs(d).max() + 1e-12) for d in displacement]
    coordinates = np.indices(label.shape, dtype=np.float64) + np.stack(displacement)
    return ndimage.map_coordinates(label, coordinates, order=0, mode="nearest").astype(label.dtype)


def monai_metrics(pred: np.ndarray, label: np.ndarray, num_classes: int, spacing: tuple[float, ...]) -> np.ndarray:
    y_pred = one_hot(torch.as_tensor(pred[None, None]).long(), num_classes)
    y = one_hot(torch.as_tensor(label[None, None]).long(), num_classes)
    hd = HausdorffDistanceMetric(include_background=False)(y_pred, y, spacing=spacing)
    hd95 = HausdorffDistanceMetric(include_background=False, percentile=95)(y_pred, y, spacing=spacing)
    dice = DiceMetric(include_background=False)(y_pred, y)
    return torch.cat([dice, hd, hd95]).numpy()


def ours(pred: np.ndarray, label: np.ndarray, num_classes: int, spacing: tuple[float, ...]) -> np.ndarray:
    results = evaluate_case(pred, label, class_structures(num_classes), spacing)
    return np.array([[r.dice for r in results], [r.hd for r in results], [r.hd95 for r in results]])


def monai_hd_only(pred: np.ndarray, label: np.ndarray, num_classes: int, spacing: tuple[float, ...]) -> None:
    y_pred = one_hot(torch.as_tensor(pred[None, None]).long(), num_classes)
    y = one_hot(torch.as_tensor(label[None, None]).long(), num_classes)
    HausdorffDistanceMetric(include_background=False)(y_pred, y, spacing=spacing)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="edge length of the synthetic volume")
    parser.add_argument("--structures", type=int, default=20, help="foreground structures of the synthetic volume")
    parser.add_argument(
        "--layout", choices=["parcellation", "spheres"], default="parcellation", help="synthetic volume layout"
    )
    parser.add_argument("--label", help="NIfTI label map to use instead of the synthetic volume")
    parser.add_argument("--spacing", type=float, nargs="+", default=[1.0, 0.8, 1.5], help="synthetic spacing (mm)")
    parser.add_argument("--amplitude", type=float, default=2.0, help="max displacement of the prediction (voxels)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.label:
        image = nib.load(args.label)
        label = np.asarray(image.dataobj).astype(np.int32)
        spacing = tuple(float(s) for s in image.header.get_zooms()[: label.ndim])
    else:
        make = synthetic_parcellation if args.layout == "parcellation" else synthetic_spheres
        label = make(args.size, args.structures, args.seed)
        spacing = tuple(args.spacing)
    pred = warped(label, args.amplitude, args.seed + 1)
    num_classes = int(max(label.max(), pred.max())) + 1
    print(f"volume {label.shape}, spacing {spacing}, {num_classes - 1} foreground classes")

    warnings.simplefilter("ignore")  # MONAI warns about classes absent from a case
    candidates = {
        "ours (Dice+HD+HD95)": lambda: ours(pred, label, num_classes, spacing),
        "MONAI (Dice+HD+HD95)": lambda: monai_metrics(pred, label, num_classes, spacing),
        "MONAI HausdorffDistanceMetric (HD)": lambda: monai_hd_only(pred, label, num_classes, spacing),
    }
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.repeats):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)

    difference = np.abs(ours(pred, label, num_classes, spacing) - monai_metrics(pred, label, num_classes, spacing))
    print(
        f"max |ours - MONAI|: Dice {np.nanmax(difference[0]):.2e}, HD {np.nanmax(difference[1]):.2e} mm, "
        f"HD95 {np.nanmax(difference[2]):.2e} mm"
    )
    baseline = statistics.median(times["ours (Dice+HD+HD95)"])
    print(f"{'method':<38} {'median s':>9} {'min s':>8} {'x ours':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<38} {median:>9.3f} {min(values):>8.3f} {median / baseline:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

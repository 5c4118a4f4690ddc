"""Benchmark RW map generation and the RW loss against their baselines, side by side in one process.

Maps: ``common.maps.rrw_map`` / ``boundary_map`` (one multi-label EDT from the ``edt`` package, plus one binary
EDT per class for the outside distances of RW-Boundary) against the per-class
``scipy.ndimage.distance_transform_edt`` loop of the authors' code and MONAI's ``BoundaryLoss``.
Loss: ``RegionWiseLoss`` forward+backward against MONAI ``DiceLoss(softmax=True, to_onehot_y=True)``.

Reports medians over repeats, the speed-up ratio and the largest absolute difference between the two maps.

    python scripts/bench_maps.py                 # all cases (about 3 minutes on 2 cores)
    python scripts/bench_maps.py --quick         # smaller volumes, for a smoke run
    python scripts/bench_maps.py --label lab.nii.gz --spacing-from-file   # a real label volume as an extra case
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from monai.losses import DiceLoss
from scipy import ndimage

from common.losses import RegionWiseLoss
from common.maps import boundary_map, rrw_map


def scipy_rrw(label: np.ndarray, num_classes: int, spacing=None) -> np.ndarray:
    z = np.ones((num_classes, *label.shape), dtype=np.float32)
    for c in range(num_classes):
        mask = label == c
        if mask.all():
            z[c] = -1.0
        elif mask.any():
            distance = ndimage.distance_transform_edt(mask, sampling=spacing)
            z[c][mask] = -distance[mask] / distance.max()
    return z


def scipy_boundary(label: np.ndarray, num_classes: int, spacing=None) -> np.ndarray:
    z = np.zeros((num_classes, *label.shape), dtype=np.float32)
    for c in range(num_classes):
        mask = label == c
        if mask.any() and not mask.all():
            inside = ndimage.distance_transform_edt(mask, sampling=spacing)
            outside = ndimage.distance_transform_edt(~mask, sampling=spacing)
            z[c] = np.where(mask, -inside, outside)
    return z


def organ_like_label(shape: tuple[int, ...], num_classes: int, seed: int = 0) -> np.ndarray:
    """Smooth random regions: background where a smoothed field is low, else the argmax of smoothed noise."""
    rng = np.random.default_rng(seed)
    coarse = tuple(max(s // 8, 2) for s in shape)
    zoom = [s / c for s, c in zip(shape, coarse, strict=True)]
    fields = np.stack([ndimage.zoom(rng.standard_normal(coarse), zoom, order=1) for _ in range(num_classes - 1)])
    label = (fields.argmax(0) + 1).astype(np.uint8)
    background = ndimage.zoom(rng.standard_normal(coarse), zoom, order=1) < 0
    label[background] = 0
    return label


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_map_case(
    name: str, label: np.ndarray, num_classes: int, spacing, repeats: int, threads: int | None
) -> list[str]:
    rows = []
    for map_name, function, baseline in (("RRW", rrw_map, scipy_rrw), ("RW-Boundary", boundary_map, scipy_boundary)):
        ours = functools.partial(function, threads=threads)
        difference = float(np.abs(ours(label, num_classes, spacing) - baseline(label, num_classes, spacing)).max())
        ours_s = median_seconds(lambda f=ours: f(label, num_classes, spacing), repeats)
        base_s = median_seconds(lambda f=baseline: f(label, num_classes, spacing), max(repeats // 2, 1))
        rows.append(
            f"| {name} | {map_name} | {num_classes} | {ours_s * 1e3:8.1f} | {base_s * 1e3:9.1f} | "
            f"{base_s / ours_s:6.1f}x | {difference:.1e} |"
        )
    return rows


def bench_loss_case(num_classes: int, spatial: tuple[int, ...], repeats: int) -> str:
    torch.manual_seed(0)
    labels = torch.from_numpy(organ_like_label(spatial, num_classes)).long()[None, None].repeat(2, 1, 1, 1, 1)
    rw_map = torch.from_numpy(rrw_map(labels[0, 0].numpy(), num_classes))[None].repeat(2, 1, 1, 1, 1)
    logits = torch.randn(2, num_classes, *spatial, requires_grad=True)
    rw_loss, dice_loss = RegionWiseLoss(), DiceLoss(softmax=True, to_onehot_y=True)

    def step(loss_function, target):
        logits.grad = None
        loss_function(logits, target).backward()

    step(rw_loss, rw_map)  # warm-up
    step(dice_loss, labels)
    rw_s = median_seconds(lambda: step(rw_loss, rw_map), repeats)
    dice_s = median_seconds(lambda: step(dice_loss, labels), repeats)
    shape = "x".join(map(str, (2, num_classes, *spatial)))
    return f"| {shape} | {rw_s * 1e3:8.1f} | {dice_s * 1e3:8.1f} | {rw_s / dice_s:5.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64^3 volumes and fewer repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--label", help="a NIfTI label volume to add as a case")
    parser.add_argument("--spacing-from-file", action="store_true", help="use the label file's voxel spacing")
    parser.add_argument("--threads", type=int, help="EDT threads of our maps (default: all available CPUs)")
    args = parser.parse_args()
    side = 64 if args.quick else 128
    repeats = 3 if args.quick else args.repeats

    cases = [
        (f"{side}^3 blobs", organ_like_label((side,) * 3, 4), 4, None),
        (f"{side}^3 blobs", organ_like_label((side,) * 3, 20), 20, None),
        ("ACDC-like 256x256x16, spacing (1.5, 1.5, 10)", organ_like_label((256, 256, 16), 4), 4, (1.5, 1.5, 10.0)),
    ]
    if args.label:
        import nibabel as nib

        image = nib.load(args.label)
        label = np.asarray(image.dataobj).astype(np.int64)
        spacing = tuple(float(s) for s in image.header.get_zooms()[:3]) if args.spacing_from_file else None
        cases.append((args.label, label, int(label.max()) + 1, spacing))

    edt_threads = args.threads or len(os.sched_getaffinity(0))
    print(f"EDT threads (ours): {edt_threads}, scipy: 1, torch threads: {torch.get_num_threads()}, ", end="")
    print(f"repeats: {repeats} (baseline: {max(repeats // 2, 1)})\n")
    print("| volume | map | C | ours (ms) | scipy loop (ms) | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for name, label, num_classes, spacing in cases:
        for row in bench_map_case(name, label, num_classes, spacing, repeats, args.threads):
            print(row, flush=True)

    print("\n| logits | RW loss fwd+bwd (ms) | MONAI DiceLoss fwd+bwd (ms) | RW / Dice |")
    print("|---|---|---|---|")
    for num_classes in (4, 20):
        print(bench_loss_case(num_classes, (side,) * 3, repeats), flush=True)


if __name__ == "__main__":
    main()

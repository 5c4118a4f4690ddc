"""Scale benchmark (issue 12): compact against dense RW maps and targets, and folder inference against class count.

Three sections in one run; within a section the candidates run round-robin with their baseline (one call of each
per round, so that load from other processes hits all alike) and the tables give medians over the rounds.

1. Maps: the real AAL atlas (181x217x181, 116 regions + background = 117 classes; ``--atlas``, a labelsTr file
   of ``scripts/fetch_examples.py``'s ``brain_colin27_aal``) and the same atlas with its regions merged into 4 and
   20 classes.
   ``rrw_map(..., compact=True)`` and the dense ``rrw_map`` against ONE multi-label EDT call of the label with
   every class labelled (``edt`` treats 0 as background, the RRW map does not; that call is the floor of any exact
   RRW map): time and bytes per voxel. Target: compact within 1.5x the EDT, 4 bytes per voxel.
   Without ``--atlas`` a synthetic Voronoi label of the atlas's shape stands in.
2. Losses: ``RegionWiseLoss``, ``RWCombinedLoss`` (Dice, gradual, alpha 0.5) and ``RWWeightedCrossEntropyLoss``
   forward+backward on compact ``(B, 2, ...)`` against dense targets at ``(2, 20, 128^3)``, with the largest
   difference of values and (relative to the largest gradient) gradients. Target: equal to 1e-6, compact no slower.
3. Folder inference: a bundle's inference config run by MONAI's documented command line (``python -m monai.bundle
   run --config_file configs/inference.yaml --dataset_dir IN --output_dir OUT --num_classes C``, default bundle
   ``brain_explog``) in a subprocess, on a synthetic 512x512x61 CT-like volume (0.7 x 0.7 x 5 mm) with randomly
   initialised weights built from the same config: peak RSS (``wait4``) and wall time for 4, 20 and 117 classes,
   and whether the prediction kept the input's shape and affine. Each subprocess runs under an address-space limit
   (``--memory-limit-gb``) so that a run which would exhaust a shared machine fails instead (reported as over it).
   ``--bundle msd_rrw --inference-variants scores labels_first`` also runs the slice-wise bundles' bounded-memory
   path (``--labels_first True``) on the same weights, with the fraction of voxels whose label differs from the
   default path; ``--inference-slices`` sets the volume's slice count (memory against volume size).

    python scripts/bench_scale.py --atlas DATA/brain_colin27_aal/labelsTr/colin27.nii.gz   # full (~15 min, 2 cores)
    python scripts/bench_scale.py --quick              # smaller volumes and losses, 4/20 classes inference only
    python scripts/bench_scale.py --sections maps losses
    python scripts/bench_scale.py --sections inference --bundle msd_rrw --inference-variants scores labels_first \
        --memory-limit-gb 14
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import edt
import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from common.losses import RegionWiseLoss, RWCombinedLoss, RWWeightedCrossEntropyLoss
from common.maps import rrw_map

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_losses import interleaved_medians  # noqa: E402  (scripts/ is not a package)

REPOSITORY = Path(__file__).resolve().parents[1]
ATLAS_SHAPE = (181, 217, 181)
GIB = 1024**3
OUT_OF_MEMORY_MARKERS = ("MemoryError", "Unable to allocate", "can't allocate memory", "Cannot allocate memory")


def voronoi_label(shape: tuple[int, ...], num_classes: int, regions_per_class: int = 3, seed: int = 0) -> np.ndarray:
    """Label of random Voronoi cells, each class owning ``regions_per_class`` cells (cheap at any class count)."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, dtype=bool)
    points = tuple(rng.integers(0, s, num_classes * regions_per_class) for s in shape)
    seeds[points] = True
    owner = np.zeros(shape, dtype=np.int64)
    owner[points] = np.arange(num_classes * regions_per_class) % num_classes
    nearest = ndimage.distance_transform_edt(~seeds, return_distances=False, return_indices=True)
    return owner[tuple(nearest)].astype(np.min_scalar_type(num_classes))


def merge_regions(atlas: np.ndarray, num_classes: int) -> np.ndarray:
    """Merge an atlas's regions ``1..R`` into ``num_classes - 1`` consecutive groups (background stays 0)."""
    regions = int(atlas.max())
    merged = 1 + (atlas.astype(np.int64) - 1) * (num_classes - 1) // regions
    return np.where(atlas > 0, merged, 0).astype(np.min_scalar_type(num_classes))


def bench_maps(atlas_path: str | None, class_counts: list[int], repeats: int, quick: bool, threads: int) -> None:
    if atlas_path:
        atlas = np.ascontiguousarray(np.asarray(nib.load(atlas_path).dataobj))
        source = f"AAL atlas {Path(atlas_path).name} {'x'.join(map(str, atlas.shape))}, regions merged to C classes"
    else:
        shape = tuple(s // 2 for s in ATLAS_SHAPE) if quick else ATLAS_SHAPE
        atlas = voronoi_label(shape, 117)
        source = f"synthetic Voronoi label {'x'.join(map(str, shape))} (no --atlas)"
    print(f"\n## Maps: {source}; EDT threads {threads}, median of {repeats} rounds")
    print(
        "| C | 1 EDT call (s) | compact (s) | compact / EDT | <= 1.5x | dense (s) | dense / compact "
        "| compact bytes/voxel | dense bytes/voxel | compact == own class of dense |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for num_classes in class_counts:
        label = atlas if num_classes == int(atlas.max()) + 1 else merge_regions(atlas, num_classes)
        compact = rrw_map(label, num_classes, compact=True)
        dense = rrw_map(label, num_classes)
        own = np.take_along_axis(dense, label[None].astype(np.intp), axis=0)[0]
        equal = bool(np.array_equal(compact, own))
        compact_bytes, dense_bytes = compact.nbytes / label.size, dense.nbytes / label.size
        del dense, own
        shifted = label + label.dtype.type(1)  # every class labelled: edt counts 0 as background, RRW does not
        medians = interleaved_medians(
            {
                "edt": lambda label=shifted: edt.edt(label, black_border=False, parallel=threads),
                "compact": lambda label=label, c=num_classes: rrw_map(label, c, threads=threads, compact=True),
                "dense": lambda label=label, c=num_classes: rrw_map(label, c, threads=threads),
            },
            repeats,
        )
        ratio = medians["compact"] / medians["edt"]
        speed_up = medians["dense"] / medians["compact"]
        print(
            f"| {num_classes} | {medians['edt']:.3f} | {medians['compact']:.3f} | {ratio:.2f} | "
            f"{'yes' if ratio <= 1.5 else 'NO'} | {medians['dense']:.3f} | {speed_up:.1f}x "
            f"| {compact_bytes:.0f} | {dense_bytes:.0f} | {equal} |",
            flush=True,
        )


def bench_losses(batch: int, num_classes: int, side: int, repeats: int) -> None:
    spatial = (side,) * 3
    labels_np = [voronoi_label(spatial, num_classes, seed=b) for b in range(batch)]
    labels = torch.from_numpy(np.stack(labels_np).astype(np.int64))[:, None]
    compact_map = torch.from_numpy(np.stack([rrw_map(lab, num_classes, compact=True) for lab in labels_np]))[:, None]
    dense_map = torch.from_numpy(np.stack([rrw_map(lab, num_classes) for lab in labels_np]))
    compact_target = torch.cat([labels.float(), compact_map], dim=1)
    dense_target = torch.cat([labels.float(), dense_map], dim=1)
    torch.manual_seed(0)
    logits = torch.randn(batch, num_classes, *spatial, requires_grad=True)

    def step(loss: torch.nn.Module, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits.grad = None
        value = loss(logits, target)
        value.backward()
        return value.detach(), logits.grad

    def combined(compact: bool) -> RWCombinedLoss:
        loss = RWCombinedLoss("dice", "gradual", compact=compact)
        loss.set_epoch(50)
        return loss

    pairs = {
        "RegionWiseLoss": ((RegionWiseLoss(), dense_map), (RegionWiseLoss(compact=True), compact_target)),
        "RWCombinedLoss(dice, gradual)": ((combined(False), dense_target), (combined(True), compact_target)),
        "RWWeightedCrossEntropyLoss": (
            (RWWeightedCrossEntropyLoss(), dense_target),
            (RWWeightedCrossEntropyLoss(compact=True), compact_target),
        ),
    }
    shape = "x".join(map(str, (batch, num_classes, *spatial)))
    print(
        f"\n## RW losses forward+backward, logits {shape} (torch threads {torch.get_num_threads()}), "
        f"median of {repeats} rounds"
    )
    print(
        f"target bytes: dense map {dense_map.nbytes / GIB:.2f} GiB, [label, dense map] "
        f"{dense_target.nbytes / GIB:.2f} GiB, compact [label, map] {compact_target.nbytes / GIB:.2f} GiB"
    )
    print(
        "| loss | dense (s) | compact (s) | compact / dense | no slower (<= 1.05, timing noise) "
        "| abs. value diff | max grad diff / max grad |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, ((dense_loss, dense_in), (compact_loss, compact_in)) in pairs.items():
        dense_value, dense_gradient = (t.clone() for t in step(dense_loss, dense_in))
        compact_value, compact_gradient = step(compact_loss, compact_in)
        value_diff = float((dense_value - compact_value).abs())
        gradient_diff = float((dense_gradient - compact_gradient).abs().max() / dense_gradient.abs().max())
        del dense_gradient
        medians = interleaved_medians(
            {
                "dense": lambda loss=dense_loss, target=dense_in: step(loss, target),
                "compact": lambda loss=compact_loss, target=compact_in: step(loss, target),
            },
            repeats,
        )
        ratio = medians["compact"] / medians["dense"]
        print(
            f"| {name} | {medians['dense']:.2f} | {medians['compact']:.2f} | {ratio:.2f} | "
            f"{'yes' if ratio <= 1.05 else 'NO'} | {value_diff:.1e} | {gradient_diff:.1e} |",
            flush=True,
        )


def write_ct_like_volume(path: Path, shape: tuple[int, ...], spacing: tuple[float, ...]) -> nib.Nifti1Image:
    """Smooth int16 noise in a CT's value range, with a diagonal affine of ``spacing``."""
    rng = np.random.default_rng(0)
    coarse = rng.normal(0.0, 400.0, tuple(max(s // 16, 2) for s in shape))
    volume = ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse.shape, strict=True)], order=1)
    image = nib.Nifti1Image(volume[tuple(slice(0, s) for s in shape)].astype(np.int16), np.diag([*spacing, 1.0]))
    nib.save(image, path)
    return image


def initialised_checkpoint(config_file: Path, bundle_root: Path, num_classes: int) -> None:
    """Random weights of the config's ``network_def`` for ``num_classes`` at ``bundle_root/models/model.pt``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser.update({"num_classes": num_classes, "bundle_root": str(bundle_root)})
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    (bundle_root / "models").mkdir(parents=True)
    torch.save(network.state_dict(), bundle_root / "models" / "model.pt")


def _address_space_limit(limit_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return apply


def run_inference(
    config_file: Path,
    bundle_root: Path,
    input_dir: Path,
    output_dir: Path,
    num_classes: int,
    limit_gb: float,
    options: list[str],
) -> tuple[int, float, float, str]:
    """Run the bundle's inference in a subprocess; return exit status, peak RSS (GiB), wall seconds, failure reason."""
    command = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(config_file),
        "--bundle_root", str(bundle_root),
        "--dataset_dir", str(input_dir),
        "--output_dir", str(output_dir),
        "--num_classes", str(num_classes),
        *options,
    ]  # fmt: skip
    environment = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))
    )
    log_path = bundle_root / "inference.log"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=bundle_root,
            preexec_fn=_address_space_limit(int(limit_gb * GIB)),
        )
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    log_text = log_path.read_text()
    if any(marker in log_text for marker in OUT_OF_MEMORY_MARKERS):
        reason = "out of memory under the limit"
    else:
        reason = " / ".join(line.strip() for line in log_text.splitlines()[-3:])
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024 / GIB, seconds, reason


def bench_inference(
    bundle: str,
    class_counts: list[int],
    shape: tuple[int, ...],
    spacing: tuple[float, ...],
    limit_gb: float,
    variant_names: list[str],
) -> None:
    config_file = REPOSITORY / "bundles" / bundle / "configs" / "inference.yaml"
    print(
        f"\n## Folder inference of {bundle} on a {'x'.join(map(str, shape))} volume ({spacing} mm), "
        f"address-space limit {limit_gb:g} GiB per run, torch threads {torch.get_num_threads()}"
    )
    options = {"scores": [], "labels_first": ["--labels_first", "True"]}  # labels_first: slice-wise bundles only
    variants = {name: options[name] for name in variant_names}
    print("| C | inference | exit | peak RSS (GiB) | wall (s) | geometry kept | labels != scores | note |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as workdir:
        input_dir = Path(workdir) / "images"
        input_dir.mkdir()
        image = write_ct_like_volume(input_dir / "ct.nii.gz", shape, spacing)
        for num_classes in class_counts:
            bundle_root = Path(workdir) / f"bundle_C{num_classes}"
            initialised_checkpoint(config_file, bundle_root, num_classes)
            for index, (variant, options) in enumerate(variants.items()):
                output_dir = Path(workdir) / f"predictions_C{num_classes}_{index}"
                status, peak_gb, seconds, reason = run_inference(
                    config_file, bundle_root, input_dir, output_dir, num_classes, limit_gb, options
                )
                predictions = sorted(output_dir.rglob("*.nii*")) if output_dir.is_dir() else []
                kept = bool(predictions) and all(
                    nib.load(p).shape[:3] == image.shape and np.allclose(nib.load(p).affine, image.affine, atol=1e-4)
                    for p in predictions
                )
                labels = np.asanyarray(nib.load(predictions[0]).dataobj) if len(predictions) == 1 else None
                if index == 0:
                    reference = labels  # the first variant's labels; None when it failed
                compared = labels is not None and reference is not None and index > 0
                differ = f"{(labels != reference).mean():.2%}" if compared else "-"
                note = "" if status == 0 else f"failed: {reason[-160:]}"
                print(
                    f"| {num_classes} | {variant} | {status} | {peak_gb:.2f} | {seconds:.0f} | {kept} | {differ} "
                    f"| {note} |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--atlas", help="label NIfTI of the AAL atlas (117 classes); synthetic stand-in without it")
    parser.add_argument(
        "--sections", nargs="+", choices=("maps", "losses", "inference"), default=["maps", "losses", "inference"]
    )
    parser.add_argument("--classes", type=int, nargs="+", default=[4, 20, 117], help="class counts of maps/inference")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="EDT threads (maps)")
    parser.add_argument("--quick", action="store_true", help="half-size maps, 64^3 losses, 64x64x16 inference")
    parser.add_argument("--bundle", default="brain_explog", help="bundle whose inference config is run")
    parser.add_argument("--memory-limit-gb", type=float, default=8.0, help="address-space limit per inference run")
    parser.add_argument(
        "--inference-variants",
        nargs="+",
        default=["scores"],
        choices=["scores", "labels_first"],
        help="scores: the bundle's default; labels_first: the slice-wise bundles' --labels_first True",
    )
    parser.add_argument("--inference-slices", type=int, default=61, help="slices of the 512x512 inference volume")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats

    if "maps" in args.sections:
        bench_maps(args.atlas, args.classes, repeats, args.quick, args.threads)
    if "losses" in args.sections:
        bench_losses(2, 20, 64 if args.quick else 128, max(repeats // 2, 2))
    if "inference" in args.sections:
        shape = (64, 64, 16) if args.quick else (512, 512, args.inference_slices)
        spacing, limit = (0.7, 0.7, 5.0), args.memory_limit_gb
        bench_inference(args.bundle, args.classes, shape, spacing, limit, args.inference_variants)


if __name__ == "__main__":
    main()

"""Training throughput of an RW-loss bundle against its Dice pairing on the same data, side by side in one process.

Builds the bundles' own training pipelines (``configs/train.yaml``: data, nnU-Net 2D augmentation, network, deep
supervision, optimiser) on a synthetic ACDC-like release and measures, interleaved repeat by repeat:

- ``data``: batches per second of the training data loader alone (sampling + augmentation + target assembly);
- ``train``: training iterations per second of the bundle's ``SupervisedTrainer`` (data + forward + backward + step).

Variants: ``dice`` (``acdc17_dice``: reads the label, no map), ``rw-moved`` (``acdc17_rrw`` as shipped: RRW maps
computed once per 3D label, cached, resampled with the label under augmentation) and ``rw-recomputed`` (the RRW
map computed on every augmented 2D patch instead, as the authors' code does in its loss). The one-off map cost
appears in the cache fill time. Reports medians over repeats and each variant's ratio to ``dice``.

    python scripts/bench_training.py                       # full-size network, about 10 minutes on 2 cores
    python scripts/bench_training.py --quick               # narrow network and fewer iterations, a smoke run
    python scripts/bench_training.py --dense-maps          # dense (C, H, W) maps instead of compact ones
    python scripts/bench_training.py --filters 8 16 32 32 32 32   # real-size data, a cheap network: data-bound
"""

from __future__ import annotations

import argparse
import runpy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from common.data.synthetic_acdc import write_acdc_dataset

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"dice": "acdc17_dice", "rw-moved": "acdc17_rrw", "rw-recomputed": "acdc17_rrw"}
RECOMPUTED = {  # the map made after the spatial augmentation, on each 2D patch's label (target), in voxel units
    "train#map_transforms": [],
    "label_keys": ["label"],
    "train#rw_map#keys": "target",
    "train#rw_map#spacing_from_affine": False,
    "train#sampling": "$@train#slice_sampling + @train#spatial_augmentation + [@train#rw_map, @train#map_to_target]"
    " + @train#intensity_augmentation + @train#mirroring",
    "train#map_to_target": {"_target_": "ConcatItemsd", "keys": ["target", "rw_map"], "name": "target"},
}


def dense_map_overrides(parser: ConfigParser) -> dict[str, Any]:
    """Overrides that train on dense ``(C, H, W)`` maps: ``compact`` dropped, ``RegionWiseLoss`` reading the map."""
    loss = {key: value for key, value in parser["loss"]["loss"].items() if key != "compact"}
    rw_map = {key: value for key, value in parser["train"]["rw_map"].items() if key != "compact"}
    overrides: dict[str, Any] = {"loss#loss": loss, "train#rw_map": rw_map}
    if loss["_target_"] == "common.losses.RegionWiseLoss":
        overrides["label_keys"] = ["rw_map"]  # the dense map alone is its target
    return overrides


def build(variant: str, settings: dict[str, Any], dense_maps: bool) -> tuple[ConfigParser, float]:
    """The variant's parsed config and the seconds its training cache took to fill (maps included)."""
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / VARIANTS[variant] / "configs" / "train.yaml"))
    parser.update(settings)
    if variant.startswith("rw") and dense_maps:
        parser.update(dense_map_overrides(parser))
    if variant == "rw-recomputed":
        parser.update(RECOMPUTED)
        if dense_maps:
            parser.update({"train#map_to_target#keys": ["rw_map"]})
    parser.update({"train#trainer#train_handlers": "@train#extra_handlers"})  # no validation, saving or logging
    start = time.perf_counter()
    parser.get_parsed_content("train#dataset")
    return parser, time.perf_counter() - start


def time_data(parser: ConfigParser, batches: int) -> float:
    """Batches per second of the training data loader."""
    loader = parser.get_parsed_content("train#dataloader")
    start, done = time.perf_counter(), 0
    while done < batches:
        for _ in loader:
            done += 1
            if done == batches:
                break
    return batches / (time.perf_counter() - start)


def time_training(parser: ConfigParser, iterations: int) -> float:
    """Training iterations per second of one ``iterations``-long epoch of the bundle's trainer."""
    trainer = parser.get_parsed_content("train#trainer")
    start = time.perf_counter()
    trainer.run()
    return iterations / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="narrow network, small volumes, few iterations")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, help="iterations (and data batches) per measurement")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader workers (0: in the main process)")
    parser.add_argument("--dense-maps", action="store_true", help="dense (C, H, W) RW maps instead of compact")
    parser.add_argument("--subjects", type=int, default=6, help="synthetic subjects (half of them train)")
    parser.add_argument("--filters", type=int, nargs=6, help="network filters (default: the bundle's 32-512)")
    args = parser.parse_args(argv)
    iterations = args.iterations or (4 if args.quick else 10)
    shape = (128, 112, 8) if args.quick else (256, 216, 10)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    with tempfile.TemporaryDirectory() as folder:
        release = write_acdc_dataset(Path(folder) / "acdc", num_subjects=args.subjects, seed=0, shape=shape)
        if runpy.run_path(str(REPO / "scripts" / "prepare_acdc.py"))["main"]([str(release)]) != 0:
            raise RuntimeError("prepare_acdc.py failed on the synthetic release")
        settings: dict[str, Any] = {
            "dataset_dir": str(release),
            "bundle_root": str(Path(folder) / "run"),
            "epochs": 1,
            "iterations_per_epoch": iterations,
            "num_workers": args.num_workers,
        }
        if args.quick:
            settings.update({"filters": [8, 16, 32, 32, 32, 32], "patch_size": [96, 96], "samples_per_volume": 4})
        if args.filters:
            settings["filters"] = args.filters
        built = {variant: build(variant, settings, args.dense_maps) for variant in VARIANTS}
        for config, _ in built.values():  # warm-up: allocator, threads, first-call costs
            time_data(config, 1)
            time_training(config, iterations)
        rates: dict[str, dict[str, list[float]]] = {variant: {"data": [], "train": []} for variant in VARIANTS}
        for _ in range(args.repeats):
            for variant, (config, _) in built.items():
                rates[variant]["data"].append(time_data(config, iterations))
                rates[variant]["train"].append(time_training(config, iterations))
    batch = f"{settings.get('samples_per_volume', 8) * 2} slices of {settings.get('patch_size', [224, 224])}"
    network = settings.get("filters", "32-512 (the bundle's)")
    print(
        f"ACDC-like volumes {shape}, network filters {network}, batches of {batch}, "
        f"{iterations} iterations per measurement, "
        f"{args.repeats} repeats, {args.num_workers} workers, {'dense' if args.dense_maps else 'compact'} maps, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(f"{'variant':<15} {'cache fill s':>12} {'data batch/s':>13} {'x dice':>7} {'train it/s':>11} {'x dice':>7}")
    medians = {name: {kind: statistics.median(values) for kind, values in rates[name].items()} for name in rates}
    for variant in VARIANTS:
        data, train = medians[variant]["data"], medians[variant]["train"]
        print(
            f"{variant:<15} {built[variant][1]:>12.2f} {data:>13.2f} {data / medians['dice']['data']:>7.2f} "
            f"{train:>11.3f} {train / medians['dice']['train']:>7.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

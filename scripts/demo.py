"""Run the acdc17_rrw bundle end to end on synthetic data: make data, prepare, train, evaluate, segment a folder.

Usage:
    python scripts/demo.py [--output-dir demo_output] [--epochs 60] [--measure-maps]

Nothing needs downloading: a small synthetic ACDC-like release is written in the raw ACDC layout, then the same
commands a user runs on the real release are run on it (each is printed before it runs). The network is
narrowed and the learning rate raised so that the model learns something in a few CPU minutes; the bundle's
defaults are the paper's settings. ``--measure-maps`` also profiles one training epoch with and without the
cached RW maps and prints the share of the epoch spent in map code.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import json
import pstats
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common.data.synthetic_acdc import write_acdc_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "acdc17_rrw"
MAP_FUNCTIONS = ("rrw_map", "boundary_map", "active_contour_map")

# demo-sized settings, passed as ordinary command-line overrides to every bundle command that needs them
NETWORK_OVERRIDES = {"patch_size": [64, 64], "filters": [16, 32, 64, 128, 256, 256]}
TRAINING_OVERRIDES = {
    "learning_rate": 0.002,
    "batch_size": 2,
    "samples_per_volume": 6,
    "iterations_per_epoch": 3,  # one pass over the 5 training volumes (the bundle's nnU-Net epoch is 250)
    "num_workers": 0,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "demo_output", help="must not exist yet")
    parser.add_argument("--subjects", type=int, default=10, help="synthetic subjects (half train, half validate)")
    # 60 x 3 iterations: the RV (bright like the LV, told apart by the myocardium ring around the LV) needs about 180
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure-maps", action="store_true", help="profile the share of an epoch in map code")
    return parser.parse_args()


def as_flags(overrides: dict[str, object]) -> list[str]:
    """Command-line overrides for monai.bundle: strings as they are, other values as compact JSON."""
    return [
        item
        for key, value in overrides.items()
        for item in (f"--{key}", value if isinstance(value, str) else json.dumps(value, separators=(",", ":")))
    ]


def run_step(title: str, command: list[str], allowed_codes: tuple[int, ...] = (0,)) -> float:
    print(f"\n=== {title}\n$ cd {BUNDLE.relative_to(REPO_ROOT)} && {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    code = subprocess.run(command, cwd=BUNDLE).returncode
    if code not in allowed_codes:
        sys.exit(f"demo stopped: '{title}' exited with status {code}")
    return time.perf_counter() - start


def copy_validation_images(datalist_file: Path, dataset_dir: Path, destination: Path) -> int:
    validation = json.loads(datalist_file.read_text())["validation"]
    for case in validation:
        target = destination / Path(case["image"]).relative_to("training")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(dataset_dir / case["image"], target)
    return len(validation)


def map_share_of_one_epoch(overrides: dict[str, object], cache_rate: float, scratch: Path) -> tuple[float, float]:
    """Profile one training epoch (validation off) and return (seconds in map functions, epoch seconds)."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(BUNDLE / "configs" / "train.yaml"),
        workflow_type="train",
        **overrides,
        epochs=1,
        val_interval=1000,
        cache_rate=cache_rate,
        bundle_root=str(scratch),
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")  # fills the cache outside the profile
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(trainer.run)
    epoch_seconds = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats
    map_seconds = sum(
        cumulative
        for (filename, _, function), (_, _, _, cumulative, _) in stats.items()
        if filename.endswith(str(Path("common", "maps.py"))) and function in MAP_FUNCTIONS
    )
    return map_seconds, epoch_seconds


def main() -> int:
    args = parse_args()
    output = args.output_dir.resolve()
    if output.exists():
        print(f"error: {output} already exists; remove it or pass another --output-dir", file=sys.stderr)
        return 2
    raw_dir, models_dir, train_dir = output / "acdc_raw", output / "models", output / "train"
    to_segment, segmentations = output / "to_segment", output / "segmentations"
    python = sys.executable
    timings = {}

    print(f"=== synthetic ACDC-like release ({args.subjects} subjects) -> {raw_dir}")
    start = time.perf_counter()
    write_acdc_dataset(
        raw_dir,
        num_subjects=args.subjects,
        seed=args.seed,
        shape=(64, 64, 8),
        spacing=(1.25, 1.25, 10.0),
        with_cine=True,
    )
    timings["data"] = time.perf_counter() - start

    timings["prepare"] = run_step(
        "prepare the datalist (50/50 subject split)",
        [python, str(REPO_ROOT / "scripts" / "prepare_acdc.py"), str(raw_dir)],
    )
    bundle_run = [python, "-m", "monai.bundle", "run", "--logging_file", "configs/logging.conf"]
    locations = {"dataset_dir": str(raw_dir), "ckpt_dir": str(models_dir), "output_dir": str(train_dir)}
    train_flags = as_flags({**locations, **NETWORK_OVERRIDES, **TRAINING_OVERRIDES, "epochs": args.epochs})
    timings["train"] = run_step(
        "train", [*bundle_run, "--config_file", "configs/train.yaml", *train_flags, "--seed", str(args.seed)]
    )
    timings["evaluate"] = run_step(
        "evaluate the best checkpoint on the validation volumes",
        [*bundle_run, "--config_file", "['configs/train.yaml','configs/evaluate.yaml']", *train_flags],
    )
    copied = copy_validation_images(raw_dir / "datalist.json", raw_dir, to_segment)
    inference_flags = as_flags(
        {"dataset_dir": str(to_segment), "output_dir": str(segmentations), "ckpt_dir": str(models_dir)}
        | NETWORK_OVERRIDES
    )
    timings["inference"] = run_step(
        f"segment a folder ({copied} volumes)",
        [*bundle_run, "--config_file", "configs/inference.yaml", *inference_flags],
    )

    with open(train_dir / "evaluation" / "case_metrics_summary.csv") as stream:
        summary = list(csv.DictReader(stream))
    print("\n=== where everything went")
    for label, path in [
        ("raw synthetic release", raw_dir),
        ("datalist", raw_dir / "datalist.json"),
        ("best / final checkpoints", models_dir),
        ("TensorBoard logs", train_dir),
        ("validation Dice/HD per epoch", train_dir / "validation_metrics.csv"),
        ("per-case evaluation tables", train_dir / "evaluation"),
        ("segmented folder (input)", to_segment),
        ("segmentations (output)", segmentations),
    ]:
        print(f"  {label:30s} {path}")
    print("validation (mean +- std over cases):")
    for row in summary:
        print(
            f"  {row['structure']:12s} Dice {float(row['dice_mean']):.3f} +- {float(row['dice_std']):.3f}, "
            f"HD {float(row['hd_mean']):.1f} +- {float(row['hd_std']):.1f} mm, HD95 {float(row['hd95_mean']):.1f} mm"
        )
    print("seconds: " + ", ".join(f"{step} {seconds:.0f}" for step, seconds in timings.items()))

    if args.measure_maps:
        overrides = {"dataset_dir": str(raw_dir), **NETWORK_OVERRIDES, **TRAINING_OVERRIDES}
        for cache_rate in (1.0, 0.0):
            map_seconds, epoch_seconds = map_share_of_one_epoch(
                overrides, cache_rate, output / f"measure_cache{cache_rate:g}"
            )
            print(
                f"cache_rate={cache_rate:g}: one training epoch {epoch_seconds:.2f} s, of which map code "
                f"{map_seconds:.3f} s ({100 * map_seconds / epoch_seconds:.1f} %)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

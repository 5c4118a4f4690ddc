"""Run the acdc17_rrw bundle end to end on synthetic data: make data, prepare, train, evaluate, segment a folder.

Usage:
    python scripts/demo.py [--output-dir demo_output] [--epochs 60] [--val-interval 5] [--measure-maps]

Nothing needs downloading: a small synthetic ACDC-like release is written in the raw ACDC layout, then the same
commands a user runs on the real release are run on it (each is printed before it runs). The network is
narrowed and the learning rate raised so that the model learns something in a few CPU minutes; the bundle's
defaults are the paper's settings. Training validates every ``--val-interval`` epochs; the final weights
(``models/model.pt``) are then scored on every slice of the held-out patients and segment a folder. The demo
prints the training and validation seconds and writes ``demo_result.png`` into the output folder: the training
curve and one segmented held-out slice over its image. Everything goes below ``--output-dir``, which must not
exist yet. ``--measure-maps`` also profiles one training epoch with and without the cached RW maps and prints
the share of the epoch spent in map code.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import json
import pstats
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.data.nifti import load_volume
from common.data.synthetic_acdc import write_acdc_dataset
from common.errors import EXIT_FAILURE, EXIT_USER_ERROR, UserError, install_error_hook
from common.evaluation.metrics import spacing_from_affine
from common.evaluation.plots import plot_run_summary

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "acdc17_rrw"
MAP_FUNCTIONS = ("rrw_map", "boundary_map", "active_contour_map")
FIGURE_NAME = "demo_result.png"
# common.training.metrics.SegmentationMetric(log_time=True): one line per validation run of the training
VALIDATION_LINE = re.compile(r"validation of epoch (\d+): \d+ case\(s\) in ([0-9.]+) s")

# demo-sized settings, passed as ordinary command-line overrides to every bundle command that needs them
NETWORK_OVERRIDES = {"patch_size": [64, 64], "filters": [16, 32, 64, 128, 256, 256]}
TRAINING_OVERRIDES = {
    "learning_rate": 0.002,
    "batch_size": 2,
    "samples_per_volume": 6,
    "iterations_per_epoch": 3,  # one pass over the 5 training volumes (the bundle's nnU-Net epoch is 250)
    "num_workers": 0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "demo_output", help="must not exist yet")
    parser.add_argument("--subjects", type=int, default=10, help="synthetic subjects (half train, half validate)")
    # 60 x 3 iterations: the RV (bright like the LV, told apart by the myocardium ring around the LV) needs about 180
    parser.add_argument("--epochs", type=int, default=60)
    # each validation scores all 10 held-out volumes, about two thirds of a training epoch: every epoch, validation
    # took 40 % of the training; every 5th epoch, 12 % (README)
    parser.add_argument("--val-interval", type=int, default=5, help="validate every N epochs during training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure-maps", action="store_true", help="profile the share of an epoch in map code")
    args = parser.parse_args(argv)
    for option, value, least in (("--epochs", args.epochs, 1), ("--val-interval", args.val_interval, 1)):
        if value < least:
            raise UserError(f"{option} {value}: must be at least {least}")
    if args.subjects < 2:
        raise UserError(f"--subjects {args.subjects}: must be at least 2 (even subjects train, odd ones are held out)")
    return args


def as_flags(overrides: dict[str, object]) -> list[str]:
    """Command-line overrides for monai.bundle: strings as they are, other values as compact JSON."""
    return [
        item
        for key, value in overrides.items()
        for item in (f"--{key}", value if isinstance(value, str) else json.dumps(value, separators=(",", ":")))
    ]


def run_step(title: str, command: list[str], lines: list[str] | None = None) -> float:
    """Run one step from the bundle folder, its output passed on (and kept in ``lines``); stop the demo on failure.

    A step that fails ends with its own ``error:`` line (common.errors), so the demo exits with the step's status
    without printing after it.
    """
    print(f"\n=== {title}\n$ cd {BUNDLE.relative_to(REPO_ROOT)} && {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    with subprocess.Popen(command, cwd=BUNDLE, stdout=subprocess.PIPE, text=True, bufsize=1) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            if lines is not None:
                lines.append(line)
    code = process.returncode
    if code in (EXIT_FAILURE, EXIT_USER_ERROR):
        sys.exit(code)
    if code != 0:
        print(f"error: the step '{title}' ended with status {code}", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
    return time.perf_counter() - start


def validation_seconds(log_lines: list[str]) -> dict[int, float]:
    """Epoch to seconds of each validation run, from the training's log."""
    return {
        int(match.group(1)): float(match.group(2))
        for match in map(VALIDATION_LINE.search, log_lines)
        if match is not None
    }


def scalar_curve(accumulator: EventAccumulator, tag: str) -> tuple[list[int], list[float]]:
    """``(epochs, values)`` of one epoch-level scalar of the TensorBoard logs (empty when it was never logged)."""
    events = accumulator.Scalars(tag) if tag in accumulator.Tags()["scalars"] else []
    return [event.step for event in events], [event.value for event in events]


def write_figure(
    train_dir: Path, raw_dir: Path, to_segment: Path, segmentations: Path, output: Path, val_interval: int
) -> Path:
    """The training curve (TensorBoard logs) and the held-out slice of the first case with most ground truth."""
    accumulator = EventAccumulator(str(train_dir)).Reload()
    case = json.loads((raw_dir / "datalist.json").read_text())["validation"][0]
    relative = Path(case["image"]).relative_to("training")
    image, affine = load_volume(to_segment / relative)
    label, _ = load_volume(raw_dir / case["label"])
    prediction, _ = load_volume(segmentations / relative)
    axis = int(np.argmax(spacing_from_affine(affine)))  # the short-axis slices: the coarsest spacing
    index = int(np.argmax(np.moveaxis(label > 0, axis, 0).reshape(label.shape[axis], -1).sum(axis=1)))
    return plot_run_summary(
        scalar_curve(accumulator, "train_loss"),
        scalar_curve(accumulator, "val_mean_dice"),
        *(np.take(np.asarray(volume), index, axis=axis) for volume in (image, label, prediction)),
        output / FIGURE_NAME,
        num_classes=4,
        title=f"acdc17_rrw demo: validation every {val_interval} epochs; {relative.name}, slice {index}, "
        "segmented with the final weights",
    )


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


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    output = args.output_dir.resolve()
    if output.exists() or output.is_symlink():
        print(f"error: {output}: already exists; remove it or pass another --output-dir", file=sys.stderr)
        return EXIT_USER_ERROR
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
    train_log: list[str] = []
    timings["train"] = run_step(
        f"train {args.epochs} epochs, validating every {args.val_interval}",
        [
            *bundle_run,
            "--config_file",
            "configs/train.yaml",
            *train_flags,
            "--val_interval",
            str(args.val_interval),
            "--seed",
            str(args.seed),
        ],
        train_log,
    )
    validations = validation_seconds(train_log)
    timings["evaluate"] = run_step(
        "score the final weights (models/model.pt) on every slice of the held-out patients",
        [*bundle_run, "--config_file", "['configs/train.yaml','configs/evaluate.yaml']", *train_flags],
    )
    copied = copy_validation_images(raw_dir / "datalist.json", raw_dir, to_segment)
    inference_flags = as_flags(
        {"dataset_dir": str(to_segment), "output_dir": str(segmentations), "ckpt_dir": str(models_dir)}
        | NETWORK_OVERRIDES
    )
    timings["inference"] = run_step(
        f"segment a folder ({copied} volumes) with the final weights",
        [*bundle_run, "--config_file", "configs/inference.yaml", *inference_flags],
    )
    figure = write_figure(train_dir, raw_dir, to_segment, segmentations, output, args.val_interval)

    with open(train_dir / "evaluation" / "case_metrics_summary.csv") as stream:
        summary = list(csv.DictReader(stream))
    print("\n=== where everything went")
    for label, path in [
        ("raw synthetic release", raw_dir),
        ("datalist", raw_dir / "datalist.json"),
        ("final weights", models_dir / "model.pt"),
        ("TensorBoard logs", train_dir),
        ("validation Dice/HD per epoch", train_dir / "validation_metrics.csv"),
        ("final weights' evaluation", train_dir / "evaluation"),
        ("segmented folder (input)", to_segment),
        ("segmentations (output)", segmentations),
        ("training curve + a slice (PNG)", figure),
    ]:
        print(f"  {label:30s} {path}")
    print(f"validated during training after epochs {', '.join(map(str, validations)) or '(none)'}")
    print(f"final weights on the {copied} held-out volumes, every slice (mean +- std over cases):")
    for row in summary:
        print(
            f"  {row['structure']:12s} Dice {float(row['dice_mean']):.3f} +- {float(row['dice_std']):.3f}, "
            f"HD {float(row['hd_mean']):.1f} +- {float(row['hd_std']):.1f} mm, HD95 {float(row['hd95_mean']):.1f} mm"
        )
    print("seconds: " + ", ".join(f"{step} {seconds:.0f}" for step, seconds in timings.items()))
    validation_total = sum(validations.values())
    print(
        f"training {timings['train']:.0f} s, of which validation {validation_total:.1f} s "
        f"({len(validations)} runs, {100 * validation_total / timings['train']:.0f} %)"
    )

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
    install_error_hook()  # anything unexpected still ends with its cause as the last line
    sys.exit(main())

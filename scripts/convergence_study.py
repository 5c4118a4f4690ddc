"""Convergence study of the RW paper (its Figure 5): N seeds x {RRW, RW-Boundary} trainings of a bundle.

Every run is a ``python -m monai.bundle run`` subprocess of the bundle's ``configs/train.yaml`` with
``--map_type``, ``--epochs``, ``--seed``, ``--dataset_dir`` and ``--bundle_root <study>/<map_type>/seed<k>``
(checkpoints in ``models/``, the per-epoch validation table ``eval/validation_metrics.csv``, the log in
``train.log``). Runs whose validation table already reaches the last epoch are reused, not retrained, so a study
can be extended with more seeds. Afterwards the script writes, in the study folder:

- ``final_dice.csv``: the final validation mean Dice of every run,
- ``final_dice_ecdf.png``: its empirical CDF per map type (Figure 5),
- ``validation_dice_curves.png``: validation mean Dice per epoch of every run,
- with ``--diagnostic``: ``instability_curves.png``, the per-epoch fraction of voxels with more than one negative
  RW-gradient component (``common.diagnostics.InstabilityDiagnosticHandler`` added to the trainer).

Failed runs are reported at the end (exit status 1); the others still enter the figures.

    python scripts/convergence_study.py --bundle bundles/acdc17_rrw --dataset-dir /data/ACDC/database \
        --study-dir studies/acdc --seeds 10 --epochs 50 --diagnostic
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common.data import atomic_output
from common.engines import ensure_absent
from common.evaluation import write_rows_csv
from common.plots import plot_curves, plot_ecdf

METRICS_FILE = Path("eval") / "validation_metrics.csv"
DIAGNOSTIC_FILE = Path("eval") / "instability.csv"
DIAGNOSTIC_CONFIG = """\
# appended to the trainer's handlers by scripts/convergence_study.py --diagnostic
"+train#handlers":
  - _target_: common.diagnostics.InstabilityDiagnosticHandler
    filename: "$@output_dir + '/instability.csv'"
    overwrite: "@overwrite"
"""


@dataclass(frozen=True)
class Run:
    map_type: str
    seed: int
    directory: Path


def read_column(path: Path, column: str) -> tuple[list[int], list[float]]:
    """Epochs and one column of a per-epoch CSV; raises ValueError naming the file when it is unusable."""
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        if column not in (reader.fieldnames or ()) or "epoch" not in (reader.fieldnames or ()):
            raise ValueError(f"{path}: no 'epoch' and '{column}' columns")
        rows = list(reader)
    try:
        return [int(row["epoch"]) for row in rows], [float(row[column]) for row in rows]
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def is_complete(run: Run, epochs: int, metric: str) -> bool:
    path = run.directory / METRICS_FILE
    if not path.exists():
        return False
    try:
        recorded, _ = read_column(path, metric)
    except ValueError:
        return False
    return bool(recorded) and recorded[-1] >= epochs


def training_command(args: argparse.Namespace, run: Run, config_files: list[str]) -> list[str]:
    bundle = args.bundle.resolve()
    command = [sys.executable, "-m", "monai.bundle", "run"]
    command += ["--config_file", repr(config_files) if len(config_files) > 1 else config_files[0]]
    command += ["--logging_file", str(bundle / "configs" / "logging.conf")]
    command += ["--bundle_root", str(run.directory.resolve()), "--dataset_dir", str(args.dataset_dir.resolve())]
    command += ["--map_type", run.map_type, "--epochs", str(args.epochs), "--seed", str(run.seed)]
    command += ["--overwrite", str(args.overwrite)]  # "True"/"False": fire reads "false" as a (truthy) string
    for override in args.override:
        key, _, value = override.partition("=")
        command += [f"--{key}", value]
    return command


def train(args: argparse.Namespace, run: Run, config_files: list[str]) -> str | None:
    """Train one run; returns an error message or None."""
    if run.directory.exists() and not args.overwrite:
        return f"{run.directory}: incomplete earlier run; pass --overwrite to train it again"
    run.directory.mkdir(parents=True, exist_ok=True)
    command = training_command(args, run, config_files)
    log_path = run.directory / "train.log"
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        completed = subprocess.run(command, cwd=args.bundle, stdout=log, stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        return f"{run.directory}: training failed (exit {completed.returncode}), see {log_path}: " + " | ".join(tail)
    if not is_complete(run, args.epochs, args.metric):
        return f"{run.directory}: training ended without a validation row for epoch {args.epochs}"
    return None


def collect(runs: list[Run], metric: str, file: Path) -> tuple[dict[Run, tuple[list[int], list[float]]], list[str]]:
    curves, errors = {}, []
    for run in runs:
        path = run.directory / file
        if not path.exists():
            continue
        try:
            curves[run] = read_column(path, metric)
        except (OSError, ValueError) as error:
            errors.append(str(error))
    return curves, errors


def write_figures(args: argparse.Namespace, runs: list[Run]) -> list[str]:
    curves, errors = collect(runs, args.metric, METRICS_FILE)
    rows = [
        {"map_type": run.map_type, "seed": run.seed, "epochs": epochs[-1], f"final_{args.metric}": values[-1]}
        for run, (epochs, values) in curves.items()
        if epochs
    ]
    if not rows:
        return [*errors, "no completed run to plot"]
    write_rows_csv(rows, args.study_dir / "final_dice.csv", list(rows[0]), overwrite=True)
    finals = {
        map_type: [row[f"final_{args.metric}"] for row in rows if row["map_type"] == map_type]
        for map_type in args.map_types
    }
    plot_ecdf(finals, args.study_dir / "final_dice_ecdf.png", xlabel=f"final {args.metric}", overwrite=True)
    plot_curves(
        {f"{run.map_type} seed {run.seed}": curve for run, curve in curves.items()},
        args.study_dir / "validation_dice_curves.png",
        ylabel=args.metric,
        overwrite=True,
    )
    if args.diagnostic:
        fractions, diagnostic_errors = collect(runs, "multi_negative_fraction", DIAGNOSTIC_FILE)
        errors += diagnostic_errors
        plot_curves(
            {f"{run.map_type} seed {run.seed}": curve for run, curve in fractions.items()},
            args.study_dir / "instability_curves.png",
            ylabel="voxels with >1 negative gradient component",
            overwrite=True,
        )
    for map_type, values in finals.items():
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            print(
                f"{map_type}: final {args.metric} over {len(finite)} runs: min {min(finite):.4f}, "
                f"median {statistics.median(finite):.4f}, max {max(finite):.4f}"
            )
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder holding configs/train.yaml")
    parser.add_argument("--dataset-dir", type=Path, required=True, help="prepared data set (with datalist.json)")
    parser.add_argument("--study-dir", type=Path, required=True, help="folder of the runs and figures")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per map type")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--map-types", nargs="+", default=["rrw", "boundary"], help="values of the bundle's map_type")
    parser.add_argument("--metric", default="val_mean_dice", help="column of eval/validation_metrics.csv")
    parser.add_argument("--diagnostic", action="store_true", help="log the instability diagnostic while training")
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="extra bundle override (repeat)"
    )
    parser.add_argument("--plot-only", action="store_true", help="only rebuild the figures from existing runs")
    parser.add_argument("--dry-run", action="store_true", help="print the training commands and stop")
    parser.add_argument("--overwrite", action="store_true", help="retrain incomplete runs, replace the figures")
    args = parser.parse_args(argv)

    if not (args.bundle / "configs" / "train.yaml").is_file():
        parser.error(f"{args.bundle}: no configs/train.yaml")
    for override in args.override:
        if "=" not in override:
            parser.error(f"--override expects KEY=VALUE, got {override!r}")
    runs = [
        Run(map_type, seed, args.study_dir / map_type / f"seed{seed}")
        for map_type in args.map_types
        for seed in range(args.seeds)
    ]
    outputs = ["final_dice.csv", "final_dice_ecdf.png", "validation_dice_curves.png", "instability_curves.png"]
    try:
        replace = args.overwrite or args.plot_only or args.dry_run
        ensure_absent(*[args.study_dir / name for name in outputs], overwrite=replace)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    config_files = [str((args.bundle / "configs" / "train.yaml").resolve())]
    if args.diagnostic:
        diagnostic_config = args.study_dir / "instability_handler.yaml"
        if not args.dry_run:
            with atomic_output(diagnostic_config) as temporary:
                temporary.write_text(DIAGNOSTIC_CONFIG, encoding="utf-8")
        config_files.append(str(diagnostic_config.resolve()))

    failures = []
    if not args.plot_only:
        for index, run in enumerate(runs, start=1):
            if args.dry_run:
                print(" ".join(training_command(args, run, config_files)))
                continue
            if is_complete(run, args.epochs, args.metric):
                print(f"[{index}/{len(runs)}] {run.directory}: complete, reused")
                continue
            print(f"[{index}/{len(runs)}] training {run.map_type} seed {run.seed} ...", flush=True)
            error = train(args, run, config_files)
            if error:
                failures.append(error)
    if args.dry_run:
        return 0
    failures += write_figures(args, runs)
    if failures:
        print(f"{len(failures)} problems:", file=sys.stderr)
        for error in failures:
            print(f"  {error}", file=sys.stderr)
        return 1
    print(f"figures and final_dice.csv in {args.study_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

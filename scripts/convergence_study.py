"""Convergence study of the RW paper (its Sec. 4.3): N seeds x the pairing bundles to compare, E epochs each.

The paper trains 50 models for 50 epochs per loss (the defaults here); fewer seeds (e.g. ``--seeds 5``) give a
quick look. The losses are compared through their pairing bundles, e.g. ``bundles/acdc17_rrw`` (RW loss on RRW
maps) against ``bundles/acdc17_boundary`` (Dice + RW-Boundary): each bundle's ``configs/train.yaml`` names its loss.

Every run is a ``python -m monai.bundle run`` subprocess of a bundle's ``configs/train.yaml`` with ``--epochs``,
``--seed``, ``--dataset_dir`` and ``--bundle_root <study>/<bundle>/seed<k>`` (checkpoints in ``models/``, the
per-epoch validation table ``eval/validation_metrics.csv``, the log in ``train.log``). Runs whose validation table
already reaches the last epoch are reused, not retrained, so a study can be extended with more seeds. Afterwards
the script writes, in the study folder:

- ``final_dice.csv``: the final validation mean Dice of every run,
- ``final_dice_ecdf.png``: its empirical CDF per bundle (Figure 5),
- ``validation_dice_curves.png``: validation mean Dice per epoch of every run,
- with ``--diagnostic``: ``instability_curves.png``, the per-epoch fraction of voxels with more than one negative
  RW-gradient component (``common.evaluation.diagnostics.InstabilityDiagnosticHandler`` added to the trainer; for
  bundles whose training target holds a dense RW map).

``--override KEY=VALUE`` passes a bundle setting to every run (``--override num_workers=0``, VALUE in YAML flow
syntax). Values are data, checked as every entry point checks settings (:mod:`common.data.settings`): ``$``
expressions, ``%`` macros, ``@`` references and ``_target_``-like keys, anywhere in the value, would run code when
the run starts, so they are refused unless ``--allow-expressions`` is given (a study command line should not run
code by accident). The settings the study sets itself (``bundle_root``, ``dataset_dir``, ``epochs``, ``seed``,
``overwrite``) are its options, not overrides.

Failed runs are reported at the end (exit status 1); the others still enter the figures.

    python scripts/convergence_study.py --bundles bundles/acdc17_rrw bundles/acdc17_boundary \
        --dataset-dir /data/ACDC/database --study-dir studies/acdc --diagnostic
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common.data.settings import as_bundle_flag, parse_settings
from common.errors import ensure_absent
from common.evaluation.plots import plot_curves, plot_ecdf
from common.evaluation.tables import read_epoch_column, write_rows_csv
from common.files import atomic_output

METRICS_FILE = Path("eval") / "validation_metrics.csv"
DIAGNOSTIC_FILE = Path("eval") / "instability.csv"
DIAGNOSTIC_CONFIG = """\
# appended to the trainer's handlers by scripts/convergence_study.py --diagnostic
"+train#handlers":
  - _target_: common.evaluation.diagnostics.InstabilityDiagnosticHandler
    filename: "$@output_dir + '/instability.csv'"
    map_channels_from: "$1 if @target_key == 'target' else 0"  # a target of label + map, or the map alone
    overwrite: "@overwrite"
"""
PAPER_SEEDS, PAPER_EPOCHS = 50, 50  # "We trained 50 models on ACDC17 dataset for 50 epochs" (RW paper, Sec. 4.3)


@dataclass(frozen=True)
class Run:
    bundle: Path
    seed: int
    directory: Path

    @property
    def label(self) -> str:
        return self.bundle.name


def is_complete(run: Run, epochs: int, metric: str) -> bool:
    path = run.directory / METRICS_FILE
    if not path.exists():
        return False
    try:
        recorded, _ = read_epoch_column(path, metric)
    except ValueError:
        return False
    return bool(recorded) and recorded[-1] >= epochs


STUDY_SETTINGS = frozenset({"bundle_root", "dataset_dir", "epochs", "seed", "overwrite"})


def parse_overrides(overrides: list[str], allow_expressions: bool) -> list[tuple[str, str]]:
    """``KEY=VALUE`` pairs as command-line flags of the runs; raises SettingError for a pair that is not data."""
    settings = parse_settings(
        overrides,
        option="--override",
        reserved=lambda key: key.split("#")[0] in STUDY_SETTINGS,
        allow_code=allow_expressions,
        allow_option="--allow-expressions",
    )
    return [(key, as_bundle_flag(value)) for key, value in settings.items()]


def training_command(args: argparse.Namespace, run: Run, extra_configs: list[str]) -> list[str]:
    bundle = run.bundle.resolve()
    config_files = [str(bundle / "configs" / "train.yaml"), *extra_configs]
    command = [sys.executable, "-m", "monai.bundle", "run"]
    command += ["--config_file", repr(config_files) if len(config_files) > 1 else config_files[0]]
    command += ["--logging_file", str(bundle / "configs" / "logging.conf")]
    command += ["--bundle_root", str(run.directory.resolve()), "--dataset_dir", str(args.dataset_dir.resolve())]
    command += ["--epochs", str(args.epochs), "--seed", str(run.seed)]
    command += ["--overwrite", str(args.overwrite)]  # "True"/"False": fire reads "false" as a (truthy) string
    for key, value in args.overrides:
        command += [f"--{key}", value]
    return command


def train(args: argparse.Namespace, run: Run, extra_configs: list[str]) -> str | None:
    """Train one run; returns an error message or None."""
    if run.directory.exists() and not args.overwrite:
        return f"{run.directory}: incomplete earlier run; pass --overwrite to train it again"
    run.directory.mkdir(parents=True, exist_ok=True)
    command = training_command(args, run, extra_configs)
    log_path = run.directory / "train.log"
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        completed = subprocess.run(command, cwd=run.bundle, stdout=log, stderr=subprocess.STDOUT, check=False)
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
            curves[run] = read_epoch_column(path, metric)
        except (OSError, ValueError) as error:
            errors.append(str(error))
    return curves, errors


def write_figures(args: argparse.Namespace, runs: list[Run]) -> list[str]:
    curves, errors = collect(runs, args.metric, METRICS_FILE)
    rows = [
        {"bundle": run.label, "seed": run.seed, "epochs": epochs[-1], f"final_{args.metric}": values[-1]}
        for run, (epochs, values) in curves.items()
        if epochs
    ]
    if not rows:
        return [*errors, "no completed run to plot"]
    write_rows_csv(rows, args.study_dir / "final_dice.csv", list(rows[0]), overwrite=True)
    finals = {
        bundle.name: [row[f"final_{args.metric}"] for row in rows if row["bundle"] == bundle.name]
        for bundle in args.bundles
    }
    plot_ecdf(finals, args.study_dir / "final_dice_ecdf.png", xlabel=f"final {args.metric}", overwrite=True)
    plot_curves(
        {f"{run.label} seed {run.seed}": curve for run, curve in curves.items()},
        args.study_dir / "validation_dice_curves.png",
        ylabel=args.metric,
        overwrite=True,
    )
    if args.diagnostic:
        fractions, diagnostic_errors = collect(runs, "multi_negative_fraction", DIAGNOSTIC_FILE)
        errors += diagnostic_errors
        plot_curves(
            {f"{run.label} seed {run.seed}": curve for run, curve in fractions.items()},
            args.study_dir / "instability_curves.png",
            ylabel="voxels with >1 negative gradient component",
            overwrite=True,
        )
    for label, values in finals.items():
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            print(
                f"{label}: final {args.metric} over {len(finite)} runs: min {min(finite):.4f}, "
                f"median {statistics.median(finite):.4f}, max {max(finite):.4f}"
            )
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--bundles", type=Path, nargs="+", required=True, help="pairing bundle folders to compare (configs/train.yaml)"
    )
    parser.add_argument("--dataset-dir", type=Path, required=True, help="prepared data set (with datalist.json)")
    parser.add_argument("--study-dir", type=Path, required=True, help="folder of the runs and figures")
    parser.add_argument(
        "--seeds", type=int, default=PAPER_SEEDS, help=f"seeds 0..N-1 per bundle (paper: {PAPER_SEEDS}; e.g. 5 to look)"
    )
    parser.add_argument("--epochs", type=int, default=PAPER_EPOCHS, help=f"epochs per run (paper: {PAPER_EPOCHS})")
    parser.add_argument("--metric", default="val_mean_dice", help="column of eval/validation_metrics.csv")
    parser.add_argument("--diagnostic", action="store_true", help="log the instability diagnostic while training")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="bundle setting for every run (repeat), YAML flow data; code ('$', '%%', '@', '_target_') needs "
        "--allow-expressions",
    )
    parser.add_argument(
        "--allow-expressions", action="store_true", help="allow --override values that are code ($, %%, @, _target_)"
    )
    parser.add_argument("--plot-only", action="store_true", help="only rebuild the figures from existing runs")
    parser.add_argument("--dry-run", action="store_true", help="print the training commands and stop")
    parser.add_argument("--overwrite", action="store_true", help="retrain incomplete runs, replace the figures")
    args = parser.parse_args(argv)

    for bundle in args.bundles:
        if not (bundle / "configs" / "train.yaml").is_file():
            parser.error(f"{bundle}: no configs/train.yaml")
    if len({bundle.resolve().name for bundle in args.bundles}) < len(args.bundles):
        parser.error("--bundles: give each bundle once (runs are stored under the bundle's folder name)")
    if args.seeds < 1 or args.epochs < 1:
        parser.error("--seeds and --epochs must be at least 1")
    try:
        args.overrides = parse_overrides(args.override, args.allow_expressions)
    except ValueError as error:
        parser.error(str(error))
    runs = [
        Run(bundle, seed, args.study_dir / bundle.resolve().name / f"seed{seed}")
        for bundle in args.bundles
        for seed in range(args.seeds)
    ]
    outputs = ["final_dice.csv", "final_dice_ecdf.png", "validation_dice_curves.png", "instability_curves.png"]
    try:
        replace = args.overwrite or args.plot_only or args.dry_run
        ensure_absent(*[args.study_dir / name for name in outputs], overwrite=replace)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    extra_configs = []
    if args.diagnostic:
        diagnostic_config = args.study_dir / "instability_handler.yaml"
        if not args.dry_run:
            with atomic_output(diagnostic_config) as temporary:
                temporary.write_text(DIAGNOSTIC_CONFIG, encoding="utf-8")
        extra_configs.append(str(diagnostic_config.resolve()))

    failures = []
    if not args.plot_only:
        for index, run in enumerate(runs, start=1):
            if args.dry_run:
                print(" ".join(training_command(args, run, extra_configs)))
                continue
            if is_complete(run, args.epochs, args.metric):
                print(f"[{index}/{len(runs)}] {run.directory}: complete, reused")
                continue
            print(f"[{index}/{len(runs)}] training {run.label} seed {run.seed} ...", flush=True)
            error = train(args, run, extra_configs)
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

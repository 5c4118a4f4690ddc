"""Reproduce a paper's table: train and evaluate its bundles over the paper's runs, then write the table.

Usage:
    python scripts/run_study.py --list
    python scripts/run_study.py STUDY --output_dir OUT (--dataset_dir DIR | --demo)
        [--executor local|slurm|debug] [--max_parallel N] [--runs N] [--only BUNDLE,...]
        [--set KEY=VALUE ...] [--status]
        [--partition P] [--gpus_per_run G] [--time MINUTES|H:MM:SS] [--mem 32G] [--cpus_per_run C]
        [--slurm_extra KEY=VALUE ...] [--slurm_setup LINE ...] [--no_wait]

STUDY is a file of ``bundles/studies/`` (``--list`` shows them with their papers' tables). Each run is one bundle's
own ``python -m monai.bundle run`` (train, then evaluate on the scored set) in ``OUT/runs/BUNDLE/run_K/``, its
datalist prepared by the project's ``scripts/prepare_*.py`` under ``OUT/splits/`` (seeds, shuffles or folds as the
paper). Calling again trains nothing that is complete, resumes interrupted runs and retries failed ones. The table:
``OUT/table.csv`` (bundle, structure, metric, mean, std, runs, paper, p_value, ...), ``OUT/table.md`` (ours beside
the paper's values), ``OUT/boxplot_<metric>.png`` and, where the paper has one, ``OUT/convergence.png``.

``--demo`` writes a small synthetic release under OUT and runs the study with its tiny settings. ``--set`` values
are data (YAML scalars and lists); ``$``, ``%``, ``@`` and component mappings are refused. Exit status: 0 all runs
complete, 1 some failed (listed with their logs), 2 user error, 3 SLURM jobs submitted with ``--no_wait``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from common.data.settings import SettingError, parse_settings
from common.evaluation.studies.runs import StudyOptions, is_study_key
from common.evaluation.studies.spec import StudyError, list_studies, load_study
from common.evaluation.studies.workflow import run_study, status_lines


def parse_time(text: str) -> int:
    """Minutes from ``MINUTES`` or ``[D-]H:MM[:SS]``."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{2})(?::(\d{2}))?", text)
    if text.isdigit():
        return int(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected minutes or [D-]H:MM[:SS], got {text!r}")
    days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", nargs="?", help="study name (see --list) or path of a study file")
    parser.add_argument("--list", action="store_true", help="list the studies and stop")
    parser.add_argument("--output_dir", type=Path, help="OUT: runs, splits, table and figures go here")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--dataset_dir", type=Path, help="the release folder in the study's layout")
    data.add_argument("--demo", action="store_true", help="synthetic release under OUT, tiny settings")
    parser.add_argument("--executor", choices=("local", "slurm", "debug"), default="local")
    parser.add_argument("--max_parallel", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--runs", type=int, help="runs per bundle (default: the paper's; the demo's with --demo)")
    parser.add_argument("--only", help="comma-separated bundles of the study to run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="bundle setting (repeat)")
    parser.add_argument("--status", action="store_true", help="print every run's state and time, run nothing")
    slurm = parser.add_argument_group("resources (slurm; --gpus_per_run also local)")
    slurm.add_argument("--partition")
    slurm.add_argument("--gpus_per_run", type=int, help="GPUs per run (slurm default 1); >1: torchrun multi-GPU")
    slurm.add_argument("--time", type=parse_time, help="time limit per run: minutes or [D-]H:MM[:SS]")
    slurm.add_argument("--mem", help="memory per run, e.g. 32G")
    slurm.add_argument("--cpus_per_run", type=int)
    slurm.add_argument(
        "--slurm_extra", action="append", default=[], metavar="KEY=VALUE", help="extra #SBATCH --KEY=VALUE"
    )
    slurm.add_argument("--slurm_setup", action="append", default=[], metavar="LINE", help="shell line before the run")
    slurm.add_argument("--no_wait", action="store_true", help="slurm: submit and return; call again to collect")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> StudyOptions:
    """Check the options that argparse cannot and build :class:`StudyOptions`."""
    if args.output_dir is None:
        raise StudyError("--output_dir: required (the folder of the runs and the table)")
    extra = {}
    for item in args.slurm_extra:
        key, separator, value = item.partition("=")
        if not separator or not re.fullmatch(r"[a-z][a-z0-9_-]*", key) or "\n" in value:
            raise StudyError(f"--slurm_extra {item!r}: expected KEY=VALUE with an sbatch option name as KEY")
        extra[key] = value
    if any("\n" in line for line in args.slurm_setup):
        raise StudyError("--slurm_setup: one line per option")
    gpus = args.gpus_per_run if args.gpus_per_run is not None else (1 if args.executor == "slurm" else 0)
    if gpus < 0:
        raise StudyError(f"--gpus_per_run must be 0 or more, got {gpus}")
    return StudyOptions(
        output_dir=args.output_dir,
        dataset_dir=args.dataset_dir,
        demo=args.demo,
        executor=args.executor,
        max_parallel=args.max_parallel,
        runs=args.runs,
        only=tuple(item.strip() for item in (args.only or "").split(",") if item.strip()),
        settings=parse_settings(args.set, reserved=is_study_key),
        gpus_per_run=gpus,
        partition=args.partition,
        time_min=args.time,
        mem=args.mem,
        cpus_per_run=args.cpus_per_run,
        slurm_extra=extra,
        slurm_setup=tuple(args.slurm_setup),
        wait=not args.no_wait,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.list:
            for name in list_studies():
                study = load_study(name)
                print(f"{name:16s} {study.paper}, {study.table}: {len(study.bundles)} bundles x {study.runs} runs")
            return 0
        if not args.study:
            raise StudyError("STUDY: required (see --list)")
        study = load_study(args.study)
        options = options_from(args)
        if args.status:
            print("\n".join(status_lines(study, options)))
            return 0
        return run_study(study, options)
    except (StudyError, SettingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Turn an ACDC17 release folder into a datalist JSON with a seeded 50/50 subject-level split.

Usage:
    python scripts/prepare_acdc.py ACDC_DIR [--output ACDC_DIR/datalist.json] [--seed 0] [--overwrite]

ACDC_DIR is the release folder (or any parent of the ``patientNNN`` folders): every ``patientNNN/Info.cfg``
below it is read, its ED and ES frames and ``_gt`` labels are checked (readable 3D NIfTI, same grid, labels in
0..3), and the subjects are split by pathology group into training and validation. Paths in the datalist are
relative to ACDC_DIR. Bad subjects are listed at the end and make the exit status 1; the good ones are still
written. Subjects without labels (the 2017 test set) are skipped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.data import collect_acdc_cases, make_datalist, split_subjects, write_json_atomic
from common.synthetic import ACDC_LABELS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("acdc_dir", type=Path, help="ACDC release folder holding patientNNN/ subfolders")
    parser.add_argument("--output", type=Path, help="datalist JSON to write (default: ACDC_DIR/datalist.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subject split (default 0)")
    parser.add_argument("--validation-fraction", type=float, default=0.5, help="share of subjects for validation")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing datalist")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output or args.acdc_dir / "datalist.json"
    if output.exists() and not args.overwrite:
        print(f"error: {output} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        report = collect_acdc_cases(args.acdc_dir, num_classes=len(ACDC_LABELS))
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for subject, reason in report.skipped.items():
        print(f"skipped {subject}: {reason}")
    subjects = {case["subject"] for case in report.cases}
    if len(subjects) < 2:
        print(
            f"error: {args.acdc_dir}: found {len(subjects)} usable labelled subject(s); need at least 2",
            file=sys.stderr,
        )
        for subject, reason in report.failures.items():
            print(f"  {subject}: {reason}", file=sys.stderr)
        return 2
    training, validation = split_subjects(report.cases, args.validation_fraction, args.seed)
    datalist = make_datalist(
        training,
        validation,
        name="ACDC17",
        labels={str(value): name for value, name in ACDC_LABELS.items()},
        split={
            "seed": args.seed,
            "validation_fraction": args.validation_fraction,
            "by": "subject, stratified by group",
        },
    )
    write_json_atomic(datalist, output, overwrite=args.overwrite)
    print(
        f"wrote {output}: {len(training)} training / {len(validation)} validation frames from {len(subjects)} subjects"
    )
    if report.failures:
        print(f"{len(report.failures)} subject(s) failed and were left out:", file=sys.stderr)
        for subject, reason in report.failures.items():
            print(f"  {subject}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

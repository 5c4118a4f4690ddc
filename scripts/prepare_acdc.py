"""Turn an ACDC17 release folder into a datalist JSON, by default with the RW paper authors' even/odd split.

Usage:
    python scripts/prepare_acdc.py ACDC_DIR [--output ACDC_DIR/datalist.json] [--split authors|random|explog|sadice]
        [--seed 0] [--validation-fraction 0.5] [--overwrite]

ACDC_DIR is the release folder (or any parent of the ``patientNNN`` folders): every ``patientNNN/Info.cfg``
below it is read and its ED and ES frames and ``_gt`` labels are checked (readable 3D NIfTI, same grid, labels in
0..3). Each folder is its own subject, named by its path relative to ACDC_DIR, so that two sites' ``patient001``
never merge. Split (``--split``):

- ``authors`` (default): as Valverde & Tohka's ``datasplits/acdc17.py``: patients 2, 4, .., 100 train, patients
  1, 3, .., 99 validate (the scored half); patients above 100 are left out with a note.
- ``random``: seeded, ``--validation-fraction`` of the subjects stratified by pathology group (0: train-only).
- ``explog`` / ``sadice``: the other papers' protocols (see ``common.data.splits``).

Paths in the datalist are relative to ACDC_DIR. Bad subjects are listed at the end and make the exit status 1; the
good ones are still written. Subjects without labels (the 2017 test set) are skipped. ``--output`` never replaces a
file of the release (``Info.cfg``, frames, labels) or a folder, ``--overwrite`` or not, and an earlier datalist only
with ``--overwrite``; each such refusal is one ``error:`` line with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.data.acdc import acdc_inputs, collect_acdc_cases
from common.data.datalists import check_output, make_datalist, print_items
from common.data.splits import Split, add_split_arguments, make_split, parity_split
from common.data.synthetic_acdc import ACDC_LABELS
from common.errors import EXIT_USER_ERROR, UserError, install_error_hook
from common.files import write_json_atomic

ACDC_AUTHORS_PATIENTS = range(1, 101)  # the 2017 training set; the authors split it even/odd


def acdc_authors_split(cases: Sequence[dict[str, Any]]) -> Split:
    """Patients 2, 4, .., 100 train and 1, 3, .., 99 validate; other patient ids are left out."""
    used = [case for case in cases if case["patient_id"] in ACDC_AUTHORS_PATIENTS]
    training, validation = parity_split(used, lambda case: case["patient_id"])
    left_out = {case["subject"]: "not among patients 1-100 (the authors' split)" for case in cases if case not in used}
    return Split({"training": training, "validation": validation}, {"protocol": "authors"}, left_out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("acdc_dir", type=Path, help="ACDC release folder holding patientNNN/ subfolders")
    parser.add_argument("--output", type=Path, help="datalist JSON to write (default: ACDC_DIR/datalist.json)")
    add_split_arguments(parser, default="authors")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing datalist")
    args = parser.parse_args(argv)
    if not 0.0 <= args.validation_fraction < 1.0:
        parser.error(f"--validation-fraction must lie in [0, 1), got {args.validation_fraction}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output or args.acdc_dir / "datalist.json"
    try:
        check_output(output, acdc_inputs(args.acdc_dir), args.overwrite)
        report = collect_acdc_cases(args.acdc_dir, num_classes=len(ACDC_LABELS))
    except (UserError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    for subject, reason in report.skipped.items():
        print(f"skipped {subject}: {reason}")
    try:
        split = make_split(report.cases, args, acdc_authors_split)
    except ValueError as error:
        print(f"error: {args.acdc_dir}: {error}", file=sys.stderr)
        if report.failures:
            print_items(report.failures, f"{len(report.failures)} subject(s) failed:")
        return 2
    for subject, reason in split.left_out.items():
        print(f"left out {subject}: {reason}")
    cases = [case for section in split.sections.values() for case in section]
    datalist = make_datalist(
        split.sections["training"],
        split.sections["validation"],
        split.sections.get("test"),
        name="ACDC17",
        num_classes=len(ACDC_LABELS),
        labels={str(value): name for value, name in ACDC_LABELS.items()},
        class_names=list(ACDC_LABELS.values())[1:],
        slice_axis=Counter(case["slice_axis"] for case in cases).most_common(1)[0][0],
        split=split.record,
    )
    try:
        write_json_atomic(datalist, output, overwrite=args.overwrite)
    except (FileExistsError, IsADirectoryError, NotADirectoryError) as error:  # appeared meanwhile
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    counts = " / ".join(f"{len(section)} {name}" for name, section in split.sections.items())
    subjects = {case["subject"] for case in cases}
    print(f"wrote {output}: {counts} frames from {len(subjects)} subjects ({split.record['protocol']} split)")
    if report.failures:
        print_items(report.failures, f"{len(report.failures)} subject(s) failed and were left out:")
        return 1
    return 0


if __name__ == "__main__":
    install_error_hook()  # anything unexpected still ends with its cause as the last line
    sys.exit(main())

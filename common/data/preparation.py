"""Datalist preparation of a release: every case checked, labels mapped to training indices, the datalist written.

A release's scan (:mod:`common.data.releases`) says where its cases are; everything else is shared: checking every
case's files, the seeded subject-level split, the label mapping to consecutive training indices and the atomic
datalist write (:func:`prepare_release_cli` backs every ``scripts/prepare_<release>.py`` but ACDC's).

Label values of a release are mapped to ``0 .. num_classes - 1`` in increasing order (BraTS 4 becomes 3), or,
with ``--labels`` / ``--merge``, to the selected or merged classes: every value that no ``--labels`` or ``--merge``
names becomes background (``--merge`` alone keeps only the merged classes), and the script prints which. Every
value found in a label file must be one of the release's labels (else the case fails, naming the file and the
value), so the mapping covers every voxel. Class names must suit the result tables and differ
(:func:`common.data.datalists.check_class_names`); a label name shared by two values must be selected by value. The
datalist is written only where :func:`check_output` allows: never over a file the preparation reads (the release's
description, images and labels), never over a folder, and over an earlier datalist only with ``--overwrite``. The
datalist records the mapping and its inverse as ``orig_labels`` / ``target_labels`` lists, ready for
``monai.transforms.MapLabelValued(keys, **datalist["label_mapping"])`` in training and
``MapLabelValued(keys, **datalist["inverse_label_mapping"])`` before writing predictions in release values (a
merged class goes back to the first value of its group); ``classes`` lists each class's name and release values,
``class_names`` the foreground names in training order. Each case records its ``spacing`` (RAS axis order) and
``slice_axis`` (:func:`common.data.geometry.volume_geometry`), the datalist the data set's ``slice_axis`` (the most
common one). 2D files are accepted (one-slice cases for the 2D-network bundles).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.data.datalists import PreparationReport, check_class_names, check_output, make_datalist, print_items
from common.data.geometry import DEFAULT_SLICE_AXIS, volume_geometry
from common.data.nifti import load_volume
from common.data.releases import Release, ReleaseScan
from common.data.splits import Split, add_split_arguments, make_split
from common.errors import EXIT_USER_ERROR, OptionValueError, OutputExistsError, UserError
from common.files import write_json_atomic


def check_case_files(
    image_paths: Sequence[Path], label_path: Path, label_values: Collection[int], image_channels: int = 1
) -> tuple[tuple[int, ...], np.ndarray]:
    """Check that a case's images and label are readable NIfTI files on one grid with known label values.

    Labels may be 3D or 2D (a single slice); the images then have the same spatial dimensions.

    Args:
        image_paths: image files (one per modality, or one file holding ``image_channels`` modalities last).
        label_path: 3D or 2D label file.
        label_values: the release's label values; any other value in the label is an error.
        image_channels: channels per image file; 1 means files without a channel axis, more means the channel last.

    Returns:
        The spatial shape and the label's affine.

    Raises:
        FileNotFoundError: files are missing (all of them are named).
        ValueError: a file is unreadable, has the wrong dimensions, another grid than the label, or unknown
            label values (the message names the file and the problem).
    """
    missing = [path for path in (*image_paths, label_path) if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(str(path) for path in missing)}")
    label, label_affine = load_volume(label_path, spatial_dims=(2, 3))
    for image_path in image_paths:
        image, image_affine = load_volume(image_path, spatial_dims=label.ndim + (image_channels > 1))
        if image.shape[: label.ndim] != label.shape:
            raise ValueError(f"{image_path}: shape {image.shape} differs from the label's {label.shape} ({label_path})")
        if image_channels > 1 and image.shape[-1] != image_channels:
            raise ValueError(f"{image_path}: {image.shape[-1]} channels, expected {image_channels} (one per modality)")
        if not np.allclose(image_affine, label_affine, atol=1e-3):
            raise ValueError(f"{image_path}: affine differs from the label's ({label_path})")
    unexpected = np.setdiff1d(np.unique(label), np.asarray(sorted(label_values)))
    if unexpected.size:
        raise ValueError(
            f"{label_path}: label values {unexpected.tolist()} are not among the release's {sorted(label_values)}"
        )
    return tuple(int(size) for size in label.shape), label_affine


def collect_release_cases(scan: ReleaseScan, root: Path) -> PreparationReport:
    """Check every case of a scan, keeping the good ones as datalist entries and recording why the others failed.

    Args:
        scan: the adapter's description of the release.
        root: the release folder; entry paths stay relative to it.

    Returns:
        Entries with ``image`` (a path, or the list of modality paths), ``label``, ``subject``, ``shape``,
        ``spacing`` and ``slice_axis`` (RAS axes) and, when the release has one, ``group``; plus the scan's skipped
        items and every failure by subject.
    """
    report = PreparationReport(skipped=dict(scan.skipped), failures=dict(scan.failures))
    for case in scan.cases:
        try:
            shape, affine = check_case_files(
                [root / image for image in case.images], root / case.label, scan.labels, scan.image_channels
            )
        except (FileNotFoundError, ValueError) as error:
            report.failures[case.subject] = str(error)
            continue
        images = [image.as_posix() for image in case.images]
        geometry = volume_geometry(affine, len(shape))
        entry: dict[str, Any] = {
            "image": images[0] if len(images) == 1 else images,
            "label": case.label.as_posix(),
            "subject": case.subject,
            "shape": list(shape),
            "spacing": geometry.spacing,
            "slice_axis": geometry.slice_axis,
        }
        if case.group is not None:
            entry["group"] = case.group
        report.cases.append(entry)
    return report


@dataclass(frozen=True)
class ClassPlan:
    """Training classes: index ``i`` is named ``names[i]`` and gathers the release values ``values[i]``.

    Index 0 is the background; it also gathers every release value that no selected class takes.
    """

    names: list[str]
    values: list[list[int]]

    def mappings(self) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        """``MapLabelValued`` arguments: release values to indices, and indices back to each class's first value."""
        pairs = sorted((value, index) for index, values in enumerate(self.values) for value in values)
        forward = {"orig_labels": [value for value, _ in pairs], "target_labels": [index for _, index in pairs]}
        inverse = {"orig_labels": list(range(len(self.values))), "target_labels": [v[0] for v in self.values]}
        return forward, inverse


def _label_value(token: str, labels: dict[int, str], source: str) -> int:
    """A release label given by value (``"7"``) or by name (``"aorta"``, case-insensitive, and only one label's)."""
    token = token.strip()
    if token.lstrip("-").isdigit() and int(token) in labels:
        return int(token)
    matches = sorted(value for value, name in labels.items() if name.strip().lower() == token.lower())
    if not matches:
        raise ValueError(f"{source}: no label {token!r} (give a value or a name of its 'labels')")
    if len(matches) > 1:
        raise ValueError(
            f"{source}: label name {token!r} is ambiguous: values {matches} are all named so; give the value "
            f'(e.g. --labels {matches[0]}), or merge them with --merge "{token}={",".join(map(str, matches))}"'
        )
    return matches[0]


def plan_classes(
    labels: dict[int, str], keep: Sequence[str] = (), merge: Sequence[str] = (), source: str = "labels"
) -> ClassPlan:
    """The training classes of a release: all its labels, or the ones kept and merged.

    Args:
        labels: release value -> name; the smallest value is the background.
        keep: labels (values or names) that each become one class, in the order given.
        merge: groups ``NAME=L1,L2,...`` (labels by value or name) that each become one class called ``NAME``.
        source: the file the labels come from, for messages.

    Returns:
        The plan; without ``keep`` and ``merge`` every release value is its own class, in increasing order.

    Raises:
        ValueError: an unknown or ambiguous label, a label used twice, the background selected, or a malformed group.
        UserError: class names that would break the result tables or are given twice
            (:func:`common.data.datalists.check_class_names`).
    """
    background = min(labels)
    if not keep and not merge:
        plan = ClassPlan([labels[value] for value in sorted(labels)], [[value] for value in sorted(labels)])
        check_class_names(plan.names, f"{source} (select or merge labels with --labels/--merge to rename)")
        return plan
    names, groups = [labels[background]], [[background]]
    for token in keep:
        value = _label_value(token, labels, source)
        names.append(labels[value])
        groups.append([value])
    for group in merge:
        name, separator, members = group.partition("=")
        if not separator or not name.strip() or not members.strip():
            raise OptionValueError(f"--merge {group!r}: expected NAME=LABEL,LABEL,... (labels by value or name)")
        names.append(name.strip())
        groups.append([_label_value(token, labels, source) for token in members.split(",")])
    used = [value for group in groups[1:] for value in group]
    repeated = sorted({value for value in used if used.count(value) > 1})
    if repeated or background in used:
        raise ValueError(
            f"{source}: labels {repeated or [background]} are used twice or are the background; each release label "
            "can join one class only"
        )
    groups[0] += sorted(set(labels) - set(used) - {background})
    check_class_names(names, f"{source} with --labels/--merge")
    return ClassPlan(names, groups)


def background_note(plan: ClassPlan, labels: dict[int, str]) -> str | None:
    """The line saying which release labels a selection turns into background, or None when there are none."""
    dropped = plan.values[0][1:]
    if not dropped:
        return None
    listed = ", ".join(f"{value} {labels[value]}" for value in dropped)
    return f"background also takes labels {listed} (named by neither --labels nor --merge)"


def release_datalist(scan: ReleaseScan, split: Split, plan: ClassPlan) -> dict[str, Any]:
    """Assemble the datalist of a split with the release's class and geometry metadata.

    Args:
        scan: the adapter's description of the release.
        split: the sections and the record of the split.
        plan: the training classes.

    Returns:
        The decathlon-style datalist: the split's sections, ``num_classes``, ``labels`` (training index -> name),
        ``class_names`` (foreground), ``classes`` (index, name, release values), ``modality`` (channel -> name),
        ``label_mapping``, ``inverse_label_mapping``, ``slice_axis`` (most common over the cases) and ``split``.
    """
    mapping, inverse = plan.mappings()
    cases = [case for section in split.sections.values() for case in section]
    axes = Counter(case["slice_axis"] for case in cases)
    slice_axis = max(axes, key=lambda axis: (axes[axis], axis == DEFAULT_SLICE_AXIS)) if axes else DEFAULT_SLICE_AXIS
    return make_datalist(
        split.sections["training"],
        split.sections["validation"],
        split.sections.get("test"),
        name=scan.name,
        num_classes=len(plan.names),
        labels={str(index): name for index, name in enumerate(plan.names)},
        class_names=plan.names[1:],
        classes=[
            {"index": index, "name": name, "values": values}
            for index, (name, values) in enumerate(zip(plan.names, plan.values, strict=True))
        ],
        modality={str(index): name for index, name in enumerate(scan.modalities)},
        label_mapping=mapping,
        inverse_label_mapping=inverse,
        slice_axis=slice_axis,
        split=split.record,
    )


def prepare_release_cli(release: Release, argv: Sequence[str] | None = None, description: str | None = None) -> int:
    """Command line shared by the release preparation scripts: scan, check, split and write the datalist.

    Usage: ``DATA_DIR [--output DATA_DIR/datalist.json] [--split ...] [--labels ...] [--merge ...] [--overwrite]``.
    Bad cases are listed at the end and the good ones are still written.

    Args:
        release: the release adapter.
        argv: arguments without the program name; ``sys.argv[1:]`` when None.
        description: help text of the script.

    Returns:
        The exit status: 0 on success, 1 when the datalist was written but some cases failed, 2 when nothing was
        written (an output that is an input of the release or a folder, an existing datalist without
        ``--overwrite``, unusable folder, options or class names, too few usable subjects).
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help=release.folder_help)
    parser.add_argument("--output", type=Path, help="datalist JSON to write (default: DATA_DIR/datalist.json)")
    add_split_arguments(parser, default="authors" if release.authors_split else "random")
    parser.add_argument(
        "--labels",
        action="append",
        default=[],
        metavar="LABEL[,LABEL...]",
        help="keep only these labels (values or names), one class each; every label named by neither --labels "
        "nor --merge becomes background (repeatable)",
    )
    parser.add_argument(
        "--merge",
        action="append",
        default=[],
        metavar="NAME=LABEL,LABEL...",
        help="merge these labels (values or names) into one class NAME; with --labels, or alone: then only the "
        "merged classes are kept and every other label becomes background (repeatable)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing datalist")
    args = parser.parse_args(argv)
    if not 0.0 <= args.validation_fraction < 1.0:
        parser.error(f"--validation-fraction must lie in [0, 1), got {args.validation_fraction}")
    output = args.output or args.data_dir / "datalist.json"
    try:
        if not args.data_dir.is_dir():
            raise FileNotFoundError(f"{args.data_dir}: not a folder")
        scan = release.scan(args.data_dir)
        check_output(output, scan.inputs(args.data_dir), args.overwrite)
        keep = [token for tokens in args.labels for token in tokens.split(",")]
        plan = plan_classes(scan.labels, keep, args.merge, source=f"{args.data_dir} labels")
    except (UserError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    report = collect_release_cases(scan, args.data_dir)
    for item, reason in report.skipped.items():
        print(f"skipped {item}: {reason}")
    try:
        split = make_split(report.cases, args, release.authors_split)
    except ValueError as error:
        print(f"error: {args.data_dir}: {error}", file=sys.stderr)
        if report.failures:
            print_items(report.failures, f"{len(report.failures)} case(s) failed:")
        return 2
    for item, reason in split.left_out.items():
        print(f"left out {item}: {reason}")
    datalist = release_datalist(scan, split, plan)
    try:
        write_json_atomic(datalist, output, overwrite=args.overwrite)
    except (OutputExistsError, FileExistsError, IsADirectoryError, NotADirectoryError) as error:  # appeared meanwhile
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    counts = " / ".join(f"{len(cases)} {section}" for section, cases in split.sections.items())
    subjects = {case["subject"] for section in split.sections.values() for case in section}
    print(f"wrote {output}: {counts} cases from {len(subjects)} {release.name} subjects ({split.record['protocol']})")
    print(f"classes: {', '.join(f'{index} {name}' for index, name in enumerate(plan.names))}")
    note = background_note(plan, scan.labels)
    if note:
        print(note)
    print(f"slice axis (RAS, coarsest spacing): {datalist['slice_axis']}")
    other_axes = {
        case["subject"]: f"coarsest axis {case['slice_axis']} differs from the data set's {datalist['slice_axis']}"
        for section in split.sections.values()
        for case in section
        if case["slice_axis"] != datalist["slice_axis"]
    }
    if other_axes:
        print_items(other_axes, f"note: {len(other_axes)} case(s) have another slice axis (2D bundles refuse them):")
    if report.failures:
        print_items(report.failures, f"{len(report.failures)} case(s) failed and were left out:")
        return 1
    return 0

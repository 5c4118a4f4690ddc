"""Adapters that turn the raw folders of public data releases into decathlon-style datalists.

Each release has a small adapter (a *scan*) that only knows the release's layout: where the cases are, which
files make up a case and what the label values mean. Everything else is shared: checking every case's files,
the seeded subject-level split, the label mapping to consecutive training indices and the atomic datalist write
(:func:`prepare_release_cli` backs every ``scripts/prepare_<release>.py``).

Layouts understood:

BraTS 2017/2018 (``scan_brats``)::

    <root>/{HGG,LGG}/<subject>/<subject>_{t1,t1ce,t2,flair,seg}.nii.gz    labels 0, 1, 2, 4

KiTS19 (``scan_kits19``)::

    <root>/case_XXXXX/imaging.nii.gz, segmentation.nii.gz    labels 0, 1 kidney, 2 tumour

Medical Segmentation Decathlon (``scan_msd``)::

    <root>/dataset.json    ("labels", "modality" and "training" entries)
    <root>/imagesTr/*.nii.gz    (4D, modality last, when dataset.json lists several modalities)
    <root>/labelsTr/*.nii.gz

Label values of a release are mapped to ``0 .. num_classes - 1`` in increasing order (BraTS 4 becomes 3), or,
with ``--labels`` / ``--merge``, to the selected or merged classes (every other value becomes background). The
datalist records the mapping and its inverse as ``orig_labels`` / ``target_labels`` lists, ready for
``monai.transforms.MapLabelValued(keys, **datalist["label_mapping"])`` in training and
``MapLabelValued(keys, **datalist["inverse_label_mapping"])`` before writing predictions in release values (a
merged class goes back to the first value of its group); ``classes`` lists each class's name and release values,
``class_names`` the foreground names in training order. Each case records its ``spacing`` (RAS axis order) and
``slice_axis`` (:func:`common.geometry.volume_geometry`), the datalist the data set's ``slice_axis`` (the most
common one). 2D files are accepted (one-slice cases for the 2D-network bundles).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.data import PreparationReport, load_volume, make_datalist, write_json_atomic
from common.geometry import DEFAULT_SLICE_AXIS, volume_geometry
from common.splits import Split, add_split_arguments, make_split, parity_split, position_parity_split

BRATS_GRADES = ("HGG", "LGG")
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_LABELS = {
    0: "background",
    1: "necrotic and non-enhancing tumour core",
    2: "peritumoral oedema",
    4: "enhancing tumour",
}
KITS19_LABELS = {0: "background", 1: "kidney", 2: "tumour"}
KITS19_CASE_PATTERN = re.compile(r"case_(\d{5})")
MSD_REQUIRED_KEYS = ("labels", "modality", "training")
NIFTI_SUFFIX = ".nii.gz"


@dataclass(frozen=True)
class ReleaseCase:
    """One labelled case as a release lays it out, with paths relative to the release folder."""

    subject: str
    images: tuple[Path, ...]
    label: Path
    group: str | None = None


@dataclass
class ReleaseScan:
    """What an adapter found in a release folder, before any file is opened.

    Attributes:
        name: data set name written into the datalist.
        labels: release label value -> class name (values need not be consecutive).
        modalities: image channels in datalist order.
        image_channels: channels per image file: 1 for 3D files, more for 4D files holding several modalities.
        cases: the labelled cases to check.
        skipped: item -> why it is deliberately left out (e.g. unlabelled test cases).
        failures: item -> why it could not even be described (e.g. a malformed ``dataset.json`` entry).
    """

    name: str
    labels: dict[int, str]
    modalities: tuple[str, ...]
    image_channels: int
    cases: list[ReleaseCase]
    skipped: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Release:
    """A release adapter plus the wording its command-line script uses.

    Attributes:
        name: release name in messages.
        folder_help: help text of the folder argument.
        scan: the adapter.
        authors_split: the RW paper authors' split of this release's checked cases, or None (then the default
            split is ``random``).
    """

    name: str
    folder_help: str
    scan: Callable[[Path], ReleaseScan]
    authors_split: Callable[[Sequence[dict[str, Any]]], Split] | None = None


def _subfolders(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def scan_brats(root: Path) -> ReleaseScan:
    """Describe a BraTS 2017/2018 training release: ``<root>/{HGG,LGG}/<subject>/<subject>_<modality>.nii.gz``.

    Every subject folder is a case; its missing files are reported when the case is checked. The grade (HGG or
    LGG) is the case's ``group``, so that the split is stratified by grade.

    Args:
        root: the release folder holding ``HGG/`` and ``LGG/`` (``MICCAI_BraTS_2018_Data_Training`` or
            ``Brats17TrainingData``).

    Returns:
        The scan, with images in the order t1, t1ce, t2, flair.

    Raises:
        FileNotFoundError: ``root`` holds neither ``HGG/`` nor ``LGG/``.
    """
    grade_dirs = [root / grade for grade in BRATS_GRADES if (root / grade).is_dir()]
    if not grade_dirs:
        raise FileNotFoundError(
            f"{root}: no HGG/ or LGG/ folder; pass the BraTS release folder that holds them "
            "(e.g. MICCAI_BraTS_2018_Data_Training or Brats17TrainingData)"
        )
    cases = []
    for grade_dir in grade_dirs:
        for subject_dir in _subfolders(grade_dir):
            relative = subject_dir.relative_to(root)
            stem = subject_dir.name
            cases.append(
                ReleaseCase(
                    subject=stem,
                    images=tuple(relative / f"{stem}_{modality}{NIFTI_SUFFIX}" for modality in BRATS_MODALITIES),
                    label=relative / f"{stem}_seg{NIFTI_SUFFIX}",
                    group=grade_dir.name,
                )
            )
    return ReleaseScan("BraTS", dict(BRATS_LABELS), BRATS_MODALITIES, 1, cases)


def scan_kits19(root: Path) -> ReleaseScan:
    """Describe a KiTS19 release: ``<root>/case_XXXXX/{imaging,segmentation}.nii.gz``.

    Cases without ``segmentation.nii.gz`` (the challenge's test set, cases 210-299) are skipped.

    Args:
        root: the kits19 ``data`` folder holding the ``case_XXXXX`` folders.

    Returns:
        The scan.

    Raises:
        FileNotFoundError: ``root`` holds no ``case_XXXXX`` folder.
    """
    case_dirs = [path for path in _subfolders(root) if KITS19_CASE_PATTERN.fullmatch(path.name)]
    if not case_dirs:
        raise FileNotFoundError(f"{root}: no case_XXXXX folders; pass the kits19 'data' folder that holds them")
    scan = ReleaseScan("KiTS19", dict(KITS19_LABELS), ("CT",), 1, [])
    for case_dir in case_dirs:
        if not (case_dir / f"segmentation{NIFTI_SUFFIX}").exists():
            scan.skipped[case_dir.name] = f"no segmentation{NIFTI_SUFFIX} (unlabelled test case)"
            continue
        scan.cases.append(
            ReleaseCase(
                subject=case_dir.name,
                images=(Path(case_dir.name, f"imaging{NIFTI_SUFFIX}"),),
                label=Path(case_dir.name, f"segmentation{NIFTI_SUFFIX}"),
            )
        )
    return scan


def _integer_keyed(mapping: Any, key: str, path: Path) -> dict[int, str]:
    """Parse a ``dataset.json`` entry such as ``{"0": "background", "1": "liver"}`` into ``{0: ..., 1: ...}``."""
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f'{path}: \'{key}\' must be a non-empty object such as {{"0": "..."}}')
    try:
        return {int(value): str(name) for value, name in mapping.items()}
    except ValueError as error:
        raise ValueError(f"{path}: '{key}' keys must be integers written as strings ({error})") from error


def read_msd_description(path: Path) -> dict[str, Any]:
    """Read an MSD ``dataset.json`` and check that it has the entries the datalist needs.

    Raises:
        ValueError: the file is missing, is not a JSON object, or lacks ``labels``, ``modality`` or ``training``.
    """
    try:
        description = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the MSD description ({type(error).__name__}: {error})") from error
    if not isinstance(description, dict):
        raise ValueError(f"{path}: expected a JSON object")
    missing = [key for key in MSD_REQUIRED_KEYS if key not in description]
    if missing:
        raise ValueError(f"{path}: missing entries {missing}")
    if not isinstance(description["training"], list):
        raise ValueError(f'{path}: \'training\' must be a list of {{"image": ..., "label": ...}} entries')
    return description


def _inside(root: Path, value: str) -> Path | None:
    """``value`` (relative to ``root``, or absolute) as a path relative to ``root``; None when it leaves ``root``."""
    base = Path(os.path.normpath(root.absolute()))
    target = Path(os.path.normpath(base / value))  # an absolute value replaces base
    return target.relative_to(base) if target.is_relative_to(base) and target != base else None


def _case_names(images: Sequence[Path]) -> list[str]:
    """File stems as case names; the path without suffix for every stem that two files share (site folders)."""
    stems = [image.name.removesuffix(NIFTI_SUFFIX).removesuffix(".nii") for image in images]
    counts = Counter(stems)
    return [
        stem if counts[stem] == 1 else image.as_posix().removesuffix(NIFTI_SUFFIX).removesuffix(".nii")
        for stem, image in zip(stems, images, strict=True)
    ]


def scan_msd(root: Path) -> ReleaseScan:
    """Describe a Medical Segmentation Decathlon task folder from its ``dataset.json``.

    The cases are the ``training`` entries; each file is its own subject, named by its file stem (by its path when
    two folders hold the same file name, so that they stay two subjects). Entries whose path leaves the task
    folder (``..``, absolute paths elsewhere) are refused, and an image listed twice is kept once; both are
    reported as failures by entry. Images in ``imagesTr`` that the description does not list are skipped with a
    note (hidden ``._*`` files from macOS archives are ignored).

    Args:
        root: the task folder (e.g. ``Task02_Heart``) holding ``dataset.json``, ``imagesTr`` and ``labelsTr``.

    Returns:
        The scan; images are 4D with one channel per ``modality`` entry when there are several.

    Raises:
        ValueError: ``dataset.json`` is missing or malformed (the message names it).
    """
    description_path = root / "dataset.json"
    description = read_msd_description(description_path)
    labels = _integer_keyed(description["labels"], "labels", description_path)
    modality = _integer_keyed(description["modality"], "modality", description_path)
    modalities = tuple(modality[index] for index in sorted(modality))
    scan = ReleaseScan(str(description.get("name", root.name)), labels, modalities, len(modalities), [])
    pairs: list[tuple[Path, Path]] = []
    first_entry: dict[Path, int] = {}
    for index, entry in enumerate(description["training"]):
        item = f"training[{index}]"
        if not (
            isinstance(entry, dict) and isinstance(entry.get("image"), str) and isinstance(entry.get("label"), str)
        ):
            scan.failures[item] = f"{description_path}: training entry {index} lacks an image or label path"
            continue
        image, label = _inside(root, entry["image"]), _inside(root, entry["label"])
        if image is None or label is None:
            outside = entry["image"] if image is None else entry["label"]
            scan.failures[item] = (
                f"{description_path}: training entry {index} names {outside!r}, outside the task folder {root}; refused"
            )
            continue
        if image in first_entry:
            scan.failures[item] = (
                f"{description_path}: training entry {index} lists {image.as_posix()} again (first in entry "
                f"{first_entry[image]}); kept once"
            )
            continue
        first_entry[image] = index
        pairs.append((image, label))
    names = _case_names([image for image, _ in pairs])
    scan.cases = [ReleaseCase(name, (image,), label) for name, (image, label) in zip(names, pairs, strict=True)]
    listed = {(root / image).resolve() for image in first_entry}
    images_dir = root / "imagesTr"
    if images_dir.is_dir():
        for image in sorted(images_dir.glob("*.nii*")):
            if not image.name.startswith(".") and image.resolve() not in listed:
                scan.skipped[image.name.removesuffix(NIFTI_SUFFIX)] = f"{image}: not listed in {description_path.name}"
    return scan


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
    """A release label given by value (``"7"``) or by name (``"aorta"``, case-insensitive)."""
    token = token.strip()
    if token.lstrip("-").isdigit() and int(token) in labels:
        return int(token)
    matches = [value for value, name in labels.items() if name.lower() == token.lower()]
    if not matches:
        raise ValueError(f"{source}: no label {token!r} (give a value or a name of its 'labels')")
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
        ValueError: an unknown label, a label used twice, the background selected, or a malformed group.
    """
    background = min(labels)
    if not keep and not merge:
        return ClassPlan([labels[value] for value in sorted(labels)], [[value] for value in sorted(labels)])
    names, groups = [labels[background]], [[background]]
    for token in keep:
        value = _label_value(token, labels, source)
        names.append(labels[value])
        groups.append([value])
    for group in merge:
        name, separator, members = group.partition("=")
        if not separator or not name.strip() or not members.strip():
            raise ValueError(f"--merge {group!r}: expected NAME=LABEL,LABEL,... (labels by value or name)")
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
    return ClassPlan(names, groups)


def kits19_authors_split(cases: Sequence[dict[str, Any]]) -> Split:
    """KiTS19 cases 0, 2, .., 208 train and 1, 3, .., 209 validate (the RW paper's ``datasplits/kits19.py``)."""
    training, validation = parity_split(cases, lambda case: int(KITS19_CASE_PATTERN.fullmatch(case["subject"])[1]))
    return Split({"training": training, "validation": validation}, {"protocol": "authors", "rule": "even/odd case"})


def brats_authors_split(cases: Sequence[dict[str, Any]]) -> Split:
    """BraTS HGG subjects sorted by name: even positions train, odd validate; LGG left out (``brats18.py``)."""
    hgg = [case for case in cases if case.get("group") == "HGG"]
    training, validation = position_parity_split(hgg)
    left_out = {case["subject"]: "LGG (the authors' split uses HGG only)" for case in cases if case not in hgg}
    record = {"protocol": "authors", "rule": "HGG only, sorted, even/odd position"}
    return Split({"training": training, "validation": validation}, record, left_out)


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


def _print_items(items: dict[str, str], header: str) -> None:
    print(header, file=sys.stderr)
    for item, reason in items.items():
        print(f"  {item}: {reason}", file=sys.stderr)


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
        written (existing datalist without ``--overwrite``, unusable folder or options, too few usable subjects).
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
        help="keep only these labels (values or names), one class each; all others become background (repeatable)",
    )
    parser.add_argument(
        "--merge",
        action="append",
        default=[],
        metavar="NAME=LABEL,LABEL...",
        help="merge these labels (values or names) into one class NAME; with --labels, or alone (repeatable)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing datalist")
    args = parser.parse_args(argv)
    if not 0.0 <= args.validation_fraction < 1.0:
        parser.error(f"--validation-fraction must lie in [0, 1), got {args.validation_fraction}")
    output = args.output or args.data_dir / "datalist.json"
    if output.exists() and not args.overwrite:
        print(f"error: {output} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        if not args.data_dir.is_dir():
            raise FileNotFoundError(f"{args.data_dir}: not a folder")
        scan = release.scan(args.data_dir)
        keep = [token for tokens in args.labels for token in tokens.split(",")]
        plan = plan_classes(scan.labels, keep, args.merge, source=f"{args.data_dir} labels")
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = collect_release_cases(scan, args.data_dir)
    for item, reason in report.skipped.items():
        print(f"skipped {item}: {reason}")
    try:
        split = make_split(report.cases, args, release.authors_split)
    except ValueError as error:
        print(f"error: {args.data_dir}: {error}", file=sys.stderr)
        if report.failures:
            _print_items(report.failures, f"{len(report.failures)} case(s) failed:")
        return 2
    for item, reason in split.left_out.items():
        print(f"left out {item}: {reason}")
    datalist = release_datalist(scan, split, plan)
    write_json_atomic(datalist, output, overwrite=args.overwrite)
    counts = " / ".join(f"{len(cases)} {section}" for section, cases in split.sections.items())
    subjects = {case["subject"] for section in split.sections.values() for case in section}
    print(f"wrote {output}: {counts} cases from {len(subjects)} {release.name} subjects ({split.record['protocol']})")
    print(f"classes: {', '.join(f'{index} {name}' for index, name in enumerate(plan.names))}")
    print(f"slice axis (RAS, coarsest spacing): {datalist['slice_axis']}")
    other_axes = {
        case["subject"]: f"coarsest axis {case['slice_axis']} differs from the data set's {datalist['slice_axis']}"
        for section in split.sections.values()
        for case in section
        if case["slice_axis"] != datalist["slice_axis"]
    }
    if other_axes:
        _print_items(other_axes, f"note: {len(other_axes)} case(s) have another slice axis (2D bundles refuse them):")
    if report.failures:
        _print_items(report.failures, f"{len(report.failures)} case(s) failed and were left out:")
        return 1
    return 0


BRATS = Release("BraTS", "BraTS 2017/2018 training folder holding HGG/ and LGG/", scan_brats, brats_authors_split)
KITS19 = Release("KiTS19", "kits19 data folder holding case_XXXXX/ folders", scan_kits19, kits19_authors_split)
MSD = Release("MSD", "Decathlon task folder holding dataset.json, imagesTr/ and labelsTr/", scan_msd)

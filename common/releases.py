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

Label values of a release are mapped to ``0 .. num_classes - 1`` in increasing order (BraTS 4 becomes 3). The
datalist records the mapping and its inverse as ``orig_labels`` / ``target_labels`` lists, ready for
``monai.transforms.MapLabelValued(keys, **datalist["label_mapping"])`` in training and
``MapLabelValued(keys, **datalist["inverse_label_mapping"])`` before writing predictions in release values.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.data import PreparationReport, load_volume, make_datalist, split_subjects, write_json_atomic

BRATS_GRADES = ("HGG", "LGG")
BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_LABELS = {
    0: "background",
    1: "necrotic and non-enhancing tumour core",
    2: "peritumoral oedema",
    4: "enhancing tumour",
}
KITS19_LABELS = {0: "background", 1: "kidney", 2: "tumour"}
KITS19_CASE_PATTERN = re.compile(r"case_\d{5}")
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
    """A release adapter plus the wording its command-line script uses."""

    name: str
    folder_help: str
    scan: Callable[[Path], ReleaseScan]


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


def scan_msd(root: Path) -> ReleaseScan:
    """Describe a Medical Segmentation Decathlon task folder from its ``dataset.json``.

    The cases are the ``training`` entries; each file is its own subject. Images in ``imagesTr`` that the
    description does not list are skipped with a note (hidden ``._*`` files from macOS archives are ignored).

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
    for index, entry in enumerate(description["training"]):
        if not (
            isinstance(entry, dict) and isinstance(entry.get("image"), str) and isinstance(entry.get("label"), str)
        ):
            scan.failures[f"training[{index}]"] = (
                f"{description_path}: training entry {index} lacks an image or label path"
            )
            continue
        image = Path(entry["image"])
        scan.cases.append(ReleaseCase(image.name.removesuffix(NIFTI_SUFFIX), (image,), Path(entry["label"])))
    listed = {(root / case.images[0]).resolve() for case in scan.cases}
    images_dir = root / "imagesTr"
    if images_dir.is_dir():
        for image in sorted(images_dir.glob(f"*{NIFTI_SUFFIX}")):
            if not image.name.startswith(".") and image.resolve() not in listed:
                scan.skipped[image.name.removesuffix(NIFTI_SUFFIX)] = f"{image}: not listed in {description_path.name}"
    return scan


def check_case_files(
    image_paths: Sequence[Path], label_path: Path, label_values: Collection[int], image_channels: int = 1
) -> tuple[int, ...]:
    """Check that a case's images and label are readable NIfTI volumes on one grid with known label values.

    Args:
        image_paths: image files (one per modality, or one 4D file holding ``image_channels`` modalities).
        label_path: 3D label file.
        label_values: the release's label values; any other value in the label is an error.
        image_channels: channels per image file; 1 means 3D files, more means 4D files with the channel last.

    Returns:
        The spatial shape.

    Raises:
        FileNotFoundError: files are missing (all of them are named).
        ValueError: a file is unreadable, has the wrong dimensions, another grid than the label, or unknown
            label values (the message names the file and the problem).
    """
    missing = [path for path in (*image_paths, label_path) if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(str(path) for path in missing)}")
    label, label_affine = load_volume(label_path)
    for image_path in image_paths:
        image, image_affine = load_volume(image_path, spatial_dims=3 if image_channels == 1 else 4)
        if image.shape[:3] != label.shape:
            raise ValueError(f"{image_path}: shape {image.shape} differs from the label's {label.shape} ({label_path})")
        if image_channels > 1 and image.shape[3] != image_channels:
            raise ValueError(f"{image_path}: {image.shape[3]} channels, expected {image_channels} (one per modality)")
        if not np.allclose(image_affine, label_affine, atol=1e-3):
            raise ValueError(f"{image_path}: affine differs from the label's ({label_path})")
    unexpected = np.setdiff1d(np.unique(label), np.asarray(sorted(label_values)))
    if unexpected.size:
        raise ValueError(
            f"{label_path}: label values {unexpected.tolist()} are not among the release's {sorted(label_values)}"
        )
    return tuple(int(size) for size in label.shape)


def collect_release_cases(scan: ReleaseScan, root: Path) -> PreparationReport:
    """Check every case of a scan, keeping the good ones as datalist entries and recording why the others failed.

    Args:
        scan: the adapter's description of the release.
        root: the release folder; entry paths stay relative to it.

    Returns:
        Entries with ``image`` (a path, or the list of modality paths), ``label``, ``subject``, ``shape`` and, when
        the release has one, ``group``; plus the scan's skipped items and every failure by subject.
    """
    report = PreparationReport(skipped=dict(scan.skipped), failures=dict(scan.failures))
    for case in scan.cases:
        try:
            shape = check_case_files(
                [root / image for image in case.images], root / case.label, scan.labels, scan.image_channels
            )
        except (FileNotFoundError, ValueError) as error:
            report.failures[case.subject] = str(error)
            continue
        images = [image.as_posix() for image in case.images]
        entry: dict[str, Any] = {
            "image": images[0] if len(images) == 1 else images,
            "label": case.label.as_posix(),
            "subject": case.subject,
            "shape": list(shape),
        }
        if case.group is not None:
            entry["group"] = case.group
        report.cases.append(entry)
    return report


def label_mappings(labels: Collection[int]) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Mapping of release label values to consecutive training indices (in increasing order), and its inverse.

    Returns:
        ``({"orig_labels": values, "target_labels": indices}, {"orig_labels": indices, "target_labels": values})``,
        the keyword arguments of ``monai.transforms.MapLabelValued``.
    """
    values = sorted(int(value) for value in labels)
    indices = list(range(len(values)))
    return {"orig_labels": values, "target_labels": indices}, {"orig_labels": indices, "target_labels": values}


def release_datalist(
    scan: ReleaseScan, cases: Sequence[dict[str, Any]], seed: int = 0, validation_fraction: float = 0.5
) -> dict[str, Any]:
    """Split checked cases by subject and assemble the datalist with the release's label metadata.

    Args:
        scan: the adapter's description of the release.
        cases: checked entries from :func:`collect_release_cases`.
        seed: seed of the subject shuffle.
        validation_fraction: share of subjects for validation.

    Returns:
        The decathlon-style datalist: ``training``, ``validation``, ``num_classes``, ``labels`` (training index ->
        name), ``modality`` (channel -> name), ``label_mapping``, ``inverse_label_mapping`` and ``split``.

    Raises:
        ValueError: too few subjects for the requested split.
    """
    training, validation = split_subjects(cases, validation_fraction, seed, stratify_key="group")
    mapping, inverse = label_mappings(scan.labels)
    stratified = any("group" in case for case in cases)
    return make_datalist(
        training,
        validation,
        name=scan.name,
        num_classes=len(scan.labels),
        labels={str(index): scan.labels[value] for index, value in enumerate(mapping["orig_labels"])},
        modality={str(index): name for index, name in enumerate(scan.modalities)},
        label_mapping=mapping,
        inverse_label_mapping=inverse,
        split={
            "seed": seed,
            "validation_fraction": validation_fraction,
            "by": "subject, stratified by group" if stratified else "subject",
        },
    )


def _print_failures(failures: dict[str, str], header: str) -> None:
    print(header, file=sys.stderr)
    for item, reason in failures.items():
        print(f"  {item}: {reason}", file=sys.stderr)


def prepare_release_cli(release: Release, argv: Sequence[str] | None = None, description: str | None = None) -> int:
    """Command line shared by the release preparation scripts: scan, check, split and write the datalist.

    Usage: ``DATA_DIR [--output DATA_DIR/datalist.json] [--seed 0] [--validation-fraction 0.5] [--overwrite]``.
    Bad cases are listed at the end and the good ones are still written.

    Args:
        release: the release adapter.
        argv: arguments without the program name; ``sys.argv[1:]`` when None.
        description: help text of the script.

    Returns:
        The exit status: 0 on success, 1 when the datalist was written but some cases failed, 2 when nothing was
        written (existing datalist without ``--overwrite``, unusable folder, fewer than two usable subjects).
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help=release.folder_help)
    parser.add_argument("--output", type=Path, help="datalist JSON to write (default: DATA_DIR/datalist.json)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subject split (default 0)")
    parser.add_argument(
        "--validation-fraction", type=float, default=0.5, help="share of subjects for validation (default 0.5)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing datalist")
    args = parser.parse_args(argv)
    if not 0.0 < args.validation_fraction < 1.0:
        parser.error(f"--validation-fraction must lie in (0, 1), got {args.validation_fraction}")
    output = args.output or args.data_dir / "datalist.json"
    if output.exists() and not args.overwrite:
        print(f"error: {output} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        if not args.data_dir.is_dir():
            raise FileNotFoundError(f"{args.data_dir}: not a folder")
        scan = release.scan(args.data_dir)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = collect_release_cases(scan, args.data_dir)
    for item, reason in report.skipped.items():
        print(f"skipped {item}: {reason}")
    try:
        datalist = release_datalist(scan, report.cases, args.seed, args.validation_fraction)
    except ValueError as error:
        print(f"error: {args.data_dir}: {error}", file=sys.stderr)
        if report.failures:
            _print_failures(report.failures, f"{len(report.failures)} case(s) failed:")
        return 2
    write_json_atomic(datalist, output, overwrite=args.overwrite)
    subjects = {case["subject"] for case in report.cases}
    print(
        f"wrote {output}: {datalist['numTraining']} training / {datalist['numValidation']} validation cases "
        f"from {len(subjects)} {release.name} subjects"
    )
    if report.failures:
        _print_failures(report.failures, f"{len(report.failures)} case(s) failed and were left out:")
        return 1
    return 0


BRATS = Release("BraTS", "BraTS 2017/2018 training folder holding HGG/ and LGG/", scan_brats)
KITS19 = Release("KiTS19", "kits19 data folder holding case_XXXXX/ folders", scan_kits19)
MSD = Release("MSD", "Decathlon task folder holding dataset.json, imagesTr/ and labelsTr/", scan_msd)

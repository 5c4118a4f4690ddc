"""Public data releases (BraTS, KiTS19, MSD): their folder layouts, label values and the authors' splits.

Each release has a small adapter (a *scan*) that only knows the release's layout: where the cases are, which
files make up a case and what the label values mean. What every release shares (checking the cases, the label
mapping, the datalist) is in :mod:`common.data.preparation`.

Layouts understood:

BraTS 2017/2018 (``scan_brats``)::

    <root>/{HGG,LGG}/<subject>/<subject>_{t1,t1ce,t2,flair,seg}.nii.gz    labels 0, 1, 2, 4

KiTS19 (``scan_kits19``)::

    <root>/case_XXXXX/imaging.nii.gz, segmentation.nii.gz    labels 0, 1 kidney, 2 tumour

Medical Segmentation Decathlon (``scan_msd``)::

    <root>/dataset.json    ("labels", "modality" and "training" entries)
    <root>/imagesTr/*.nii.gz    (4D, modality last, when dataset.json lists several modalities)
    <root>/labelsTr/*.nii.gz
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.data.splits import Split, parity_split, position_parity_split

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
        sources: other files the preparation reads (e.g. ``dataset.json``), relative to the release folder; with
            the cases' images and labels they are the release's inputs, which no output may replace.
    """

    name: str
    labels: dict[int, str]
    modalities: tuple[str, ...]
    image_channels: int
    cases: list[ReleaseCase]
    skipped: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    sources: tuple[Path, ...] = ()

    def inputs(self, root: Path) -> list[Path]:
        """Every file of the release that the preparation reads (sources, images, labels), under ``root``."""
        relative = [*self.sources, *(path for case in self.cases for path in (*case.images, case.label))]
        return [root / path for path in relative]


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
    """Parse a ``dataset.json`` entry such as ``{"0": "background", "1": "liver"}`` into ``{0: ..., 1: ...}``.

    Raises:
        ValueError: not such an object, a key that is not an integer, two keys for one value (``"1"`` and
            ``"01"``), or a name that is not a string.
    """
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f'{path}: \'{key}\' must be a non-empty object such as {{"0": "..."}}')
    try:
        parsed = {int(value): name for value, name in mapping.items()}
    except ValueError as error:
        raise ValueError(f"{path}: '{key}' keys must be integers written as strings ({error})") from error
    if len(parsed) != len(mapping):
        raise ValueError(f"{path}: '{key}' names one value twice ({sorted(mapping)}); keep one key per value")
    not_text = {value: name for value, name in parsed.items() if not isinstance(name, str)}
    if not_text:
        raise ValueError(f"{path}: '{key}' names must be strings, got {not_text}")
    return parsed


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
    scan.sources = (Path(description_path.name),)
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


BRATS = Release("BraTS", "BraTS 2017/2018 training folder holding HGG/ and LGG/", scan_brats, brats_authors_split)


KITS19 = Release("KiTS19", "kits19 data folder holding case_XXXXX/ folders", scan_kits19, kits19_authors_split)


MSD = Release("MSD", "Decathlon task folder holding dataset.json, imagesTr/ and labelsTr/", scan_msd)

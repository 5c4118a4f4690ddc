"""The ACDC 2017 release's folders: its subjects, their ``Info.cfg`` and the ED/ES frames with their labels.

Layout::

    <root>/training/patientNNN/Info.cfg
    <root>/training/patientNNN/patientNNN_frameXX.nii.gz      (ED and ES frames)
    <root>/training/patientNNN/patientNNN_frameXX_gt.nii.gz   (0 background, 1 RV, 2 myocardium, 3 LV)

Subjects without ``_gt`` files (the 2017 test set) are skipped; every other subject is checked and either gives
its cases or is reported with the reason it is left out.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from common.data.datalists import PreparationReport
from common.data.geometry import volume_geometry
from common.data.nifti import check_image_label_pair

ACDC_SUBJECT_PATTERN = re.compile(r"patient(\d{3})")


def read_acdc_info(path: str | os.PathLike) -> dict[str, str]:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines) into a dictionary of strings."""
    info = {}
    for line in Path(path).read_text().splitlines():
        key, separator, value = line.partition(":")
        if separator:
            info[key.strip()] = value.strip()
    return info


def find_acdc_subjects(root: str | os.PathLike) -> list[Path]:
    """Return the ``patientNNN`` folders (holding an ``Info.cfg``) anywhere under ``root``, sorted by name then path.

    Folders of the same name from different places (two sites' ``patient001``) are all returned: they are
    different subjects, told apart by their path relative to ``root``.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    subjects = [info.parent for info in root.rglob("Info.cfg") if ACDC_SUBJECT_PATTERN.fullmatch(info.parent.name)]
    return sorted(subjects, key=lambda folder: (folder.name, folder.as_posix()))


def acdc_inputs(root: str | os.PathLike) -> list[Path]:
    """Every file of the ``patientNNN`` folders under ``root`` (``Info.cfg``, frames, labels): the preparation's inputs.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    return [path for subject in find_acdc_subjects(root) for path in sorted(subject.iterdir()) if path.is_file()]


def acdc_subject_cases(subject_dir: Path, root: Path, num_classes: int = 4) -> list[dict[str, Any]]:
    """Describe the labelled ED and ES frames of one ACDC subject as datalist entries.

    Args:
        subject_dir: the ``patientNNN`` folder.
        root: data set folder; entry paths are relative to it.
        num_classes: classes including background.

    Returns:
        One entry per labelled frame with ``image``, ``label``, ``subject`` (the folder's path relative to ``root``,
        so that two sites' ``patient001`` stay two subjects), ``patient_id`` (NNN), ``phase``, ``group``,
        ``shape``, ``spacing`` and ``slice_axis`` (see :func:`common.data.geometry.volume_geometry`).

    Raises:
        ValueError: a malformed ``Info.cfg`` or frame (the message names the file).
        FileNotFoundError: a frame listed in ``Info.cfg`` is missing (a subject without any ``_gt`` files is
            reported by the caller as unlabelled instead).
    """
    info_path = subject_dir / "Info.cfg"
    info = read_acdc_info(info_path)
    cases = []
    for phase in ("ED", "ES"):
        if not info.get(phase, "").isdigit():
            raise ValueError(f"{info_path}: missing or non-integer '{phase}' entry")
        stem = f"{subject_dir.name}_frame{int(info[phase]):02d}"
        image_path, label_path = subject_dir / f"{stem}.nii.gz", subject_dir / f"{stem}_gt.nii.gz"
        for path in (image_path, label_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing ({phase} frame listed in {info_path})")
        shape, affine = check_image_label_pair(image_path, label_path, num_classes)
        geometry = volume_geometry(affine, len(shape))
        cases.append(
            {
                "image": image_path.relative_to(root).as_posix(),
                "label": label_path.relative_to(root).as_posix(),
                "subject": subject_dir.relative_to(root).as_posix(),
                "patient_id": int(ACDC_SUBJECT_PATTERN.fullmatch(subject_dir.name).group(1)),
                "phase": phase,
                "group": info.get("Group", "unknown"),
                "shape": list(shape),
                "spacing": geometry.spacing,
                "slice_axis": geometry.slice_axis,
            }
        )
    return cases


def collect_acdc_cases(root: str | os.PathLike, num_classes: int = 4) -> PreparationReport:
    """Check every ACDC subject under ``root``, keeping the good ones and recording why the others failed.

    Subjects without any ``_gt`` file (the unlabelled 2017 test set) are skipped, not failed.
    """
    root = Path(root)
    report = PreparationReport()
    for subject_dir in find_acdc_subjects(root):
        if not any(subject_dir.glob("*_gt.nii*")):
            report.skipped[subject_dir.relative_to(root).as_posix()] = "no ground truth (_gt) files"
            continue
        try:
            report.cases.extend(acdc_subject_cases(subject_dir, root, num_classes))
        except (ValueError, FileNotFoundError) as error:
            report.failures[subject_dir.relative_to(root).as_posix()] = str(error)
    return report

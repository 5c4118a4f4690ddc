"""Datalist helpers: find the cases of a public release, check them, split subjects, write the datalist JSON.

Datalists follow MONAI's decathlon format (``{"training": [...], "validation": [...]}`` with paths relative to
the data set folder); bundles load them with :func:`load_datalist`, which resolves only the ``image`` and ``label``
paths (MONAI's ``load_decathlon_datalist`` also rewrites any other string that happens to name a file or folder
under the data set folder, such as ``"subject": "case_00000"`` or ``"group": "HGG"``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from common.maps import check_label

ACDC_SUBJECT_PATTERN = re.compile(r"patient\d{3}")


@dataclass
class PreparationReport:
    """Outcome of a datalist preparation: the usable cases and, per rejected item, why it was rejected."""

    cases: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file next to ``path`` that replaces ``path`` only if the block finishes.

    Readers never see a half-written file and an interrupted write leaves any earlier file intact. The
    temporary name keeps the extension (``.nii.gz`` included) so that writers choosing a format by it work.

    Args:
        path: destination file; parent folders are created.

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.name[-len(".nii.gz") :] if path.name.lower().endswith(".nii.gz") else path.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp_name)
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def write_json_atomic(data: Any, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write JSON atomically (see :func:`atomic_output`).

    Args:
        data: JSON-serialisable object.
        path: destination file; parent folders are created.
        overwrite: replace an existing file; otherwise an existing file is an error.

    Returns:
        The destination path.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; pass overwrite=True (--overwrite) to replace it")
    with atomic_output(path) as tmp_path:
        tmp_path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def load_volume(path: str | os.PathLike, spatial_dims: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume and check that it has the expected number of spatial dimensions.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        spatial_dims: required number of dimensions.

    Returns:
        The voxel array and the 4x4 affine.

    Raises:
        ValueError: the file cannot be read (message names the file and the reason) or has another
            number of dimensions.
    """
    try:
        image = nib.load(os.fspath(path))
        array = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises several unrelated types for corrupt files
        raise ValueError(f"{path}: cannot read as NIfTI ({type(error).__name__}: {error})") from error
    if array.ndim != spatial_dims:
        raise ValueError(f"{path}: expected a {spatial_dims}D volume, got shape {array.shape}")
    return array, image.affine


def check_image_label_pair(
    image_path: str | os.PathLike, label_path: str | os.PathLike, num_classes: int
) -> tuple[int, ...]:
    """Check that an image and its label are readable 3D volumes on the same grid with valid class indices.

    Args:
        image_path: image file.
        label_path: label file.
        num_classes: classes including background; labels must lie in ``[0, num_classes)``.

    Returns:
        The volume shape.

    Raises:
        ValueError: with the offending file and the problem.
    """
    image, image_affine = load_volume(image_path)
    label, label_affine = load_volume(label_path)
    if image.shape != label.shape:
        raise ValueError(f"{label_path}: shape {label.shape} differs from the image's {image.shape} ({image_path})")
    if not np.allclose(image_affine, label_affine, atol=1e-3):
        raise ValueError(f"{label_path}: affine differs from the image's ({image_path})")
    try:
        check_label(label, num_classes)
    except ValueError as error:
        raise ValueError(f"{label_path}: {error}") from error
    return tuple(int(s) for s in image.shape)


def read_acdc_info(path: str | os.PathLike) -> dict[str, str]:
    """Parse an ACDC ``Info.cfg`` (``Key: value`` lines) into a dictionary of strings."""
    info = {}
    for line in Path(path).read_text().splitlines():
        key, separator, value = line.partition(":")
        if separator:
            info[key.strip()] = value.strip()
    return info


def find_acdc_subjects(root: str | os.PathLike) -> list[Path]:
    """Return the ``patientNNN`` folders (holding an ``Info.cfg``) anywhere under ``root``, sorted by name.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    subjects = [info.parent for info in root.rglob("Info.cfg") if ACDC_SUBJECT_PATTERN.fullmatch(info.parent.name)]
    return sorted(subjects, key=lambda folder: folder.name)


def acdc_subject_cases(subject_dir: Path, root: Path, num_classes: int = 4) -> list[dict[str, Any]]:
    """Describe the labelled ED and ES frames of one ACDC subject as datalist entries.

    Args:
        subject_dir: the ``patientNNN`` folder.
        root: data set folder; entry paths are relative to it.
        num_classes: classes including background.

    Returns:
        One entry per labelled frame with ``image``, ``label``, ``subject``, ``phase``, ``group`` and ``shape``.

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
        shape = check_image_label_pair(image_path, label_path, num_classes)
        cases.append(
            {
                "image": image_path.relative_to(root).as_posix(),
                "label": label_path.relative_to(root).as_posix(),
                "subject": subject_dir.name,
                "phase": phase,
                "group": info.get("Group", "unknown"),
                "shape": list(shape),
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
            report.skipped[subject_dir.name] = "no ground truth (_gt) files"
            continue
        try:
            report.cases.extend(acdc_subject_cases(subject_dir, root, num_classes))
        except (ValueError, FileNotFoundError) as error:
            report.failures[subject_dir.name] = str(error)
    return report


def split_subjects(
    cases: Iterable[dict[str, Any]],
    validation_fraction: float = 0.5,
    seed: int = 0,
    subject_key: str = "subject",
    stratify_key: str | None = "group",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split cases into training and validation by subject, so that no subject lands in both.

    Subjects are shuffled with ``seed`` within each stratum (e.g. ACDC pathology group), the strata are laid
    end to end, and every subject at which the running count ``floor(i * validation_fraction)`` steps up goes to
    validation: the overall share is exact up to rounding and every stratum is split in the same proportion.

    Args:
        cases: datalist entries.
        validation_fraction: share of subjects used for validation, in (0, 1).
        seed: seed of the shuffle.
        subject_key: entry key identifying the subject.
        stratify_key: entry key to stratify on, or None.

    Returns:
        The training and the validation entries, each in the input order.

    Raises:
        ValueError: ``validation_fraction`` outside (0, 1), or too few subjects to fill both sides.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction}")
    cases = list(cases)
    strata: dict[str, set[str]] = defaultdict(set)
    for case in cases:
        strata[str(case.get(stratify_key, "")) if stratify_key else ""].add(case[subject_key])
    rng = np.random.default_rng(seed)
    ordered: list[str] = []
    for stratum in sorted(strata):
        subjects = sorted(strata[stratum])
        rng.shuffle(subjects)
        ordered.extend(subjects)
    validation_subjects = {
        subject
        for index, subject in enumerate(ordered)
        if np.floor((index + 1) * validation_fraction) > np.floor(index * validation_fraction)
    }
    if not validation_subjects or len(validation_subjects) == len(ordered):
        raise ValueError(
            f"{len(ordered)} subject(s) with validation_fraction={validation_fraction} leave training or "
            "validation empty"
        )
    training = [case for case in cases if case[subject_key] not in validation_subjects]
    validation = [case for case in cases if case[subject_key] in validation_subjects]
    return training, validation


def make_datalist(
    training: Sequence[dict[str, Any]], validation: Sequence[dict[str, Any]], **metadata: Any
) -> dict[str, Any]:
    """Assemble a decathlon-style datalist with free-form metadata (labels, split seed, source) on top."""
    return {
        **metadata,
        "numTraining": len(training),
        "numValidation": len(validation),
        "training": list(training),
        "validation": list(validation),
    }


def load_datalist(
    path: str | os.PathLike,
    key: str = "training",
    base_dir: str | os.PathLike | None = None,
    path_keys: Sequence[str] = ("image", "label"),
) -> list[dict[str, Any]]:
    """Read one section of a decathlon-style datalist, resolving only the file fields against ``base_dir``.

    Args:
        path: the datalist JSON file.
        key: section to read (``"training"``, ``"validation"``, ...).
        base_dir: folder that relative paths start from (default: the datalist's folder).
        path_keys: entry fields holding a path or a list of paths (e.g. one per modality); other fields are kept
            as they are.

    Returns:
        The entries, with absolute paths in ``path_keys``.

    Raises:
        FileNotFoundError: the datalist does not exist.
        ValueError: the file is not valid JSON, lacks the section, or an entry is malformed (the message names the
            file and the entry).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: datalist not found; write it with the scripts/prepare_*.py of the data set")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(content, dict) or not isinstance(content.get(key), list):
        raise ValueError(f"{path}: no '{key}' list of entries")
    root = Path(base_dir) if base_dir is not None else path.parent

    def resolve(value: Any, index: int, field_name: str) -> str:
        if not isinstance(value, str):
            raise ValueError(f"{path}: {key}[{index}].{field_name} must be a path or a list of paths, got {value!r}")
        return os.path.normpath(root / value)

    entries = []
    for index, entry in enumerate(content[key]):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {key}[{index}] is not an object")
        entry = dict(entry)
        for field_name in path_keys:
            if field_name in entry:
                value = entry[field_name]
                entry[field_name] = (
                    [resolve(item, index, field_name) for item in value]
                    if isinstance(value, list)
                    else resolve(value, index, field_name)
                )
        entries.append(entry)
    return entries


def read_datalist_field(path: str | os.PathLike, field_name: str) -> Any:
    """Return a top-level field of a datalist JSON (``num_classes``, ``label_mapping``, ...).

    Raises:
        FileNotFoundError: the datalist does not exist.
        KeyError: the field is absent (the message names the file and the preparation script that writes it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: datalist not found; write it with the scripts/prepare_*.py of the data set")
    content = json.loads(path.read_text())
    if field_name not in content:
        raise KeyError(f"{path}: no '{field_name}' entry; prepare the datalist with scripts/prepare_*.py")
    return content[field_name]

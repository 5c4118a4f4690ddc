"""Datalist helpers: find the cases of a public release, check them, write and read the datalist JSON.

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
import threading
import warnings
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from common.geometry import volume_geometry
from common.maps import check_label

ACDC_SUBJECT_PATTERN = re.compile(r"patient(\d{3})")
_UMASK_LOCK = threading.Lock()


@dataclass
class PreparationReport:
    """Outcome of a datalist preparation: the usable cases and, per rejected item, why it was rejected."""

    cases: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _creation_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: ``0o666`` less the process umask."""
    with _UMASK_LOCK:  # reading the umask means setting it; keep other threads from seeing the 0 in between
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_output(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary file next to ``path`` that replaces ``path`` only if the block finishes.

    Readers never see a half-written file and an interrupted write leaves any earlier file intact. The
    temporary name keeps the extension (``.nii.gz`` in any letter case included) so that writers choosing a format
    by it work. The finished file gets the permissions of a plain write (``0o666`` less the umask; ``mkstemp``
    alone would leave ``0o600``).

    Args:
        path: destination file; parent folders are created.
        replace: replace a file at ``path``; False refuses one that exists when the block finishes (also one that
            appeared while it ran: the finished file is linked into place, which fails on an existing name).

    Yields:
        The temporary path to write to.

    Raises:
        FileExistsError: ``path`` exists when the block finishes and ``replace`` is False.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.name[-len(".nii.gz") :] if path.name.lower().endswith(".nii.gz") else path.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp_name)
        os.chmod(tmp_name, _creation_mode())
        if replace:
            os.replace(tmp_name, path)
        else:
            os.link(tmp_name, path)
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


def load_nifti(path: str | os.PathLike) -> nib.Nifti1Image:
    """Open a NIfTI-1 or NIfTI-2 file lazily whatever the letter case of its extension.

    ``nib.load`` looks for ``x.nii`` when given ``x.Nii``; a file map of the exact name avoids that, and the
    compression follows the ``.gz`` extension in any case.
    """
    holder = nib.FileHolder(filename=os.fspath(path))
    try:
        return nib.Nifti1Image.from_file_map({"header": holder, "image": holder})
    except nib.spatialimages.HeaderDataError:  # a NIfTI-2 header has another size
        return nib.Nifti2Image.from_file_map({"header": holder, "image": holder})


def load_volume(path: str | os.PathLike, spatial_dims: int | Collection[int] = 3) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI volume and check that it has the expected number of spatial dimensions.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        spatial_dims: required number of dimensions, or the accepted numbers (``(2, 3)``: 2D or 3D files).

    Returns:
        The voxel array and the 4x4 affine.

    Raises:
        ValueError: the file cannot be read (message names the file and the reason) or has another
            number of dimensions.
    """
    accepted = {spatial_dims} if isinstance(spatial_dims, int) else set(spatial_dims)
    try:
        image = load_nifti(path)
        array = np.asanyarray(image.dataobj)
    except Exception as error:  # nibabel raises several unrelated types for corrupt files
        raise ValueError(f"{path}: cannot read as NIfTI ({type(error).__name__}: {error})") from error
    if array.ndim not in accepted:
        expected = " or ".join(f"{count}D" for count in sorted(accepted))
        raise ValueError(f"{path}: expected a {expected} volume, got shape {array.shape}")
    return array, image.affine


def check_image_label_pair(
    image_path: str | os.PathLike, label_path: str | os.PathLike, num_classes: int
) -> tuple[tuple[int, ...], np.ndarray]:
    """Check that an image and its label are readable 3D volumes on the same grid with valid class indices.

    Args:
        image_path: image file.
        label_path: label file.
        num_classes: classes including background; labels must lie in ``[0, num_classes)``.

    Returns:
        The volume shape and the affine.

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
    return tuple(int(s) for s in image.shape), image_affine


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


def acdc_subject_cases(subject_dir: Path, root: Path, num_classes: int = 4) -> list[dict[str, Any]]:
    """Describe the labelled ED and ES frames of one ACDC subject as datalist entries.

    Args:
        subject_dir: the ``patientNNN`` folder.
        root: data set folder; entry paths are relative to it.
        num_classes: classes including background.

    Returns:
        One entry per labelled frame with ``image``, ``label``, ``subject`` (the folder's path relative to ``root``,
        so that two sites' ``patient001`` stay two subjects), ``patient_id`` (NNN), ``phase``, ``group``,
        ``shape``, ``spacing`` and ``slice_axis`` (see :func:`common.geometry.volume_geometry`).

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


def make_datalist(
    training: Sequence[dict[str, Any]],
    validation: Sequence[dict[str, Any]],
    test: Sequence[dict[str, Any]] | None = None,
    **metadata: Any,
) -> dict[str, Any]:
    """Assemble a decathlon-style datalist with free-form metadata (labels, split record, source) on top."""
    sections = {"training": list(training), "validation": list(validation)}
    if test is not None:
        sections["test"] = list(test)
    counts = {f"num{name.capitalize()}": len(cases) for name, cases in sections.items()}
    return {**metadata, **counts, **sections}


def _read_datalist(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: datalist not found; write it with the scripts/prepare_*.py of the data set")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object with a 'training' list")
    return content


def load_datalist(
    path: str | os.PathLike,
    key: str = "training",
    base_dir: str | os.PathLike | None = None,
    path_keys: Sequence[str] = ("image", "label"),
) -> list[dict[str, Any]]:
    """Read one section of a decathlon-style datalist, resolving only the file fields against ``base_dir``.

    Plain MSD ``dataset.json`` files work as they are: entries need only ``image`` and ``label``; the project's
    extra fields (``subject``, ``shape``, ``spacing``, ...) are optional. A datalist without cases in
    ``validation`` (a plain ``dataset.json``, or one prepared with ``--validation-fraction 0``) gives the
    ``training`` cases for that section, with a warning: training then validates on its own cases, which checks
    the fit, not generalisation.

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
    content = _read_datalist(path)
    if key == "validation" and not content.get(key) and isinstance(content.get("training"), list):
        warnings.warn(
            f"{path}: no validation cases; validating on the {len(content['training'])} training case(s) "
            "(a fit check, not a held-out score)",
            stacklevel=2,
        )
        key = "training"
    if not isinstance(content.get(key), list):
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


def _label_values(content: dict[str, Any], path: Path) -> list[int]:
    """The label values of a datalist's ``labels`` object (``{"0": "background", ...}``), in increasing order."""
    labels = content.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise KeyError(
            f'{path}: no \'labels\' object ({{"0": "background", ...}}) to derive the classes from; prepare the '
            "datalist with scripts/prepare_*.py or add it"
        )
    try:
        return sorted(int(value) for value in labels)
    except ValueError as error:
        raise ValueError(f"{path}: 'labels' keys must be integers written as strings ({error})") from error


def _identity_mapping(content: dict[str, Any], path: Path) -> dict[str, list[int]]:
    values = _label_values(content, path)
    return {"orig_labels": values, "target_labels": list(range(len(values)))}


def _inverse_identity_mapping(content: dict[str, Any], path: Path) -> dict[str, list[int]]:
    mapping = _identity_mapping(content, path)
    return {"orig_labels": mapping["target_labels"], "target_labels": mapping["orig_labels"]}


DERIVED_FIELDS: dict[str, Any] = {
    "num_classes": lambda content, path: len(_label_values(content, path)),
    "label_mapping": _identity_mapping,
    "inverse_label_mapping": _inverse_identity_mapping,
    "class_names": lambda content, path: [str(content["labels"][str(v)]) for v in _label_values(content, path)][1:],
}
"""Fields that a plain ``dataset.json`` lacks and that follow from its ``labels``: the label values in increasing
order become the training indices ``0 .. n - 1`` (``label_mapping``) and back (``inverse_label_mapping``), and
``class_names`` lists the foreground names in that order (``scripts/prepare_*.py`` write it directly)."""

_MISSING = object()


def read_datalist_field(path: str | os.PathLike, field_name: str, default: Any = _MISSING) -> Any:
    """Return a top-level field of a datalist JSON (``num_classes``, ``label_mapping``, ``slice_axis``, ...).

    A field the file lacks is derived from its ``labels`` when :data:`DERIVED_FIELDS` knows how (so a plain MSD
    ``dataset.json`` works), else ``default`` is returned when given; ``default`` is also returned when the file
    does not exist (configs can then be parsed without data; :func:`load_datalist` reports the missing file).

    Raises:
        FileNotFoundError: the datalist does not exist.
        KeyError: the field is absent, cannot be derived and has no default (the message names the file and the
            preparation script that writes it).
    """
    path = Path(path)
    if default is not _MISSING and not path.exists():
        return default  # building a pipeline needs no data; reading the cases reports the missing datalist
    content = _read_datalist(path)
    if field_name in content:
        return content[field_name]
    if field_name in DERIVED_FIELDS and "labels" in content:
        return DERIVED_FIELDS[field_name](content, path)
    if default is not _MISSING:
        return default
    raise KeyError(f"{path}: no '{field_name}' entry; prepare the datalist with scripts/prepare_*.py")

"""Datalists: the decathlon-style datalist JSON assembled from prepared cases, its sections and fields read back.

Datalists follow MONAI's decathlon format (``{"training": [...], "validation": [...]}`` with paths relative to
the data set folder); bundles load them with :func:`load_datalist`, which resolves only the ``image`` and ``label``
paths (MONAI's ``load_decathlon_datalist`` also rewrites any other string that happens to name a file or folder
under the data set folder, such as ``"subject": "case_00000"`` or ``"group": "HGG"``). Reading a section checks what
training would otherwise get wrong quietly or report unclearly: an empty section is refused naming the datalist
(instead of the DataLoader's ``num_samples=0``), a NIfTI header that claims more data than its file holds is
refused before anything is allocated, and a case listed twice, or in both training and validation, is warned
about. Class names (:func:`check_class_names`) must suit the Markdown and CSV tables they end up in.
"""

from __future__ import annotations

import json
import os
import sys
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.data.nifti import NIFTI_SUFFIXES, UnreadableVolumeError, load_nifti
from common.errors import UserError, ensure_absent


@dataclass
class PreparationReport:
    """Outcome of a datalist preparation: the usable cases and, per rejected item, why it was rejected."""

    cases: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def check_output(output: Path, inputs: Iterable[Path], overwrite: bool) -> None:
    """Refuse a datalist output that would replace an input, a folder, or (without ``overwrite``) an earlier file.

    No option may write over a file the preparation reads, with ``--overwrite`` or not: the output is compared
    with every input after resolving links and ``..``, and as the same file (a hard link). A NIfTI name is refused
    too: a datalist is JSON, and such a name is an image or label of the data set.

    Args:
        output: the datalist file to write.
        inputs: every file the preparation reads (description, images, labels).
        overwrite: whether an earlier datalist may be replaced.

    Raises:
        UserError: the output is an input, has a NIfTI name or lies below a file (names it and the fix).
        OutputExistsError: the output is a folder, or exists and ``overwrite`` is False.
    """
    target = os.path.realpath(output)
    for path in inputs:
        if os.path.realpath(path) == target or (output.exists() and path.exists() and os.path.samefile(path, output)):
            raise UserError(
                f"{output}: is an input of the preparation ({path}); it is never replaced, --overwrite or not: give "
                "--output another file (default: datalist.json in the data folder)"
            )
    if output.name.lower().endswith(NIFTI_SUFFIXES):
        raise UserError(f"{output}: a NIfTI name; the datalist is JSON: give --output a .json file name")
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{output}: {parent} is a file, not a folder; give --output a path in a folder")
    ensure_absent(output, overwrite=overwrite)


def print_items(items: dict[str, str], header: str) -> None:
    """Print a header and one indented ``item: reason`` line per entry (a report's failures or notes) to stderr."""
    print(header, file=sys.stderr)
    for item, reason in items.items():
        print(f"  {item}: {reason}", file=sys.stderr)


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


def check_class_names(names: Sequence[str], source: str) -> None:
    """Refuse class names that would break the result tables or be ambiguous.

    Names end up in Markdown tables (where ``|`` starts a new cell and a line break a new row), CSV files and
    ``--labels NAME`` selections (case-insensitive), so each must be a non-empty string without ``|`` or control
    characters, and no two may be equal ignoring case.

    Args:
        names: every class name, background included.
        source: where the names come from (a file, an option), for the message.

    Raises:
        UserError: naming the source, the bad name and the fix.
    """
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"{source}: class name {name!r} is not a non-empty text; give every class a name")
        bad = sorted({repr(char) for char in name if char == "|" or unicodedata.category(char).startswith("C")})
        if bad:
            raise UserError(
                f"{source}: class name {name!r} holds {', '.join(bad)}, which break the result tables; rename it "
                "(no '|', line breaks or other control characters)"
            )
    seen: dict[str, str] = {}
    for name in names:
        if name.strip().lower() in seen:
            raise UserError(
                f"{source}: two classes are named {seen[name.strip().lower()]!r} and {name!r}; class names must "
                "differ (merge the labels into one class with --merge NAME=L1,L2, or rename one)"
            )
        seen[name.strip().lower()] = name


def _case_key(entry: dict[str, Any]) -> str | None:
    image = entry.get("image")
    if isinstance(image, list):
        return "|".join(map(str, image))
    return str(image) if isinstance(image, str) else None


def _case_name(entry: dict[str, Any]) -> str:
    return str(entry.get("subject") or entry.get("image"))


def warn_repeated_cases(content: dict[str, Any], path: Path) -> list[str]:
    """Print one warning line per case listed twice in ``training`` or in both ``training`` and ``validation``.

    A repeated case weighs twice in training; one in both sections makes the validation score a fit check, not a
    held-out score. Cases are compared by image path and, across the sections, also by ``subject``.

    Args:
        content: the datalist.
        path: its file, for the messages.

    Returns:
        The warning lines (also printed on stderr).
    """
    sections = {key: content.get(key) for key in ("training", "validation")}
    training, validation = (
        [entry for entry in section if isinstance(entry, dict)] if isinstance(section, list) else []
        for section in sections.values()
    )
    lines = []
    counts: dict[str, int] = {}
    for entry in training:
        key = _case_key(entry)
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
            if counts[key] == 2:
                lines.append(f"warning: {path}: case {_case_name(entry)} is listed more than once in 'training'")
    training_images = {_case_key(entry) for entry in training} - {None}
    training_subjects = {entry.get("subject") for entry in training} - {None}
    both = [
        entry
        for entry in validation
        if _case_key(entry) in training_images or (entry.get("subject") in training_subjects)
    ]
    for name in dict.fromkeys(_case_name(entry) for entry in both):
        lines.append(
            f"warning: {path}: case {name} is in both 'training' and 'validation'; the validation score is not a "
            "held-out score (prepare the datalist again with scripts/prepare_*.py)"
        )
    for line in lines:
        print(line, file=sys.stderr)
    return lines


def check_headers(entries: Sequence[dict[str, Any]], path_keys: Sequence[str]) -> None:
    """Open the header of every existing NIfTI file of ``entries`` (absolute paths) through the project's opener.

    Only a header claiming more voxel data than its file holds is refused here, before a data loader allocates
    it; other problems are left to the loaders and checks, which name the file too.

    Raises:
        UnreadableVolumeError: naming the file.
    """
    for entry in entries:
        for field_name in path_keys:
            value = entry.get(field_name)
            for file in value if isinstance(value, list) else [value]:
                if not isinstance(file, str) or not file.lower().endswith(NIFTI_SUFFIXES) or not os.path.isfile(file):
                    continue
                try:
                    load_nifti(file)
                except UnreadableVolumeError:
                    raise
                except Exception:  # noqa: S112 - reported by name when the case is loaded and checked
                    continue


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
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Read one section of a decathlon-style datalist, resolving only the file fields against ``base_dir``.

    Plain MSD ``dataset.json`` files work as they are: entries need only ``image`` and ``label``; the project's
    extra fields (``subject``, ``shape``, ``spacing``, ...) are optional. A datalist without cases in
    ``validation`` (a plain ``dataset.json``, or one prepared with ``--validation-fraction 0``) gives the
    ``training`` cases for that section, with a warning: training then validates on its own cases, which checks
    the fit, not generalisation. Reading ``training`` warns, one line per case, about a case listed twice or in
    both ``training`` and ``validation``.

    Args:
        path: the datalist JSON file.
        key: section to read (``"training"``, ``"validation"``, ...).
        base_dir: folder that relative paths start from (default: the datalist's folder).
        path_keys: entry fields holding a path or a list of paths (e.g. one per modality); other fields are kept
            as they are.
        check_files: open the header of every NIfTI file (see :func:`check_headers`).

    Returns:
        The entries, with absolute paths in ``path_keys``.

    Raises:
        FileNotFoundError: the datalist does not exist.
        UserError: the section holds no case (nothing to train on or to score); names the datalist and the fix.
        UnreadableVolumeError: a NIfTI header claims more data than its file holds (names the file).
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
    if not content[key]:
        raise UserError(
            f"{path}: no cases in '{key}', nothing to "
            f"{'train on' if key == 'training' else 'score'}; prepare the datalist again with scripts/prepare_*.py "
            "(its output lists the cases that failed the checks) or give another --dataset_dir"
        )
    if key == "training":
        warn_repeated_cases(content, path)
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
    if check_files:
        check_headers(entries, path_keys)
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
        values = sorted(int(value) for value in labels)
    except ValueError as error:
        raise ValueError(f"{path}: 'labels' keys must be integers written as strings ({error})") from error
    if len(set(values)) != len(values):
        raise UserError(f"{path}: 'labels' names one value twice ({sorted(labels)}); keep one key per value")
    return values


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
        value = content[field_name]
    elif field_name in DERIVED_FIELDS and "labels" in content:
        value = DERIVED_FIELDS[field_name](content, path)
    else:
        value = _MISSING
    if value is not _MISSING:
        if field_name == "class_names" and isinstance(value, list):
            check_class_names(value, f"{path} class names")
        return value
    if default is not _MISSING:
        return default
    raise KeyError(f"{path}: no '{field_name}' entry; prepare the datalist with scripts/prepare_*.py")

"""Datalists: the decathlon-style datalist JSON assembled from prepared cases, its sections and fields read back.

Datalists follow MONAI's decathlon format (``{"training": [...], "validation": [...]}`` with paths relative to
the data set folder); bundles load them with :func:`load_datalist`, which resolves only the ``image`` and ``label``
paths (MONAI's ``load_decathlon_datalist`` also rewrites any other string that happens to name a file or folder
under the data set folder, such as ``"subject": "case_00000"`` or ``"group": "HGG"``).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PreparationReport:
    """Outcome of a datalist preparation: the usable cases and, per rejected item, why it was rejected."""

    cases: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


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

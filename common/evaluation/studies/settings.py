"""Command-line bundle settings that are data only: ``KEY=VALUE`` parsing and the check that refuses code.

A MONAI bundle config evaluates ``$`` expressions, expands ``%`` macros, follows ``@`` references and instantiates
mappings with ``_target_`` (and honours ``_requires_``, ``_disabled_``, ``_mode_``). A setting given on a command
line must not bring any of these into a run: :func:`check_data_value` is the one check, reusable by every entry
point that passes user values to a bundle (``scripts/run_study.py --set`` uses it through :func:`parse_settings`).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

CODE_PREFIXES = ("$", "%", "@")
KEY_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(#[A-Za-z0-9][A-Za-z0-9_]*)*$")
# settings the study itself sets for every run (locations, split, resume): a --set must not move or replace them
RESERVED_KEYS = frozenset(
    {
        "bundle_root",
        "ckpt_dir",
        "ckpt_path",
        "output_dir",
        "dataset_dir",
        "datalist",
        "seed",
        "resume",
        "resume_checkpoint",
        "overwrite",
        "pretrained_ckpt",
        "finetune",
        "evaluation_dir",
        "keep_earlier_results",
        "imports",
        "initialize",
        "run",
        "finalize",
    }
)
RESERVED_SUFFIXES = ("_dir", "_path", "_file", "_ckpt", "_checkpoint", "_csv", "filename")


class SettingError(ValueError):
    """A setting that is not plain data, or a malformed ``KEY=VALUE``."""


def check_data_value(value: Any, source: str = "value") -> Any:
    """Refuse a value that a MONAI bundle would treat as code, anywhere inside it; return it unchanged otherwise.

    Allowed: ``None``, booleans, finite numbers, strings that do not start with ``$``, ``%`` or ``@``, and lists
    and mappings of these. A mapping key must be a string that does not start with ``_`` (``_target_``,
    ``_requires_``, ``_disabled_``, ``_mode_`` make components) nor with ``$``, ``%`` or ``@``.

    Args:
        value: the parsed value.
        source: what to name in the error, e.g. ``--set filters=...``.

    Returns:
        ``value``.

    Raises:
        SettingError: naming ``source`` and the offending part.
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SettingError(f"{source}: {value!r} is not a finite number")
        return value
    if isinstance(value, str):
        if value.lstrip().startswith(CODE_PREFIXES):
            raise SettingError(
                f"{source}: {value!r} starts with {value.lstrip()[0]!r}, which a bundle config would run as code "
                "or a reference; settings are data only"
            )
        return value
    if isinstance(value, list | tuple):
        for item in value:
            check_data_value(item, source)
        return value
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith(("_", *CODE_PREFIXES)):
                raise SettingError(
                    f"{source}: mapping key {key!r} would make a config component or expression; settings are data only"
                )
            check_data_value(item, source)
        return value
    raise SettingError(f"{source}: {type(value).__name__} values are not allowed; give numbers, strings or lists")


def check_setting_key(key: str, source: str) -> str:
    """Refuse a key that is malformed, that names a component's special field, or that the study sets itself."""
    if not KEY_PATTERN.match(key):
        raise SettingError(f"{source}: {key!r} is not a setting name (letters, digits, '_', parts joined by '#')")
    first = key.split("#")[0]
    if first in RESERVED_KEYS or any(part.endswith(RESERVED_SUFFIXES) for part in key.split("#")):
        raise SettingError(f"{source}: {key!r} is set by the study for every run (locations, split, resume)")
    return key


def parse_setting(text: str, option: str = "--set") -> tuple[str, Any]:
    """Parse one ``KEY=VALUE``; the value is a YAML/JSON scalar or list (``3``, ``0.01``, ``[64, 64]``, ``abc``).

    Raises:
        SettingError: malformed pair, unparsable value, or a value or key refused by the checks above.
    """
    key, separator, raw = text.partition("=")
    source = f"{option} {text}"
    if not separator or not key.strip():
        raise SettingError(f"{option}: expected KEY=VALUE, got {text!r}")
    key = check_setting_key(key.strip(), source)
    if raw.lstrip().startswith(CODE_PREFIXES):
        check_data_value(raw.strip(), source)  # refuse before YAML reads '@x' or '%x' as something else
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise SettingError(f"{source}: not a YAML/JSON value ({str(error).splitlines()[0]})") from error
    return key, check_data_value(value, source)


def parse_settings(texts: Iterable[str], option: str = "--set") -> dict[str, Any]:
    """Parse several ``KEY=VALUE`` texts (a later key replaces an earlier one)."""
    return dict(parse_setting(text, option) for text in texts)


def as_bundle_flag(value: Any) -> str:
    """The command-line form of a data value for ``python -m monai.bundle run`` (Python Fire reads literals).

    Strings go as they are unless Fire would read them as another type; everything else as its Python literal,
    so that ``True`` stays a boolean and ``[64, 64]`` a list.
    """
    if isinstance(value, str):
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        return repr(value)
    return repr(value)

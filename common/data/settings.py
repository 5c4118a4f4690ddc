"""Bundle settings given on a command line: ``KEY=VALUE`` parsed as data, and the one check that refuses code.

A MONAI bundle config evaluates ``$`` expressions, expands ``%`` macros, follows ``@`` references and instantiates
mappings with ``_target_`` (and honours ``_requires_``, ``_disabled_``, ``_mode_``). A setting given on a command
line must not bring any of these into a run: :func:`check_data_value` is the one check, used by every entry point
that passes user values to a bundle (``run_study.py --set``, ``export_bundle.py --set``,
``convergence_study.py --override``) through :func:`parse_settings`.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import yaml

from common.errors import UserError

CODE_PREFIXES = ("$", "%", "@")
KEY_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(#[A-Za-z0-9][A-Za-z0-9_]*)*$")


class SettingError(UserError, ValueError):
    """A setting that is not plain data, or a malformed ``KEY=VALUE``."""


class CodeSettingError(SettingError):
    """A setting value that a bundle config would run as code, expand or follow as a reference."""


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
            raise CodeSettingError(
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
                raise CodeSettingError(
                    f"{source}: mapping key {key!r} would make a config component or expression; settings are data only"
                )
            check_data_value(item, source)
        return value
    raise SettingError(f"{source}: {type(value).__name__} values are not allowed; give numbers, strings or lists")


def check_setting_key(key: str, source: str, reserved: Callable[[str], bool] | None = None) -> str:
    """Refuse a key that is malformed, that names a component's special field, or that ``reserved`` claims."""
    if not KEY_PATTERN.match(key):
        raise SettingError(f"{source}: {key!r} is not a setting name (letters, digits, '_', parts joined by '#')")
    if reserved is not None and reserved(key):
        raise SettingError(f"{source}: {key!r} is set by the entry point itself (locations, split, resume)")
    return key


def parse_setting(
    text: str,
    option: str = "--set",
    reserved: Callable[[str], bool] | None = None,
    allow_code: bool = False,
    allow_option: str | None = None,
) -> tuple[str, Any]:
    """Parse one ``KEY=VALUE``; the value is a YAML/JSON scalar or list (``3``, ``0.01``, ``[64, 64]``, ``abc``).

    Args:
        text: the ``KEY=VALUE`` text as given.
        option: the option to name in errors.
        reserved: says which keys the entry point sets itself and refuses.
        allow_code: skip :func:`check_data_value` (an explicit ``--allow-expressions`` of the entry point); a value
            that starts with ``$``, ``%`` or ``@`` is then kept as the string it is.
        allow_option: the entry point's option that allows code, named in the refusal of a code value.

    Raises:
        SettingError: malformed pair, unparsable value, or a value or key refused by the checks above.
    """
    key, separator, raw = text.partition("=")
    source = f"{option} {text if len(text) <= 80 else text[:77] + '...'}"
    if not separator or not key.strip():
        raise SettingError(f"{option}: expected KEY=VALUE, got {text!r}")
    key = check_setting_key(key.strip(), source, reserved)
    if raw.lstrip().startswith(CODE_PREFIXES):  # before YAML reads '@x' or '%x' as something else
        value: Any = raw.strip()
    else:
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise SettingError(f"{source}: not a YAML/JSON value ({str(error).splitlines()[0]})") from error
        except RecursionError:
            raise SettingError(f"{source}: the value is nested too deeply to read") from None
    if allow_code:
        return key, value
    try:
        return key, check_data_value(value, source)
    except CodeSettingError as error:
        raise CodeSettingError(f"{error} ({allow_option} allows it)" if allow_option else str(error)) from None
    except RecursionError:
        raise SettingError(f"{source}: the value is nested too deeply to check") from None


def parse_settings(
    texts: Iterable[str],
    option: str = "--set",
    reserved: Callable[[str], bool] | None = None,
    allow_code: bool = False,
    allow_option: str | None = None,
) -> dict[str, Any]:
    """Parse several ``KEY=VALUE`` texts (a later key replaces an earlier one); arguments as :func:`parse_setting`."""
    return dict(parse_setting(text, option, reserved, allow_code, allow_option) for text in texts)


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

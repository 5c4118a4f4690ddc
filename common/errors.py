"""User errors and how a failed run reports them: the cause and its fix as the last printed line.

MONAI wraps every error raised inside a config expression or a transform in a ``RuntimeError`` ("Failed to evaluate
ConfigExpression ...", "applying transform ..."), so a bundle run that stops on a user mistake prints a long chained
traceback whose last line is the wrapper, not the cause. :func:`install_error_hook` (installed by importing
:mod:`common.error_hook`, the first import of every bundle config) replaces ``sys.excepthook`` with
:func:`report_uncaught`, which finds the cause in the chain and prints it last.

Exit statuses of ``python -m monai.bundle run ...`` and of the scripts:

- ``0``: success.
- ``1``: a failure that is not a user error (a bug, a corrupt file, running out of memory): Python's traceback,
  then ``error: <type>: <message>`` of the cause; for batch tools (folder inference, evaluation), some items
  failed and the others were processed (each failure is listed with its reason).
- ``2``: a user error (:class:`UserError`, or an existing output, a missing file or folder, a permission problem
  or a read-only file system, a value nested too deeply to process, a config reference that the config files given
  do not define): one line ``error: <message>`` naming the file or option and the fix, and no traceback.

A refused run exits through ``os._exit`` once its line is printed when other threads are still running (a
``CacheDataset`` caching with a thread pool): interpreter shutdown with torch's threads alive can end in
``std::terminate`` (SIGABRT, "terminate called without an active exception") after the line. Outputs are written
atomically (temporary file + rename), so skipping the interpreter's shutdown leaves no partial file; log handlers
are flushed first.
"""

from __future__ import annotations

import ast
import errno
import logging
import os
import re
import sys
import threading
from pathlib import Path
from types import TracebackType

EXIT_FAILURE = 1
EXIT_USER_ERROR = 2

# errors that are the user's to fix (an option, a path, a file) and whose message is complete without a traceback
USER_ERROR_TYPES: tuple[type[BaseException], ...] = (
    FileExistsError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


class UserError(Exception):
    """A mistake in the user's input or options; the message names the file or option and how to fix it."""


class OptionError(UserError, TypeError):
    """An option value of the wrong type or outside its allowed values (still a ``TypeError`` for callers)."""


class OutputExistsError(UserError, FileExistsError):
    """An output of an earlier run would be replaced (still a ``FileExistsError`` for callers)."""


class CheckpointError(UserError, ValueError):
    """A weights or checkpoint file that cannot serve this run (still a ``ValueError`` for callers).

    Truncated, not weights-only (a pickle that would run code), of another network, or trained with other settings;
    the message names the file, what differs and the option that fixes it.
    """


class OptionValueError(UserError, ValueError):
    """An option value that is refused (e.g. an output folder equal to the input); still a ``ValueError``."""


# OSError numbers that say the user's file system refuses the run (not a bug): read-only, no permission, full
_USER_OS_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})
# MONAI's reference resolver: ``ValueError("the referring item `@name` is not defined in the config content.")``
_MISSING_REFERENCE = re.compile(r"^the referring item `@(?P<name>[^`]+)` is not defined in the config content\.?$")


def ensure_absent(*paths: str | os.PathLike, overwrite: bool = False, fix: str | None = None) -> None:
    """Refuse to start a run that would replace earlier results.

    Args:
        paths: files the run is going to write (checkpoints, metric tables).
        overwrite: allow replacing them.
        fix: the options that resolve a refusal, as the caller's users spell them (default: ``--overwrite`` or
            another output location).

    Raises:
        OutputExistsError: one of ``paths`` exists and ``overwrite`` is False, or is a folder (never replaced);
            the message names the file and the fix. It is a ``FileExistsError``.
        OptionError: ``overwrite`` is not a bool (``--overwrite true`` on the command line gives the string
            "true"). It is a ``TypeError``.
    """
    if not isinstance(overwrite, bool):
        raise OptionError(f"overwrite must be True or False, got {overwrite!r}; pass --overwrite True (capitalised)")
    for path in paths:
        if Path(path).is_dir():
            raise OutputExistsError(f"{path}: is a folder, and this output is a file; give a file name")
    if overwrite:
        return
    for path in paths:
        if Path(path).exists():
            raise OutputExistsError(
                f"{path}: already exists from an earlier run; "
                + (fix or "pass --overwrite to replace it or choose another output location")
            )


def as_user_error(error: BaseException) -> UserError | None:
    """The user error that ``error`` stands for when it is not raised as one, else None.

    - ``RecursionError``: a value (a ``--set``/override value, a config entry) nested too deeply to process.
    - an ``OSError`` of a read-only folder, a missing permission or a full disk: names the file or folder.
    - MONAI's missing config reference: the config files given do not define a name (``evaluate.yaml`` run without
      ``train.yaml`` under it) or an override names one that does not exist.
    """
    if isinstance(error, UserError):
        return error
    if isinstance(error, RecursionError):
        return UserError(
            f"a value is nested too deeply to process (more than {sys.getrecursionlimit()} levels: RecursionError); "
            "give a flatter --set/override value or config entry"
        )
    if isinstance(error, OSError) and error.errno in _USER_OS_ERRNOS:
        where = error.filename if error.filename is not None else "an output"
        reason = error.strerror or os.strerror(error.errno)
        folder = Path(str(where)).parent if error.filename is not None and not Path(str(where)).is_dir() else where
        return UserError(
            f"{where}: {reason} (in the folder {folder}); choose a folder you can write (e.g. another --output_dir "
            "or --bundle_root), or make it writable"
        )
    if type(error) is ValueError:
        match = _MISSING_REFERENCE.match(str(error).strip())
        if match:
            return UserError(
                f"the config refers to @{match.group('name')}, which none of the config files given defines; "
                "evaluate.yaml and multi_gpu_train.yaml run merged over train.yaml (--config_file "
                "\"['configs/train.yaml','configs/evaluate.yaml']\"), and an override must name an existing entry"
            )
    return None


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is the user's to fix (see the module docstring), so its message alone is reported."""
    return isinstance(error, (UserError, *USER_ERROR_TYPES)) or as_user_error(error) is not None


def _is_wrapper(error: BaseException) -> bool:
    """A plain ``RuntimeError`` raised ``from`` another error only wraps it (MONAI's config and transform errors)."""
    return type(error) is RuntimeError and error.__cause__ is not None


# torch's DataLoader re-raises a worker's error as a new exception whose message holds the worker's traceback text
_WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):\n"
_CHAINED = "\nThe above exception was the direct cause of the following exception:\n"


class _WorkerError(Exception):
    """An error of a DataLoader worker whose type this process cannot rebuild; keeps the type's name."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


def _rebuild(type_name: str, message: str) -> BaseException:
    """An exception of the named type (looked up in modules already imported) with ``message``."""
    module_name, _, attribute = type_name.rpartition(".")
    error_type = getattr(sys.modules.get(module_name or "builtins"), attribute, None)
    if isinstance(error_type, type) and issubclass(error_type, Exception):
        try:
            return error_type(message)
        except TypeError:  # a constructor that needs other arguments: keep the name and the message
            pass
    return _WorkerError(type_name, message)


def _worker_chain(error: BaseException) -> list[BaseException]:
    """The chain a DataLoader worker's error had in the worker, outermost first, or [] for other errors."""
    text = str(error)
    if _WORKER_TRACEBACK not in text:
        return []
    rebuilt: list[BaseException] = []
    for section in text.split(_WORKER_TRACEBACK, 1)[1].split(_CHAINED):  # innermost first
        lines = section.strip("\n").splitlines()
        last_frame = max((index for index, line in enumerate(lines) if line.startswith(" ")), default=-1)
        type_name, _, message = "\n".join(lines[last_frame + 1 :]).partition(": ")
        rebuilt.append(_rebuild(type_name.strip(), message.strip()))
        if len(rebuilt) > 1:
            rebuilt[-1].__cause__ = rebuilt[-2]
    return rebuilt[::-1]


def root_cause(error: BaseException) -> BaseException:
    """The error that explains ``error``: follow explicit causes (``raise ... from``) past wrapping RuntimeErrors.

    A user error anywhere in the chain wins, the outermost one (its message is the most specific: callers add the
    file name when they re-raise). Otherwise the first error of the chain that does not merely wrap its cause.
    Implicit contexts (an error raised while handling another) are not followed: the later error is the one that
    describes the problem. An error re-raised by torch's DataLoader from a worker process continues the chain
    with the errors rebuilt from the worker's traceback text.

    Args:
        error: the exception that ended the run.

    Returns:
        The exception to report.
    """
    chain = [error]
    while chain[-1].__cause__ is not None and chain[-1].__cause__ not in chain:
        chain.append(chain[-1].__cause__)
    for index, link in enumerate(chain):
        worker_chain = _worker_chain(link)
        if worker_chain:
            chain = chain[:index] + worker_chain
            break
    user_errors = [link for link in chain if is_user_error(link)]
    if user_errors:
        return as_user_error(user_errors[0]) or user_errors[0]
    return next((link for link in chain if not _is_wrapper(link)), chain[-1])


_CONFIG_WRAPPER = "Failed to evaluate ConfigExpression: \n"  # monai.bundle.config_item.ConfigExpression.evaluate


def config_expression(error: BaseException) -> str | None:
    """The bundle config expression whose evaluation raised ``error`` (innermost), written with ``@`` references.

    MONAI wraps such errors in ``RuntimeError("Failed to evaluate ConfigExpression: <pformat of the expression>")``
    with references rewritten as ``__local_refs['a::b']``; this reverses both so the user sees ``@a#b``.
    """
    expression = None
    link: BaseException | None = error
    seen: list[BaseException] = []
    while link is not None and link not in seen:
        seen.append(link)
        message = str(link)
        if _is_wrapper(link) and message.startswith(_CONFIG_WRAPPER):
            try:
                expression = str(ast.literal_eval(message[len(_CONFIG_WRAPPER) :]))
            except (ValueError, SyntaxError):
                expression = message[len(_CONFIG_WRAPPER) :]
        link = link.__cause__
    if expression is None:
        return None
    return re.sub(r"__local_refs\['([^']+)'\]", lambda match: "@" + match.group(1).replace("::", "#"), expression)


def error_line(error: BaseException) -> str:
    """The last line a failed run prints: ``error: <message>``.

    A user error's message stands alone; other errors add their type and, when a bundle config expression raised
    them, the expression (``--bundle_root 2024`` makes ``$@bundle_root + '/models'`` fail with a ``TypeError``).
    """
    cause = root_cause(error)
    type_name = cause.type_name if isinstance(cause, _WorkerError) else type(cause).__name__
    message = str(cause).strip() or type_name
    if is_user_error(cause):
        return f"error: {message}"
    expression = config_expression(error)
    where = f" (in the config expression {expression})" if expression else ""
    return f"error: {type_name}: {message}{where}"


def exit_status(error: BaseException) -> int:
    """The documented exit status for a run that ended with ``error``."""
    return EXIT_USER_ERROR if is_user_error(root_cause(error)) else EXIT_FAILURE


def report_uncaught(error_type: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    """``sys.excepthook``: a user error's message alone, otherwise Python's traceback; then the cause's line.

    Raising ``SystemExit`` from ``sys.excepthook`` is how CPython lets a hook choose the exit status; ``atexit``
    handlers and logging shutdown still run.
    """
    if not isinstance(error, Exception):  # KeyboardInterrupt and the like keep Python's own report
        sys.__excepthook__(error_type, error, trace)
        return
    sys.stdout.flush()
    if not is_user_error(root_cause(error)):
        sys.__excepthook__(error_type, error, trace)
    print(error_line(error), file=sys.stderr, flush=True)
    status = exit_status(error)
    if other_threads_alive():
        exit_now(status)
    raise SystemExit(status)


def other_threads_alive() -> bool:
    """Whether threads besides the main one still run (e.g. a ``CacheDataset`` thread pool caching)."""
    return any(thread is not threading.main_thread() and thread.is_alive() for thread in threading.enumerate())


def exit_now(status: int) -> None:
    """Flush the logs and the standard streams, then end the process with ``status`` without interpreter shutdown.

    Interpreter shutdown while torch's worker threads still run can abort the process (SIGABRT) after the error
    line; every output is written atomically, so nothing half-written is left by skipping it.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more can be said on it
            pass
    os._exit(status)


def install_error_hook() -> None:
    """Make uncaught errors end with their cause (see :func:`report_uncaught`); calling it again changes nothing."""
    sys.excepthook = report_uncaught

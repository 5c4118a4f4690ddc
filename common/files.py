"""Atomic file writes: a file is replaced only once its new content is complete.

Readers never see a half-written file and an interrupted write leaves any earlier file intact; every module that
writes a result (datalists, weights, metric tables, figures, segmentations) writes through :func:`atomic_output`.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


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


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`), replacing an existing file.

    Returns:
        The destination path.
    """
    with atomic_output(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_output`), replacing an existing file.

    Returns:
        The destination path.
    """
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)

"""Atomic writes and stage completion markers.

Every stage writes through these helpers so that a killed stage never leaves a
half-written file that a later stage would trust: data goes to a temporary name
in the same folder and is renamed into place only once complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "atomic_path",
    "atomic_open",
    "write_text_atomic",
    "write_json_atomic",
    "is_done",
    "mark_done",
    "clear_done",
]


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """``open()`` that only makes ``path`` appear once the ``with`` block succeeds."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as f:
            yield f


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def _marker(directory: str | os.PathLike, name: str) -> Path:
    return Path(directory) / f".{name}.done"


def is_done(directory: str | os.PathLike, name: str = "stage") -> bool:
    """True if ``mark_done(directory, name)`` ran after the stage's last success."""
    return _marker(directory, name).is_file()


def mark_done(directory: str | os.PathLike, name: str = "stage", info: dict | None = None) -> None:
    """Record that a stage finished; ``info`` (e.g. its config) is stored in the marker."""
    write_json_atomic(_marker(directory, name), info or {})


def clear_done(directory: str | os.PathLike, name: str = "stage") -> None:
    _marker(directory, name).unlink(missing_ok=True)

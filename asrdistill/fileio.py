"""Atomic writes, stage completion markers and ``skipped.tsv``.

Every stage writes through these helpers so that a killed stage never leaves a
half-written file that a later stage would trust: data goes to a temporary name
in the same folder and is renamed into place only once complete. Every stage
says "already done" one way: :func:`stage_done` before its work (skip when it
finished from the same inputs, else redo), :func:`mark_done` after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import hashlib
import json
import logging
import math
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "atomic_path",
    "atomic_open",
    "write_text_atomic",
    "write_json_atomic",
    "SKIPPED_HEADER",
    "read_skipped",
    "write_skipped",
    "json_safe",
    "identity",
    "read_done",
    "load_weights",
    "is_done",
    "fingerprint_inputs",
    "stage_done",
    "mark_done",
    "clear_done",
    "remove_temporaries",
]


_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync(path: Path) -> None:
    """Flush ``path`` to disk, so that after a crash the renamed name never points at missing data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_FAULT_WRITES = [0]


def _fault_point(path: Path) -> None:
    """Die as a SIGKILL would (the whole process group, no cleanup) at the write the fault tests name.

    Reached with the data written but not yet renamed: a deterministic kill point at any machine load.
    """
    spec = os.environ.get("ASRDISTILL_FAULT_KILL_AT_WRITE", "")  # "GLOB:N": die at the Nth write of a GLOB file
    if not spec:
        return
    pattern, _, n = spec.rpartition(":")
    if not pattern or not n.isdigit():
        raise ValueError(f"ASRDISTILL_FAULT_KILL_AT_WRITE={spec!r}: expected GLOB:N (kill at the Nth matching write)")
    if not fnmatch.fnmatchcase(path.name, pattern):
        return
    _FAULT_WRITES[0] += 1
    if _FAULT_WRITES[0] == int(n):
        os.killpg(os.getpgrp(), signal.SIGKILL)


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
        _fsync(tmp_path)
        _fault_point(path)
        os.replace(tmp_path, path)
        _fsync(path.parent)  # the rename itself
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


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by ``None`` and numpy scalars made plain: strict JSON that every
    parser reads."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON (NaN/inf written as null) through :func:`atomic_open`."""
    with atomic_open(path) as f:
        json.dump(json_safe(obj), f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")


SKIPPED_HEADER = ("utt_id", "file", "reason")
_NOT_IN_A_CELL = re.compile(r"[\t\r\n]+")  # a file name keeps its spaces, but a tab or newline would split the row


def write_skipped(path: str | os.PathLike, skipped: Mapping[str, str] | Iterable[tuple[str, str, str]]) -> None:
    r"""Write ``skipped.tsv``: the utterances a stage left out, one per row, sorted, atomically.

    The one format every stage writes (data preparation, features, aligners, alignment import, decoding) and
    :func:`read_skipped` reads: a header row ``utt_id\tfile\treason``, then per utterance

    * ``utt_id``: the utterance;
    * ``file``: its audio file where the stage knows it, else empty;
    * ``reason``: why it was left out (whitespace runs, tabs and newlines included, become one space).

    ``skipped``: utterance -> reason (no file), or ``(utt_id, file, reason)`` rows.
    """
    rows = [(u, "", r) for u, r in skipped.items()] if isinstance(skipped, Mapping) else list(skipped)
    cells = sorted((u, _NOT_IN_A_CELL.sub(" ", str(f)), " ".join(r.split())) for u, f, r in rows)
    write_text_atomic(path, "".join("\t".join(row) + "\n" for row in [SKIPPED_HEADER, *cells]))


def read_skipped(path: str | os.PathLike) -> dict[str, str]:
    """The ``skipped.tsv`` at ``path`` (:func:`write_skipped`'s format) as utterance -> reason; {} if there is none.

    A file without that header is an error naming it.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or tuple(lines[0].split("\t")) != SKIPPED_HEADER:
        raise ValueError(
            f"{path}: not a skipped.tsv: its first row must be the header {' '.join(SKIPPED_HEADER)} (tab-separated)"
        )
    out = {}
    for number, line in enumerate(lines[1:], 2):
        row = line.split("\t")
        if len(row) != len(SKIPPED_HEADER):
            raise ValueError(
                f"{path}: line {number}: expected {len(SKIPPED_HEADER)} tab-separated columns, got {len(row)}"
            )
        out[row[0]] = row[2]
    return out


# Files up to this size are fingerprinted by content (manifests, configs, transcripts, models of
# the GMM stages); larger ones (feature and label shards, GBs in all) by size and mtime, which
# changes whenever a stage rewrites them (atomic writes always create a new file).
_HASH_CONTENT_BYTES = 1 << 20


def _feed(h: "hashlib._Hash", obj: Any) -> None:
    if isinstance(obj, Path):
        _feed_path(h, obj)
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=str):
            _feed(h, str(k))
            _feed(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _feed(h, v)
        h.update(b"]")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        _feed(h, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    elif hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch.Tensor, without importing torch here
        _feed(h, obj.detach().cpu().numpy())
    elif isinstance(obj, np.generic):
        _feed(h, obj.item())
    elif isinstance(obj, np.ndarray):
        h.update(f"nd{obj.dtype.str}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    else:
        h.update(json.dumps(obj).encode("utf-8"))


def _feed_path(h: "hashlib._Hash", path: Path) -> None:
    """A file by content or size+mtime; a folder by each of its files (dot-files: markers, temporaries, skipped)."""
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    elif path.is_file():
        files = [path]
    else:
        h.update(f"missing:{path}".encode())
        return
    for f in files:
        st = f.stat()
        h.update(f"file:{f.relative_to(path) if f != path else f.name}:{st.st_size}:".encode())
        if st.st_size <= _HASH_CONTENT_BYTES:
            h.update(hashlib.sha256(f.read_bytes()).digest())
        else:
            h.update(str(st.st_mtime_ns).encode())


def identity(*parts: Any) -> str:
    """sha256 fingerprint of a stage's config and inputs, recorded in its done marker.

    A ``Path`` is an input file or folder (fingerprinted by content, or by size
    and mtime above 1 MiB); anything else (config dicts, transcripts, arrays,
    dataclasses) is data. Equal fingerprints mean a finished stage may be reused.
    """
    h = hashlib.sha256()
    for part in parts:
        _feed(h, part)
    return h.hexdigest()


def _marker(directory: str | os.PathLike, name: str) -> Path:
    return Path(directory) / f".{name}.done"


# keys of a done marker that hold what the stage was made from (the rest is the stage's own record)
_FINGERPRINT, _INPUTS = "fingerprint", "input_fingerprints"


def read_done(directory: str | os.PathLike, name: str = "stage") -> dict | None:
    """The record a done marker holds (with its fingerprints, if any), or None if absent or unreadable."""
    try:
        data = json.loads(_marker(directory, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_done(directory: str | os.PathLike, name: str = "stage") -> bool:
    """True if ``mark_done(directory, name)`` ran after the stage's last success, whatever it was made from.

    For a marker that only says "this file is complete" (a download); a stage made from inputs asks
    :func:`stage_done`.
    """
    return _marker(directory, name).is_file()


def fingerprint_inputs(inputs: Mapping[str, Any]) -> dict[str, str]:
    """Each of a stage's inputs by name -> its :func:`identity`: what a done marker records and compares."""
    return {str(k): identity(v) for k, v in inputs.items()}


def stage_done(
    directory: str | os.PathLike,
    name: str,
    inputs: Mapping[str, Any],
    force: bool = False,
    on_redo: Callable[[], None] | None = None,
) -> dict | None:
    """The one test of "already done": the record of stage ``name`` in ``directory`` if it finished from ``inputs``.

    ``inputs`` names everything the stage's outputs depend on: config (dicts, dataclasses), input files and
    folders (``Path``: by content, or size and mtime above 1 MiB; see :func:`identity`) and other data. Then

    * finished from the same inputs, not ``force``: skip. Returns the record :func:`mark_done` stored;
    * finished from other inputs, or ``force``: redo. The log names the inputs that changed; the marker and the
      temporaries a killed run left are removed and ``on_redo`` (e.g. delete what the old run wrote that a new one
      would resume from) is called; returns None;
    * not finished: returns None after removing the temporaries (a resumable stage keeps its other files).

    The stage then does its work and calls ``mark_done(directory, name, record, inputs)`` last.
    """
    new = fingerprint_inputs(inputs)
    record = read_done(directory, name)
    if record is not None and not force and record.get(_FINGERPRINT) == identity(new):
        log.info("%s: %s already done from these inputs, skipping (force to redo)", directory, name)
        return {k: v for k, v in record.items() if k not in (_FINGERPRINT, _INPUTS)}
    if record is not None:
        old = record.get(_INPUTS) or {}
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        why = "forced" if force else (f"changed: {', '.join(changed)}" if old else "recorded by an older version")
        log.info("%s: %s was done from other inputs (%s); doing it again", directory, name, why)
        if on_redo is not None:
            on_redo()
    clear_done(directory, name)
    return None


def mark_done(
    directory: str | os.PathLike, name: str = "stage", info: dict | None = None, inputs: Mapping[str, Any] | None = None
) -> None:
    """Record that a stage finished: ``info`` (its config, counts, result) and, for :func:`stage_done`, the
    fingerprint of each of its ``inputs``. Written last, atomically: a killed stage leaves no marker."""
    data = dict(info or {})
    if inputs is not None:
        fingerprints = fingerprint_inputs(inputs)
        data.update({_INPUTS: fingerprints, _FINGERPRINT: identity(fingerprints)})
    write_json_atomic(_marker(directory, name), data)


def clear_done(directory: str | os.PathLike, name: str = "stage") -> None:
    """Forget that a stage finished, before it (re)does its work; also removes what a killed run left half-written."""
    _marker(directory, name).unlink(missing_ok=True)
    remove_temporaries(directory)


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the :func:`atomic_path` temporaries (``.<name>.<random>.tmp``) under ``directory``; returns them.

    A SIGKILL leaves no chance to clean up, so a stage calls this when it
    starts (or resumes) its work in a folder that it alone writes to.
    """
    root = Path(directory)
    stale = [p for p in root.rglob(".*.tmp") if p.is_file()] if root.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_weights(path: str | os.PathLike, what: str = "checkpoint") -> dict:
    """A ``torch.save``d dict of tensors and plain data, loaded with ``weights_only=True``.

    Checkpoints and models are files users download and share: unpickling an
    arbitrary object can run code, so a file that needs it is refused. Errors
    say ``<path>: not a usable <what>: <reason>``.
    """
    import pickle

    import torch

    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next(
            (
                line.split("WeightsUnpickler error:", 1)[1].strip()
                for line in str(e).splitlines()
                if "WeightsUnpickler error:" in line
            ),
            "",
        )
        detail = detail.split(" was not an allowed global")[0] or "not a torch.save file of tensors and plain data"
        raise ValueError(
            f"{path}: not a usable {what}: refused by weights-only loading ({detail}); a file that "
            "needs full unpickling could run code and is never loaded"
        ) from e
    except (OSError, RuntimeError, EOFError) as e:
        raise ValueError(f"{path}: not a usable {what}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a usable {what}: expected a dict of tensors, got {type(data).__name__}")
    return data

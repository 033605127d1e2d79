"""One decode output folder: a single writer at a time, results replaced only when complete, file names in TSV.

:meth:`asrdistill.decoding.bundle.System.decode_corpus` writes a user's folder
(``asrdistill decode --out``): two runs into it must not interleave, and a run
that fails must not take the previous results with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Iterator

from asrdistill.data.datadir import read_kv, write_kv
from asrdistill.fileio import atomic_open

__all__ = ["DECODE_FOLDERS", "DECODE_OUTPUTS", "FolderBusy", "commit", "sole_writer", "tsv_field", "write_tables"]

DECODE_OUTPUTS = ("text", "ctm", "skipped.tsv", "files.tsv", "report.txt", "oov.txt", "wer", "per_utt", "wer.json")
DECODE_FOLDERS = ("data", "fbank", "import", "segments")  # intermediates of a decode folder, replaced with its results


def tsv_field(name: str) -> str:
    """A file name as one TSV field: backslash, tab, newline, carriage return escaped, non-UTF-8 bytes as ``\\xNN``."""
    name = name.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return os.fsencode(name).decode("utf-8", "backslashreplace")


class FolderBusy(OSError):
    """Another process is writing the same output folder; the message names it."""


@contextlib.contextmanager
def sole_writer(out_dir: Path, command: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``out_dir/.decode.lock`` (it records the holder's pid and command line).

    The kernel drops the lock when the holder exits, however it ends, so a killed run never blocks the next.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ".decode.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
            raise FolderBusy(
                f"{out_dir}: another decode is writing this folder ({holder}); wait for it to "
                "finish or give another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(command.split())}\n".encode("utf-8", "backslashreplace"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def commit(work: Path, out_dir: Path) -> None:
    """Move a finished run's outputs from ``work`` into ``out_dir``, replacing the earlier run's (and removing
    those this run did not write); the data dirs' ``wav.scp`` paths into ``work`` are rewritten to the new place."""
    for table in (work / "data" / "wav.scp", work / "import" / "wav.scp"):
        if table.is_file():
            write_kv(
                table,
                {
                    u: str(out_dir / p[len(str(work)) + 1 :]) if p.startswith(f"{work}/") else p
                    for u, p in read_kv(table).items()
                },
            )
    for name in (*DECODE_OUTPUTS, *DECODE_FOLDERS):
        src, dst = work / name, out_dir / name
        if dst.is_dir() and not dst.is_symlink():
            old = out_dir / f".{name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dst, old)
            shutil.rmtree(old)
        if src.exists():
            os.replace(src, dst)
        else:
            dst.unlink(missing_ok=True)
    shutil.rmtree(work)


def write_tables(
    out_dir: Path,
    hyps: dict[str, list[str]],
    times: dict[str, list[tuple[float, float]]],
    skipped: list[tuple[str, str, str]],
    files: dict[str, str],
    notes: dict[str, str],
) -> None:
    """``text``, ``ctm`` (word times in seconds), ``skipped.tsv`` and ``files.tsv`` (each input, its id, whether
    it was decoded or skipped, and a note: resampled, cut into segments) of a decode into ``out_dir``.

    An input that shares its id with another (a key twice in ``wav.scp``) has its own row in ``files.tsv``,
    taken from ``skipped``."""
    with atomic_open(out_dir / "text") as f:
        f.writelines(f"{u} {' '.join(hyps[u])}".rstrip() + "\n" for u in sorted(hyps))
    with atomic_open(out_dir / "ctm") as f:
        for utt in sorted(hyps):
            for word, (start, end) in zip(hyps[utt], times[utt]):
                f.write(f"{utt} 1 {start:.2f} {end - start:.2f} {word}\n")
    with atomic_open(out_dir / "skipped.tsv") as f:
        f.write("utt_id\tfile\treason\n")
        f.writelines(f"{u}\t{tsv_field(p)}\t{' '.join(r.split())}\n" for u, p, r in skipped)
    outcome = {**{s[0]: "skipped" for s in skipped}, **{u: "decoded" for u in hyps}}
    rows = set(files.items()) | {(u, p) for u, p, _ in skipped if u in files and p != files[u]}
    with atomic_open(out_dir / "files.tsv") as f:
        f.write("file\tutt_id\toutcome\tnote\n")
        f.writelines(
            f"{tsv_field(p)}\t{u}\t{outcome.get(u, 'lost')}\t{notes.get(u, '')}\n"
            for u, p in sorted(rows, key=lambda row: (tsv_field(row[1]), row[0]))
        )

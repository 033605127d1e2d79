"""Kaldi-style data directories: ``wav.scp``, ``text``, ``utt2spk``, ``spk2utt``, ``utt2dur``.

The same layout Kaldi, ESPnet and icefall users already know, so existing data
directories can be used as they are. ``wav.scp`` holds plain file paths (no
command pipes); ``text`` holds upper-case words. Files are sorted by utterance
id and written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from asrdistill.fileio import atomic_open

__all__ = ["DataDir", "check_pipes", "is_pipe", "read_kv", "write_kv"]


def is_pipe(entry: str) -> bool:
    """Kaldi rxfilenames ``cmd |`` (and wxfilenames ``| cmd``) are shell commands that a reader would run."""
    entry = entry.strip()
    return entry.endswith("|") or entry.startswith("|")


def check_pipes(path: str | Path, allow_pipes: bool) -> None:
    """Refuse a Kaldi table (``wav.scp``, ``feats.scp``, an alignment ``.scp``) whose entries are shell commands:
    a pipe runs a program named by the data, so reading one needs the user's explicit opt-in. (Keys that repeat
    are the reader's to judge; every line is checked here.)"""
    path = Path(path)
    repeated: list[tuple[str, str, int, int]] = []
    lines = [*read_kv(path, duplicates=repeated).items(), *((k, v) for k, v, _, _ in repeated)]
    pipes = [k for k, v in lines if is_pipe(v)]
    if pipes and not allow_pipes:
        raise ValueError(
            f"{path}: {len(pipes)} entries are shell commands (e.g. {pipes[0]}); a pipe runs a "
            "program named by the data, so it needs an explicit opt-in (--allow-pipes)"
        )


def read_kv(path: Path, *, duplicates: list[tuple[str, str, int, int]] | None = None) -> dict[str, str]:
    """Read a Kaldi ``key value...`` file; duplicate keys are a conflict: an error naming the file and both lines,
    or, given a ``duplicates`` list, each later line of a key is appended to it as ``(key, value, line, first
    line)`` (the result keeps the first) for the caller to skip, so one repeated key does not stop a batch."""
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, _, value = line.partition(" ")
            if key in out and duplicates is not None:
                duplicates.append((key, value.strip(), lineno, first[key]))
                continue
            if key in out:
                raise ValueError(f"{path}:{lineno}: duplicate key {key!r} (first on line {first[key]})")
            out[key] = value.strip()
            first[key] = lineno
    return out


def write_kv(path: Path, items: dict[str, str]) -> None:
    with atomic_open(path) as f:
        for key in sorted(items):
            f.write(f"{key} {items[key]}\n" if items[key] != "" else f"{key}\n")


@dataclass
class DataDir:
    """One subset's Kaldi data directory held in memory (small: text and paths only)."""

    wav: dict[str, str] = field(default_factory=dict)  # utt -> audio path
    text: dict[str, str] = field(default_factory=dict)  # utt -> "WORD WORD ..."
    utt2spk: dict[str, str] = field(default_factory=dict)  # utt -> speaker
    utt2dur: dict[str, float] = field(default_factory=dict)  # utt -> seconds

    @property
    def utt_ids(self) -> list[str]:
        return sorted(self.wav)

    @property
    def spk2utt(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for utt in sorted(self.utt2spk):
            out.setdefault(self.utt2spk[utt], []).append(utt)
        return out

    def validate(self, where: str = "data dir") -> None:
        """Check that every file covers the same utterances (as Kaldi's validate_data_dir.sh)."""
        keys = set(self.wav)
        for name, table in (("text", self.text), ("utt2spk", self.utt2spk), ("utt2dur", self.utt2dur)):
            if table and set(table) != keys:
                missing = sorted(keys - set(table))[:5]
                extra = sorted(set(table) - keys)[:5]
                raise ValueError(f"{where}: {name} does not match wav.scp (missing {missing}, extra {extra})")

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.validate(str(directory))
        directory.mkdir(parents=True, exist_ok=True)
        write_kv(directory / "wav.scp", self.wav)
        write_kv(directory / "text", self.text)
        write_kv(directory / "utt2spk", self.utt2spk)
        write_kv(directory / "spk2utt", {s: " ".join(u) for s, u in self.spk2utt.items()})
        if self.utt2dur:
            write_kv(directory / "utt2dur", {u: f"{d:.3f}" for u, d in self.utt2dur.items()})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "DataDir":
        directory = Path(directory)
        if not (directory / "wav.scp").is_file():
            raise FileNotFoundError(f"{directory}: not a data directory (no wav.scp)")
        dur_file = directory / "utt2dur"
        d = cls(
            wav=read_kv(directory / "wav.scp"),
            text=read_kv(directory / "text") if (directory / "text").is_file() else {},
            utt2spk=read_kv(directory / "utt2spk"),
            utt2dur={k: float(v) for k, v in read_kv(dur_file).items()} if dur_file.is_file() else {},
        )
        d.validate(str(directory))
        return d

"""Any folder of speech as a Kaldi data dir: LibriSpeech layout, a Kaldi data dir, or plain audio files.

This is how users' own data enters the toolkit (``asrdistill decode --corpus DIR``):
no labels or alignments are needed, and references, where the folder has them
(``*.trans.txt`` or ``text``), are normalised once by :func:`normalize_transcript`
so that lower-case or punctuated transcripts are scored against the upper-case
vocabulary rather than counted as errors.

Bad utterances do not stop the batch: audio longer than ``max_seconds`` or
whose header cannot be read, and lines of a Kaldi dir's ``text``/``utt2spk``
naming no audio, are listed in :attr:`Corpus.skipped` with the file and reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import soundfile as sf

from asrdistill.data.datadir import DataDir, check_pipes, read_kv

__all__ = ["AUDIO_SUFFIXES", "Corpus", "kaldi_safe", "normalize_transcript", "read_corpus", "utterance_ids"]

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".flac", ".wav")
NORMALIZATION = "upper case; characters other than letters, digits and apostrophes become spaces"
_PUNCT = re.compile(r"[^\w']|_")


def normalize_transcript(text: str) -> str:
    """Upper-case words with punctuation removed (the form of the lexicon's vocabulary)."""
    return " ".join(w for w in (t.strip("'") for t in _PUNCT.sub(" ", text.upper()).split()) if w)


@dataclass
class Corpus:
    """A corpus read into a data dir, what was skipped and why, and how references were normalised."""

    data: DataDir  # wav.scp, utt2spk, utt2dur of the usable utterances
    layout: str  # "librispeech", "kaldi" or "audio"
    refs: dict[str, str] = field(default_factory=dict)  # normalised references (of skipped utterances too)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (utt, file, reason)
    normalized: int = 0  # reference utterances the normalisation changed
    files: dict[str, str] = field(default_factory=dict)  # utt -> its input (file as found, or wav.scp entry)
    sample_rates: dict[str, int] = field(default_factory=dict)  # utt -> its file's sample rate (usable ones)


# whitespace, control characters and undecodable bytes (Kaldi tables), '.' and '/' (shard sample keys)
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f\ud800-\udfff./]")


def kaldi_safe(name: str) -> str:
    """``name`` with each character an utterance id cannot hold replaced by ``_``: whitespace, control characters
    and bytes that are not UTF-8 (Kaldi tables), ``.`` and ``/`` (feature shards name members ``<utt>.<kind>``)."""
    return _UNSAFE.sub("_", name) or "_"


def _audio_stem(path: Path) -> str:
    name = path.name
    return name[: -len(next(s for s in AUDIO_SUFFIXES if name.lower().endswith(s)))]


def _repeated(ids: dict[Path, str]) -> list[Path]:
    counts = Counter(ids.values())
    return [p for p, u in ids.items() if counts[u] > 1]


def utterance_ids(paths: Sequence[Path], root: Path) -> dict[Path, str]:
    """The utterance id of each audio file below ``root``: unique within the run, and the same in every run.

    1. the file name without its audio suffix (``a/x.flac`` -> ``x``);
    2. where two files share that, each of them gets its path below ``root`` with ``/`` written ``-``
       (``a/x.flac`` -> ``a-x_flac``, ``x.wav`` -> ``x_wav``);
    3. where ids still coincide (names that differ only in characters step 4 replaces, ``a b.flac`` and
       ``a_b.flac``), each gets ``-`` and the first 8 hex digits of the sha1 of its path below ``root``;
    4. in every step, :func:`kaldi_safe` writes ``_`` for whitespace, control characters, bytes that are not
       UTF-8 and ``.`` (``my.talk.wav`` -> ``my_talk``).
    """
    rel = {p: p.relative_to(root) for p in paths}
    ids = {p: kaldi_safe(_audio_stem(p)) for p in paths}
    for p in _repeated(ids):
        ids[p] = kaldi_safe("-".join(rel[p].parts))
    for digits in (8, 16, 40):
        for p in _repeated(ids):
            ids[p] = f"{kaldi_safe('-'.join(rel[p].parts))}-{hashlib.sha1(os.fsencode(rel[p])).hexdigest()[:digits]}"
    return ids


def _audio_inputs(root: Path) -> tuple[list[Path], int]:
    """Every path below ``root`` named like audio (files, links, folders), sorted; and how many other files there are.

    Symbolic links to folders are not followed (no loops); unreadable folders are logged.
    """
    found: list[Path] = []
    others = 0

    def unreadable(e: OSError) -> None:
        log.warning("%s: folder not readable, its files are not decoded (%s)", e.filename, e.strerror)

    for folder, dirs, names in os.walk(root, onerror=unreadable):
        for name in dirs + names:
            if name.lower().endswith(AUDIO_SUFFIXES):
                found.append(Path(folder) / name)
            elif name in names and not name.endswith(".trans.txt") and name != "text":
                others += 1
    return sorted(found, key=lambda p: os.fsencode(p)), others


def _not_audio_file(path: Path) -> str | None:
    """Why ``path`` (named like audio) cannot be an utterance, or None if it is a file."""
    if path.is_dir():
        return "a folder, not an audio file"
    if path.is_symlink() and not path.exists():
        return "a symbolic link to nothing (dangling, or a loop)"
    if not path.is_file():
        return "not a regular file"
    return None


def _from_files(
    root: Path, files: Sequence[Path] | None, skipped: list[tuple[str, str, str]]
) -> tuple[dict[str, str], dict[str, str], dict[str, str], str]:
    """(wav, text, input file per utterance, layout) of an audio folder, or of ``files`` below their common folder."""
    if files is None:
        paths, others = _audio_inputs(root)
        if others:
            log.info("%s: %d file(s) not named %s are not read", root, others, "/".join(AUDIO_SUFFIXES))
    else:
        paths = list(dict.fromkeys(files))
    if not paths:
        raise FileNotFoundError(f"{root}: no wav.scp and no {'/'.join(AUDIO_SUFFIXES)} files")
    ids = utterance_ids(paths, root)
    wav: dict[str, str] = {}
    for p in paths:
        reason = _not_audio_file(p)
        if reason:
            skipped.append((ids[p], str(p), reason))
        else:
            wav[ids[p]] = str(p.resolve())
    inputs = {ids[p]: str(p) for p in paths}
    trans = sorted(root.rglob("*.trans.txt")) if files is None else []
    text: dict[str, str] = {}
    for t in trans:
        for u, words in read_kv(t).items():
            text[u] = words
    if files is None and not trans and (root / "text").is_file():
        trans = [root / "text"]  # Kaldi-style references keyed by utterance id (see utterance_ids)
        try:
            text = read_kv(root / "text")
        except (ValueError, UnicodeDecodeError) as e:
            log.warning("%s: not read as references (%s)", root / "text", e)
        log.info("%s: references for %d utterance(s)", root / "text", len(set(text) & set(wav)))
    if trans:
        missing = sorted(set(text) - set(wav))
        if missing:
            log.warning(
                "%s: %d transcribed utterances have no audio file (e.g. %s); not scored", root, len(missing), missing[0]
            )
        text = {u: t for u, t in text.items() if u in wav}
    return wav, text, inputs, "librispeech" if trans and trans[0].name != "text" else "audio"


def _side_table(path: Path) -> dict[str, str]:
    """A Kaldi dir's ``text`` or ``utt2spk`` for decoding ({} if absent). A key on several lines is dropped with a
    warning naming them (which line is meant is unknown): its utterance is then not scored, or its own speaker."""
    if not path.is_file():
        return {}
    repeated: list[tuple[str, str, int, int]] = []
    table = read_kv(path, duplicates=repeated)
    for key in dict.fromkeys(k for k, _, _, _ in repeated):
        numbers = [first for k, _, _, first in repeated if k == key][:1] + [n for k, _, n, _ in repeated if k == key]
        log.warning("%s: key %r is on lines %s; ignored (which one is meant is unknown)", path, key, numbers)
        del table[key]
    return table


def _from_kaldi_dir(root: Path, skipped: list[tuple[str, str, str]]) -> tuple[DataDir, dict[str, str]]:
    """``wav.scp`` decides what is decoded; where ``text``/``utt2spk`` disagree with it, the rest still is.
    Returns the data dir and the input (``wav.scp`` entry) of each key.

    (Training data must be consistent, :meth:`DataDir.load`; a folder to decode
    should not fail because of one stray line.) A key on several lines of
    ``wav.scp`` is skipped on each of them: which file its ``text`` and ``utt2spk``
    lines describe cannot be known, and ``text`` and ``ctm`` need one file per id.
    """
    check_pipes(root / "wav.scp", allow_pipes=False)
    repeated: list[tuple[str, str, int, int]] = []
    wav = read_kv(root / "wav.scp", duplicates=repeated)
    inputs = dict(wav)
    tables = {n: _side_table(root / n) for n in ("text", "utt2spk")}
    for name, table in tables.items():
        for utt in sorted(set(table) - set(wav)):
            skipped.append((utt, str(root / name), f"listed in {name} but not in wav.scp"))
    lines: dict[str, list[tuple[str, int]]] = {}
    for key, value, line, first in repeated:
        lines.setdefault(key, [(wav.pop(key), first)]).append((value, line))
    for key, entries in lines.items():
        numbers = ", ".join(str(n) for _, n in entries)
        for value, line in entries:
            skipped.append(
                (
                    key,
                    value,
                    f"{root / 'wav.scp'}:{line}: key {key!r} is on lines {numbers}: which one it means is "
                    "unknown, so none is decoded (give each file its own key)",
                )
            )
    no_spk = sorted(set(wav) - set(tables["utt2spk"]))
    if tables["utt2spk"] and no_spk:
        log.warning(
            "%s: %d utterances missing from utt2spk (e.g. %s): each is its own speaker",
            root / "utt2spk",
            len(no_spk),
            no_spk[0],
        )
    data = DataDir(
        wav=wav,
        text={u: t for u, t in tables["text"].items() if u in wav},
        utt2spk={u: tables["utt2spk"].get(u, u) for u in wav},
    )
    return data, inputs


def read_corpus(root: str | Path | Sequence[str | Path], max_seconds: float = float("inf")) -> Corpus:
    """Read ``root`` as a Kaldi data dir (it has ``wav.scp``), a folder of audio files, or a list of audio files.

    A folder with ``*.trans.txt`` is read as LibriSpeech (references from the
    transcripts); otherwise every ``.flac``/``.wav`` below ``root`` is an utterance
    of its own speaker, and a ``text`` file in ``root`` (``<utt id> <words>`` lines)
    gives references. Utterance ids of audio files follow :func:`utterance_ids`
    (a list of files: below their common folder). Every input ends up either in
    ``data`` or in ``skipped`` with its reason, never both: a folder, dangling link
    or loop named like audio, an unreadable header, audio longer than
    ``max_seconds``. References are normalised.
    """
    skipped: list[tuple[str, str, str]] = []
    if not isinstance(root, (str, Path)):
        files = [Path(os.path.abspath(f)) for f in root]
        if not files:
            raise ValueError("no audio files given")
        base = Path(os.path.commonpath([f.parent for f in files]))
        wav, text, inputs, layout = _from_files(base, files, skipped)
        data = DataDir(wav=wav, text=text, utt2spk={u: u for u in wav})
        root = base
    else:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a folder")
        if (root / "wav.scp").is_file():
            (data, inputs), layout = _from_kaldi_dir(root, skipped), "kaldi"
        else:
            wav, text, inputs, layout = _from_files(root, None, skipped)
            data = DataDir(wav=wav, text=text, utt2spk={u: u for u in wav})
    corpus = Corpus(DataDir(), layout, skipped=skipped, files=inputs)
    for utt in data.utt_ids:
        if utt in data.text:
            ref = normalize_transcript(data.text[utt])
            corpus.normalized += ref != data.text[utt]
            corpus.refs[utt] = ref
        path = data.wav[utt]
        if kaldi_safe(utt) != utt:  # a Kaldi dir's own id: whitespace cannot occur, '.' and '/' can
            corpus.skipped.append(
                (
                    utt,
                    path,
                    "the utterance id holds '.' or '/', which feature shards cannot "
                    f"hold in a key (rename it, e.g. {kaldi_safe(utt)})",
                )
            )
            continue
        try:
            with open(path, "rb") as f:  # a file object: soundfile cannot encode a name that is not UTF-8
                info = sf.info(f)
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            reason = getattr(e, "error_string", None) or getattr(e, "strerror", None) or str(e)
            corpus.skipped.append((utt, inputs.get(utt, path), f"cannot read the audio header ({reason})"))
            continue
        if info.duration > max_seconds:
            corpus.skipped.append(
                (
                    utt,
                    inputs.get(utt, path),
                    f"{info.duration:.1f} s is longer than the maximum {max_seconds:g} s (--max-seconds)",
                )
            )
            continue
        corpus.data.wav[utt] = path
        corpus.data.utt2spk[utt] = data.utt2spk.get(utt, utt)
        corpus.data.utt2dur[utt] = info.duration
        corpus.sample_rates[utt] = info.samplerate
    for utt, path, reason in corpus.skipped:
        log.warning("skipping %s (%r): %s", utt, path, reason)
    if not corpus.data.wav:
        log.error("%s: none of its %d input(s) can be used (reasons above)", root, len(inputs))
    unref = sorted(set(corpus.data.wav) - set(corpus.refs))
    if corpus.refs and unref:
        log.warning(
            "%s: %d utterances have no reference (e.g. %s); only the others are scored", root, len(unref), unref[0]
        )
    return corpus

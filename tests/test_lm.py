"""Language model: trained KN n-gram is a proper distribution; perplexity; OOV handling."""

import gzip
import math

import pytest

from asrdistill.decoding.lm import Arpa, LmConfig, perplexity, prepare_lm, train_lm

TEXT = """THE CAT SAT ON THE MAT
THE DOG SAT ON THE LOG
A CAT SAW THE DOG
THE DOG SAW A CAT ON THE MAT
A DOG SAT
THE CAT SAW THE LOG
"""


@pytest.fixture
def arpa(tmp_path):
    (tmp_path / "lm-text.txt").write_text(TEXT)
    res = train_lm(tmp_path / "lm-text.txt", tmp_path / "lm.arpa", LmConfig(order=3))
    assert res.sentences == 6 and res.skipped_sentences == 0
    return Arpa(res.arpa)


@pytest.mark.parametrize(
    "history", [("<s>",), ("THE",), ("<s>", "THE"), ("THE", "CAT"), ("SAW", "A"), ("MAT", "LOG"), ()]
)
def test_probabilities_sum_to_one(arpa, history):
    vocab = arpa.vocab - {"<s>"}
    total = sum(10 ** arpa.log10_prob(w, history) for w in vocab)
    assert total == pytest.approx(1.0, abs=1e-4)


def test_trained_model_prefers_seen_continuations(arpa):
    assert arpa.order == 3
    assert arpa.log10_prob("SAT", ("THE", "CAT")) > arpa.log10_prob("LOG", ("THE", "CAT"))


def test_words_missing_from_lexicon_skip_sentences(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT + "THE ZEBRA SAT\nQUUX\n")
    vocab = set(TEXT.split())
    res = train_lm(tmp_path / "t.txt", tmp_path / "lm.arpa", LmConfig(order=2), vocab=vocab)
    assert (res.sentences, res.skipped_sentences, res.missing_words) == (6, 2, 2)
    assert "ZEBRA" not in Arpa(res.arpa).vocab


def test_perplexity_hand_computed_with_oov_and_gzip(tmp_path):
    # unigram model: P(A) = 0.5, P(B) = 0.25, P(</s>) = 0.25
    text = (
        "\\data\\\nngram 1=4\n\n\\1-grams:\n-99 <s>\n"
        f"{math.log10(0.5)} A\n{math.log10(0.25)} B\n{math.log10(0.25)} </s>\n\n\\end\\\n"
    )
    (tmp_path / "u.arpa").write_text(text)
    with gzip.open(tmp_path / "u.arpa.gz", "wt") as f:
        f.write(text)
    # "A B ZZZ": scored tokens A, B, </s> (ZZZ excluded) -> (0.5 * 0.25 * 0.25) ** (-1/3)
    expected = (0.5 * 0.25 * 0.25) ** (-1 / 3)
    for name in ("u.arpa", "u.arpa.gz"):
        ppl, oov = perplexity(tmp_path / name, ["A B ZZZ"])
        assert oov == 1
        assert ppl == pytest.approx(expected, rel=1e-5)


def test_prepare_lm_prefers_official_arpa(tmp_path, arpa):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "lm-text.txt").write_text(TEXT)
    res = prepare_lm(
        corpus,
        set(TEXT.split()),
        tmp_path / "exp",
        LmConfig(order=2),
        eval_sentences={"dev": ["THE CAT SAT ON THE LOG", "A ZEBRA"]},
    )
    assert res.source == "trained" and (tmp_path / "exp" / "lm.json").is_file()
    assert res.perplexity["dev"]["oov"] == 1 and 1.0 < res.perplexity["dev"]["ppl"] < 12
    with open(arpa.path, "rb") as src, gzip.open(corpus / "3-gram.pruned.1e-7.arpa.gz", "wb") as dst:
        dst.write(src.read())
    res = prepare_lm(
        corpus,
        set(TEXT.split()) - {"LOG", "MAT"},
        tmp_path / "exp2",
        LmConfig(official_arpa="3-gram.pruned.1e-7.arpa.gz"),
    )
    assert res.source == "official" and res.arpa.endswith(".arpa.gz") and res.ngram_counts[0] > 0
    assert res.missing_words == 2  # LOG and MAT: in the LM, not in the lexicon


def test_missing_official_arpa_is_an_error_not_a_fallback(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "lm-text.txt").write_text(TEXT)
    with pytest.raises(FileNotFoundError, match=r"3-gram.pruned.3e-7.arpa.gz: official LM not found"):
        prepare_lm(corpus, set(TEXT.split()), tmp_path / "exp", LmConfig(official_arpa="3-gram.pruned.3e-7.arpa.gz"))
    assert not (tmp_path / "exp" / "lm.arpa").exists()


def test_malformed_arpa_is_rejected(tmp_path):
    (tmp_path / "bad.arpa").write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\n\\end\\\n")
    with pytest.raises(ValueError, match="bad.arpa:5: malformed 1-gram"):
        Arpa(tmp_path / "bad.arpa")

"""WER scoring against hand-computed counts, and the Kaldi-style report files."""

import json

import pytest

from asrdistill.decoding.scoring import read_text, wer_report


def test_hand_computed_counts_and_report(tmp_path):
    refs = {"u1": "THE CAT SAT", "u2": "ON THE MAT", "u3": "A DOG"}
    hyps = {"u1": "THE CAT SAT DOWN", "u2": "ON MAT", "u3": ["A", "FROG"]}
    r = wer_report(refs, hyps, tmp_path)
    # u1: one insertion; u2: one deletion; u3: one substitution -> 3 errors over 8 words
    assert (r.ins, r.dels, r.sub, r.errors, r.num_words, r.num_utts) == (1, 1, 1, 3, 8, 3)
    assert r.wer == pytest.approx(37.5)
    assert r.sentence_errors == 3 and r.ser == pytest.approx(100.0)
    assert (tmp_path / "wer").read_text().splitlines()[0] == "%WER 37.50 [ 3 / 8, 1 ins, 1 del, 1 sub ]"
    per_utt = (tmp_path / "per_utt").read_text().splitlines()
    ops = {line.split()[0]: line.split()[2:] for line in per_utt if line.split()[1] == "op"}
    assert ops == {"u1": ["C", "C", "C", "I"], "u2": ["C", "D", "C"], "u3": ["C", "S"]}
    hyp_u2 = next(line for line in per_utt if line.startswith("u2 hyp"))
    assert hyp_u2.split()[2:] == ["ON", "***", "MAT"]
    assert "u1 #csid 3 0 1 0" in per_utt
    assert json.loads((tmp_path / "wer.json").read_text())["errors"] == 3


def test_missing_hypothesis_counts_as_deletions(tmp_path):
    refs = {"u1": "ONE TWO THREE", "u2": "FOUR"}
    r = wer_report(refs, {"u2": "FOUR", "extra": "IGNORED"}, tmp_path)
    assert (r.dels, r.errors, r.num_words, r.missing_hyps, r.num_utts) == (3, 3, 4, 1, 2)
    assert r.wer == pytest.approx(75.0)
    assert "1 utterances had no hypothesis" in (tmp_path / "wer").read_text()


def test_perfect_and_empty_reference():
    r = wer_report({"a": "HELLO WORLD", "b": ""}, {"a": "HELLO WORLD", "b": "UH"})
    assert (r.errors, r.ins, r.num_words) == (1, 1, 2)


def test_read_text_rejects_duplicates(tmp_path):
    p = tmp_path / "text"
    p.write_text("u1 A B\nu2\nu1 C\n")
    with pytest.raises(ValueError, match="duplicate utterance id 'u1'"):
        read_text(p)
    p.write_text("u1 A  B\nu2\n")
    assert read_text(p) == {"u1": "A  B", "u2": ""}

"""Lang dir building: phone inventory, pronunciations, OOV handling, dictionary sources."""

from __future__ import annotations

import gzip
import logging
from collections import Counter
from pathlib import Path

import pytest

from asrdistill.data.datadir import DataDir
from asrdistill.data.lang import Lang
from asrdistill.data.lexicon import LexiconConfig, build_lang, corpus_vocabulary, map_oov

ARPABET_39 = sorted(
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH UH UW V W Y Z ZH".split()
)


def test_cmudict_without_stress(tmp_path: Path) -> None:
    report = build_lang(["hello", "HELLO", "world", "QZXWVQ", "qzxwvq", "KLMPFT", "hello"], tmp_path / "lang")
    lang = Lang.load(tmp_path / "lang")
    assert lang.phones[:3] == ["<eps>", "SIL", "SPN"]
    assert lang.nonsilence_phones == ARPABET_39
    assert lang.words == ["<eps>", "<UNK>", "HELLO", "WORLD"]
    prons = lang.pronunciations()
    assert prons["<UNK>"] == [("SPN",)]
    assert set(prons["HELLO"]) == {("HH", "AH", "L", "OW"), ("HH", "EH", "L", "OW")}
    assert prons["WORLD"] == [("W", "ER", "L", "D")]
    # OOV words are reported with their counts, most frequent first, never dropped silently
    assert report.oov == {"QZXWVQ": 2, "KLMPFT": 1}
    assert (report.num_words, report.num_oov, report.oov_tokens, report.num_phones) == (2, 2, 3, 41)
    assert (tmp_path / "lang" / "oov.txt").read_text().splitlines() == ["QZXWVQ 2", "KLMPFT 1"]


def test_cmudict_keep_stress_and_reserved_symbols(tmp_path: Path) -> None:
    report = build_lang(["HELLO", "<s>", "</s>", "#0", "<UNK>"], tmp_path, keep_stress=True)
    lang = Lang.load(tmp_path)
    assert ("HH", "AH0", "L", "OW1") in lang.pronunciations()["HELLO"]
    assert {"AH0", "AH1", "AH2", "ER0", "B"} <= set(lang.nonsilence_phones)
    assert "AH" not in lang.phone_id
    assert len(lang.nonsilence_phones) == 69  # 15 vowels x 3 stresses + 24 consonants
    assert lang.words == ["<eps>", "<UNK>", "HELLO"]
    assert report.oov == {}
    assert (tmp_path / "oov.txt").read_text() == ""


def test_librispeech_lexicon_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lex = tmp_path / "librispeech-lexicon.txt"
    lex.write_bytes(
        b"<UNK>\tSPN\n"
        b"ABBOT\tAE1 B AH0 T\n"
        b"ABBOT\tAE1 B AH2 T\n"  # same pronunciation once stress is removed
        b"CAF\xe9\tK AE1 F\n"  # Latin-1, not UTF-8
        b"LONELY\n"  # no phones
        b"ZYGOTE\tZ AY1 G OW0 T\n"
        b"\n"
    )
    with caplog.at_level(logging.WARNING):
        report = build_lang(["ABBOT", "ZYGOTE", "HELLO"], tmp_path / "lang", source="librispeech", lexicon_path=lex)
    assert f"{lex}:4: not UTF-8" in caplog.text
    assert f"{lex}:5: word 'LONELY' has no phones" in caplog.text
    lang = Lang.load(tmp_path / "lang")
    # inventory is the whole file's phones (stress removed), independent of the corpus words
    assert lang.nonsilence_phones == ["AE", "AH", "AY", "B", "G", "OW", "T", "Z"]  # not K, F of the bad line
    assert lang.pronunciations() == {
        "<UNK>": [("SPN",)],
        "ABBOT": [("AE", "B", "AH", "T")],
        "ZYGOTE": [("Z", "AY", "G", "OW", "T")],
    }
    assert report.oov == {"HELLO": 1}  # in CMUdict, but this source does not have it
    assert report.source == "librispeech"


def test_bad_source_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs lexicon_path"):
        build_lang(["A"], tmp_path, source="librispeech")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        build_lang(["A"], tmp_path, source="librispeech", lexicon_path=tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="unknown lexicon source 'g2p'"):
        build_lang(["A"], tmp_path, source="g2p")
    with pytest.raises(ValueError, match="vocabulary is empty"):
        build_lang(["", "<s>"], tmp_path)


def test_map_oov() -> None:
    vocab = {"THE", "CAT"}
    assert map_oov("THE  CAT SAT\tTHE", vocab) == "THE CAT <UNK> THE"
    assert map_oov("", vocab) == ""


def test_corpus_vocabulary(tmp_path: Path) -> None:
    DataDir(
        wav={"u1": "/a.flac", "u2": "/b.flac"}, text={"u1": "THE CAT", "u2": "THE DOG"}, utt2spk={"u1": "s", "u2": "s"}
    ).save(tmp_path / "train")
    with gzip.open(tmp_path / "lm.txt.gz", "wb") as f:
        f.write(b"the bird\n\xff\xfe BAD LINE\nCAT\n")
    counts = corpus_vocabulary([tmp_path / "train"], [tmp_path / "lm.txt.gz"])
    assert counts == {"THE": 3, "CAT": 2, "DOG": 1, "BIRD": 1}  # utt ids and the non-UTF-8 line excluded
    # counts carry through to the OOV report
    report = build_lang(counts + Counter({"QZXWVQ": 7}), tmp_path / "lang")
    assert report.oov == {"QZXWVQ": 7} and report.num_words == 4


def test_config_defaults() -> None:
    cfg = LexiconConfig()
    assert (cfg.source, cfg.lexicon_path, cfg.keep_stress) == ("cmudict", None, False)


def test_espeak_g2p_pronounces_oov_words_and_lists_them(tmp_path: Path) -> None:
    report = build_lang({"HELLO": 2, "ZORKLE": 3, "blorft": 1}, tmp_path / "g2p", g2p="espeak")
    prons = Lang.load(tmp_path / "g2p").pronunciations()
    assert report.oov == {} and report.g2p == {"ZORKLE": 3, "BLORFT": 1}
    assert prons["ZORKLE"] == [("Z", "AO", "R", "K", "AH", "L")]
    assert all(p in ARPABET_39 for pron in prons["BLORFT"] for p in pron)
    assert (tmp_path / "g2p" / "g2p.txt").read_text().splitlines()[0] == "ZORKLE 3 Z AO R K AH L"
    assert set(prons["HELLO"]) == {("HH", "AH", "L", "OW"), ("HH", "EH", "L", "OW")}  # CMUdict's, not espeak's
    assert build_lang({"ZORKLE": 3}, tmp_path / "none", g2p=None).oov == {"ZORKLE": 3}


def test_lower_case_transcripts_are_not_unk() -> None:
    assert map_oov("hello World ZORK", {"HELLO", "WORLD"}) == "HELLO WORLD <UNK>"

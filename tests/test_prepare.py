"""Preparing Kaldi data dirs from a corpus in LibriSpeech layout, bad input included."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrdistill import cli
from asrdistill.data.datadir import DataDir
from asrdistill.fileio import is_done
from data_prep.librispeech import data_dir_name, prepare_librispeech

SR = 16000


def _flac(path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR)


def _trans(path: Path, lines: list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _good_chapter(sub: Path, spk: str, chap: str, n: int) -> dict[str, str]:
    texts = {}
    for i in range(n):
        utt = f"{spk}-{chap}-{i:04d}"
        _flac(sub / spk / chap / f"{utt}.flac", 0.25 + 0.05 * i)
        texts[utt] = f"HELLO WORLD NUMBER {i}"
    _trans(sub / spk / chap / f"{spk}-{chap}.trans.txt", [f"{u} {t}".encode() for u, t in texts.items()])
    return texts


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    """``corpus/LibriSpeech/dev-clean``: two clean chapters and one full of problems."""
    sub = tmp_path / "corpus" / "LibriSpeech" / "dev-clean"
    _good_chapter(sub, "1272", "128104", 3)
    _good_chapter(sub, "2277", "149896", 2)
    bad = sub / "84" / "121123"
    _flac(bad / "84-121123-0000.flac", 0.3)  # good
    (bad / "84-121123-0001.flac").write_bytes((bad / "84-121123-0000.flac").read_bytes()[:20])  # truncated
    (bad / "84-121123-0002.flac").write_bytes(np.random.default_rng(0).bytes(3000))  # corrupt
    (bad / "84-121123-0003.flac").write_bytes(b"")  # zero-length
    _flac(bad / "84-121123-0004.flac", 0.3)  # no transcript line
    _flac(bad / "84-121123-0005.flac", 0.3)  # empty transcript
    _flac(bad / "84-121123-0006.flac", 0.3)  # duplicate id: a conflict, both lines out
    _flac(bad / "84-121123-0007.flac", 0.3)  # non-UTF-8 transcript line
    _flac(bad / "84-121123-0008.flac", 0.3)  # good, after the bad line
    _trans(
        bad / "84-121123.trans.txt",
        [
            b"84-121123-0000 GOOD ONE",
            b"84-121123-0001 TRUNCATED",
            b"84-121123-0002 CORRUPT",
            b"84-121123-0003 EMPTY AUDIO",
            b"84-121123-0005",
            b"84-121123-0006 FIRST VERSION",
            b"84-121123-0006 SECOND VERSION",
            b"84-121123-0007 CAF\xc9 AU LAIT",
            b"84-121123-0008 after   the bad line",
            b"84-121123-0009 NO AUDIO FOR THIS",
            b"",
        ],
    )
    # a transcript line whose id belongs to another chapter
    _flac(sub / "1272" / "128104" / "84-121123-0010.flac", 0.3)
    with open(sub / "1272" / "128104" / "1272-128104.trans.txt", "ab") as f:
        f.write(b"84-121123-0010 WRONG FOLDER\n")
    # a chapter without its transcript file
    _flac(sub / "3000" / "15664" / "3000-15664-0000.flac", 0.3)
    return tmp_path / "corpus"


EXPECTED_SKIPS = {
    ("84-121123-0001", "unreadable audio"),
    ("84-121123-0002", "unreadable audio"),
    ("84-121123-0003", "zero-length audio"),
    ("84-121123-0004", "no transcript"),
    ("84-121123-0005", "empty transcript"),
    ("84-121123-0006", "duplicate utterance id"),
    ("84-121123-0007", "not UTF-8"),
    ("84-121123-0009", "transcript for missing audio"),
    ("84-121123-0010", "utterance id not of this folder (expected prefix 1272-128104-)"),
    ("-", "transcript file not found"),
    ("3000-15664-0000", "no transcript"),
}


def _skips(data_dir: Path) -> list[dict[str, str]]:
    with open(data_dir / "skipped.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_prepare_with_bad_input(corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        out = prepare_librispeech(corpus, ["dev-clean"], tmp_path / "data", nj=1)
    d = out["dev-clean"]
    ddir = tmp_path / "data" / "dev_clean"
    assert data_dir_name("train-clean-100") == "train_clean_100"
    assert is_done(ddir, "prepare")
    assert d.utt_ids == [
        "1272-128104-0000",
        "1272-128104-0001",
        "1272-128104-0002",
        "2277-149896-0000",
        "2277-149896-0001",
        "84-121123-0000",
        "84-121123-0008",
    ]
    assert "84-121123-0006" not in d.text  # conflicting lines: neither version is trusted
    assert d.text["84-121123-0008"] == "AFTER THE BAD LINE"  # rest of the file after a non-UTF-8 line
    assert d.text["1272-128104-0002"] == "HELLO WORLD NUMBER 2"
    assert d.utt2spk["1272-128104-0001"] == "1272" and d.utt2spk["84-121123-0000"] == "84"
    assert d.utt2dur["1272-128104-0002"] == pytest.approx(0.35)
    for path in d.wav.values():
        assert Path(path).is_absolute() and Path(path).is_file()

    on_disk = DataDir.load(ddir)  # the files agree with what was returned
    assert on_disk.wav == d.wav and on_disk.text == d.text and on_disk.utt2spk == d.utt2spk
    assert on_disk.utt2dur == pytest.approx(d.utt2dur, abs=1e-3)
    assert (ddir / "spk2utt").read_text().splitlines()[0] == "1272 1272-128104-0000 1272-128104-0001 1272-128104-0002"

    skips = _skips(ddir)
    assert {
        (s["utt_id"], next((r for _, r in EXPECTED_SKIPS if s["reason"].startswith(r)), s["reason"])) for s in skips
    } == EXPECTED_SKIPS
    assert len(skips) == len(EXPECTED_SKIPS)
    non_utf8 = next(s for s in skips if s["utt_id"] == "84-121123-0007")
    assert non_utf8["file"].endswith("84-121123.trans.txt:8")  # file:line of the bad line
    assert "11 skipped" in caplog.text and "2 unreadable audio" in caplog.text


def test_parallel_matches_serial_and_done_marker(corpus: Path, tmp_path: Path) -> None:
    serial = prepare_librispeech(corpus / "LibriSpeech", ["dev-clean"], tmp_path / "a", nj=1)["dev-clean"]
    parallel = prepare_librispeech(corpus, ["dev-clean"], tmp_path / "b", nj=2)["dev-clean"]
    assert parallel == serial
    assert (tmp_path / "a" / "dev_clean" / "skipped.tsv").read_text() == (
        tmp_path / "b" / "dev_clean" / "skipped.tsv"
    ).read_text()

    # a finished subset is loaded, not redone; force redoes it
    text = tmp_path / "a" / "dev_clean" / "text"
    text.write_text(text.read_text().replace("GOOD ONE", "EDITED"))
    again = prepare_librispeech(corpus, ["dev-clean"], tmp_path / "a", nj=1)["dev-clean"]
    assert again.text["84-121123-0000"] == "EDITED"
    forced = prepare_librispeech(corpus, ["dev-clean"], tmp_path / "a", nj=1, force=True)["dev-clean"]
    assert forced.text["84-121123-0000"] == "GOOD ONE"

    # a corrected transcript in the corpus is a changed input: the subset is prepared again
    import shutil

    shutil.copytree(corpus, tmp_path / "copy", symlinks=True)
    prepare_librispeech(tmp_path / "copy", ["dev-clean"], tmp_path / "c", nj=1)
    trans = next((tmp_path / "copy").rglob("84-121123.trans.txt"))
    trans.write_bytes(trans.read_bytes().replace(b"GOOD ONE", b"BETTER ONE"))
    redone = prepare_librispeech(tmp_path / "copy", ["dev-clean"], tmp_path / "c", nj=1)["dev-clean"]
    assert redone.text["84-121123-0000"] == "BETTER ONE"


def test_missing_subset_and_nothing_usable(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="test-other"):
        prepare_librispeech(corpus, ["dev-clean", "test-other"], tmp_path / "data", nj=1)
    assert not (tmp_path / "data" / "dev_clean").exists()  # checked before any work
    junk = corpus / "LibriSpeech" / "test-clean" / "1" / "2"
    junk.mkdir(parents=True)
    (junk / "1-2-0000.flac").write_bytes(b"not audio")
    _trans(junk / "1-2.trans.txt", [b"1-2-0000 WORDS"])
    with pytest.raises(ValueError, match="no usable utterances"):
        prepare_librispeech(corpus, ["test-clean"], tmp_path / "data", nj=1)
    assert not is_done(tmp_path / "data" / "test_clean", "prepare")


def test_cli_prepare(corpus: Path, tmp_path: Path) -> None:
    assert (
        cli.main(
            ["prepare", "--corpus", str(corpus), "--out", str(tmp_path / "data"), "--subsets", "dev-clean", "--nj", "1"]
        )
        == 0
    )
    assert len(DataDir.load(tmp_path / "data" / "dev_clean").wav) == 7

import pytest

from asrdistill.data.datadir import DataDir
from asrdistill.data.lang import Lang


def test_data_dir_round_trip(tmp_path):
    d = DataDir(
        wav={"1-2-0001": "/a.flac", "1-2-0000": "/b.flac"},
        text={"1-2-0000": "HELLO WORLD", "1-2-0001": "HI"},
        utt2spk={"1-2-0000": "1", "1-2-0001": "1"},
        utt2dur={"1-2-0000": 1.5, "1-2-0001": 2.0},
    )
    d.save(tmp_path)
    assert (tmp_path / "spk2utt").read_text() == "1 1-2-0000 1-2-0001\n"
    assert (tmp_path / "wav.scp").read_text().splitlines()[0] == "1-2-0000 /b.flac"
    assert DataDir.load(tmp_path) == d


def test_inconsistent_data_dir_rejected(tmp_path):
    d = DataDir(wav={"a": "/a.flac"}, text={"b": "X"}, utt2spk={"a": "s"})
    with pytest.raises(ValueError, match="text does not match"):
        d.save(tmp_path)


def test_duplicate_key_names_file_and_line(tmp_path):
    (tmp_path / "wav.scp").write_text("a /x.flac\na /y.flac\n")
    (tmp_path / "utt2spk").write_text("a s\n")
    with pytest.raises(ValueError, match=r"wav.scp:2: duplicate"):
        DataDir.load(tmp_path)


def test_lang_round_trip_and_validation(tmp_path):
    lang = Lang(
        ["<eps>", "SIL", "SPN", "AH", "K"], ["<eps>", "<UNK>", "CAT"], [("<UNK>", ("SPN",)), ("CAT", ("K", "AH"))]
    )
    lang.save(tmp_path)
    assert Lang.load(tmp_path) == lang
    assert lang.phone_id["K"] == 4 and lang.pronunciations()["CAT"] == [("K", "AH")]
    with pytest.raises(ValueError, match="unknown or no phones"):
        Lang(["<eps>", "SIL", "SPN"], ["<eps>"], [("X", ("ZZ",))])

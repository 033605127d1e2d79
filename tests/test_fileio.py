from pathlib import Path

import pytest

from asrdistill.fileio import atomic_open, clear_done, is_done, mark_done, read_skipped


def test_atomic_open_leaves_no_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left behind either


def test_atomic_open_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_open(target) as f:
        f.write("new")
        assert target.read_text() == "old"  # not visible until the block ends
    assert target.read_text() == "new"


def test_done_markers(tmp_path):
    assert not is_done(tmp_path, "features")
    mark_done(tmp_path, "features", {"nj": 2})
    assert is_done(tmp_path, "features")
    clear_done(tmp_path, "features")
    assert not is_done(tmp_path, "features")


def test_clear_done_removes_what_a_killed_run_left_half_written(tmp_path):
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / ".feats-000005.tar.24k49sz3.tmp", tmp_path / "sub" / ".last.pt.abc.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    kept = [tmp_path / "feats-000001.tar", tmp_path / ".stage.done.keep"]
    for p in kept:
        p.write_bytes(b"whole")
    mark_done(tmp_path, "stage")
    clear_done(tmp_path, "stage")
    assert not is_done(tmp_path, "stage")
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_read_skipped_reads_both_forms(tmp_path):
    # features and data preparation: a header, with the file column or without it
    (tmp_path / "feats.tsv").write_text("utt_id\tfile\treason\nu1\t/a/u1.flac\tcannot decode\n\nu2\t/a/u2.flac\t"
                                        "duration 0.01 s outside [0.1, 30] s\n", encoding="utf-8")
    assert read_skipped(tmp_path / "feats.tsv") == {"u1": "cannot decode", "u2": "duration 0.01 s outside [0.1, 30] s"}
    (tmp_path / "import.tsv").write_text("utt_id\treason\nu3\tno audio\n", encoding="utf-8")
    assert read_skipped(tmp_path / "import.tsv") == {"u3": "no audio"}
    # aligners and alignment import: utt<TAB>reason rows, no header
    (tmp_path / "ali.tsv").write_text("u4\tempty transcript\nu5\talignment has 3 frames but the features have 4\n"
                                      "u6\n", encoding="utf-8")
    assert read_skipped(tmp_path / "ali.tsv") == {"u4": "empty transcript",
                                                  "u5": "alignment has 3 frames but the features have 4", "u6": ""}
    (tmp_path / "empty.tsv").write_text("", encoding="utf-8")
    assert read_skipped(tmp_path / "empty.tsv") == {}
    assert read_skipped(tmp_path / "missing.tsv") == {}


def test_writers_use_temporaries_that_remove_temporaries_finds(tmp_path, monkeypatch):
    """Audio and lhotse manifests go through atomic_path: a killed write leaves a ``.*.tmp`` that a rerun deletes."""
    import fnmatch
    import os

    import numpy as np
    import soundfile as sf

    from asrdistill.data import lhotse_io
    from data_prep import synthetic

    lhotse = pytest.importorskip("lhotse")
    renamed = []
    replace = os.replace
    monkeypatch.setattr("asrdistill.fileio.os.replace", lambda a, b: (renamed.append(Path(a).name), replace(a, b)))
    audio = (np.sin(np.arange(1600) / 5) * 8000).astype(np.int16)
    synthetic._write_flac(tmp_path / "a.flac", audio)
    assert np.array_equal(sf.read(tmp_path / "a.flac", dtype="int16")[0], audio)
    sups = lhotse.SupervisionSet.from_segments([lhotse.SupervisionSegment(id="ü", recording_id="ü", start=0.0,
                                                                          duration=0.1, text="héllo")])
    lhotse_io._save(sups, tmp_path / "supervisions.jsonl.gz")
    assert lhotse.load_manifest(tmp_path / "supervisions.jsonl.gz")[0].text == "héllo"
    assert len(renamed) == 2 and all(fnmatch.fnmatch(n, ".*.tmp") for n in renamed), renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.flac", "supervisions.jsonl.gz"]

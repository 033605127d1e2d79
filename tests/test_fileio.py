from pathlib import Path

import pytest

from asrdistill.fileio import atomic_open, clear_done, is_done, mark_done, read_skipped, stage_done, write_skipped


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


def test_skipped_tsv_has_one_format_written_and_read_by_one_pair(tmp_path):
    """Every stage's skipped.tsv: header utt_id/file/reason, one row per utterance, sorted; the file column empty
    where the stage does not know it; tabs and newlines in a reason never split a row."""
    write_skipped(
        tmp_path / "feats.tsv",
        [("u2", "/a/u 2.flac", "duration 0.01 s\toutside [0.1, 30] s"), ("u1", "/a/u1.flac", "cannot\ndecode")],
    )
    assert (tmp_path / "feats.tsv").read_text().splitlines() == [
        "utt_id\tfile\treason",
        "u1\t/a/u1.flac\tcannot decode",
        "u2\t/a/u 2.flac\tduration 0.01 s outside [0.1, 30] s",
    ]
    assert read_skipped(tmp_path / "feats.tsv") == {"u1": "cannot decode", "u2": "duration 0.01 s outside [0.1, 30] s"}
    write_skipped(tmp_path / "ali.tsv", {"u5": "alignment has 3 frames", "u4": "empty transcript"})
    assert (tmp_path / "ali.tsv").read_text().splitlines()[1] == "u4\t\tempty transcript"
    assert read_skipped(tmp_path / "ali.tsv") == {"u4": "empty transcript", "u5": "alignment has 3 frames"}
    write_skipped(tmp_path / "none.tsv", {})
    assert read_skipped(tmp_path / "none.tsv") == {} and read_skipped(tmp_path / "missing.tsv") == {}
    (tmp_path / "old.tsv").write_text("u4\tempty transcript\n", encoding="utf-8")  # no header: not this format
    with pytest.raises(ValueError, match=r"old\.tsv: not a skipped\.tsv"):
        read_skipped(tmp_path / "old.tsv")
    (tmp_path / "short.tsv").write_text("utt_id\tfile\treason\nu1\tno file column\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"short\.tsv: line 2: expected 3"):
        read_skipped(tmp_path / "short.tsv")


def test_stage_done_skips_redoes_on_changed_inputs_and_when_forced(tmp_path, caplog):
    """The one "already done" test: same inputs -> the stored record; a changed input or force -> None, with the
    marker and the temporaries gone, on_redo called and the changed input named in the log."""
    src = tmp_path / "in.txt"
    src.write_text("a")
    out = tmp_path / "out"
    inputs = {"config": {"n": 1}, "src": src}
    assert stage_done(out, "stage", inputs) is None  # never done
    mark_done(out, "stage", {"frames": 7}, inputs)
    assert stage_done(out, "stage", inputs) == {"frames": 7}  # skip: the stage's own record
    assert stage_done(out, "stage", {"config": {"n": 1}, "src": src}) == {"frames": 7}
    redone = []
    caplog.set_level("INFO")
    src.write_text("b")  # an input file changed
    (out / ".x.abc.tmp").write_text("half")  # what a killed redo would leave
    assert stage_done(out, "stage", inputs, on_redo=lambda: redone.append(1)) is None
    assert "changed: src" in caplog.text and redone == [1]
    assert not is_done(out, "stage") and not (out / ".x.abc.tmp").exists()
    mark_done(out, "stage", {"frames": 8}, inputs)
    assert stage_done(out, "stage", {**inputs, "config": {"n": 2}}) is None and "changed: config" in caplog.text
    mark_done(out, "stage", {"frames": 8}, inputs)
    assert stage_done(out, "stage", inputs, force=True) is None and "forced" in caplog.text
    mark_done(out, "stage", {"frames": 8})  # a marker without fingerprints: redone
    assert stage_done(out, "stage", inputs) is None


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
    sups = lhotse.SupervisionSet.from_segments(
        [lhotse.SupervisionSegment(id="ü", recording_id="ü", start=0.0, duration=0.1, text="héllo")]
    )
    lhotse_io._save(sups, tmp_path / "supervisions.jsonl.gz")
    assert lhotse.load_manifest(tmp_path / "supervisions.jsonl.gz")[0].text == "héllo"
    assert len(renamed) == 2 and all(fnmatch.fnmatch(n, ".*.tmp") for n in renamed), renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.flac", "supervisions.jsonl.gz"]

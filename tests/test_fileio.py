import pytest

from asrdistill.fileio import atomic_open, clear_done, is_done, mark_done


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

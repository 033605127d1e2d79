import numpy as np
import pytest

from asrdistill.data.shards import ShardManifest, iter_aligned, iter_shard, plan_shards, write_shard


def _feats(n, t0=3):
    return [(f"u{i}", {"feats": np.full((t0 + i, 4), i, np.float16)}) for i in range(n)]


def test_round_trip_and_manifest(tmp_path):
    info = write_shard(tmp_path / "feats-000000.tar", _feats(3))
    assert info.keys == ["u0", "u1", "u2"] and info.num_frames == 3 + 4 + 5
    m = ShardManifest(tmp_path, "feats", [info], {"dim": 4})
    m.save()
    m2 = ShardManifest.load(tmp_path, "feats")
    assert m2.keys == ["u0", "u1", "u2"] and m2.meta == {"dim": 4}
    got = list(iter_shard(m2.shard_paths[0]))
    assert [k for k, _ in got] == ["u0", "u1", "u2"]
    np.testing.assert_array_equal(got[2][1]["feats"], np.full((5, 4), 2, np.float16))


def test_manifest_with_missing_shard_is_an_error(tmp_path):
    info = write_shard(tmp_path / "feats-000000.tar", _feats(1))
    ShardManifest(tmp_path, "feats", [info]).save()
    (tmp_path / "feats-000000.tar").unlink()
    with pytest.raises(FileNotFoundError, match="feats-000000.tar"):
        ShardManifest.load(tmp_path, "feats")


def test_aligned_iteration_checks_keys(tmp_path):
    a = write_shard(tmp_path / "feats-000000.tar", _feats(2))
    b = write_shard(
        tmp_path / "pdf-000000.tar", [("u0", {"pdf": np.zeros(3, np.int32)}), ("u1", {"pdf": np.ones(4, np.int32)})]
    )
    merged = list(iter_aligned([tmp_path / a.name, tmp_path / b.name]))
    assert [sorted(s) for _, s in merged] == [["feats", "pdf"], ["feats", "pdf"]]
    write_shard(
        tmp_path / "bad-000000.tar", [("u0", {"pdf": np.zeros(3, np.int32)}), ("zz", {"pdf": np.zeros(4, np.int32)})]
    )
    with pytest.raises(ValueError, match="not aligned"):
        list(iter_aligned([tmp_path / a.name, tmp_path / "bad-000000.tar"]))
    write_shard(tmp_path / "short-000000.tar", [("u0", {"pdf": np.zeros(3, np.int32)})])
    with pytest.raises(ValueError, match="ends before"):
        list(iter_aligned([tmp_path / a.name, tmp_path / "short-000000.tar"]))


def test_corrupt_shard_names_file(tmp_path):
    path = tmp_path / "feats-000000.tar"
    write_shard(path, _feats(4))
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(ValueError, match="feats-000000.tar"):
        list(iter_shard(path))


def test_plan_shards_bounds_size():
    groups = plan_shards({f"u{i}": 1.0 for i in range(10)} | {"big": 50.0}, max_size=3.0)
    assert ["big"] in groups
    assert all(len(g) <= 3 for g in groups)
    assert sorted(u for g in groups for u in g) == sorted([f"u{i}" for i in range(10)] + ["big"])


def test_shards_are_webdataset_shards(tmp_path):
    import webdataset as wds

    feats = np.arange(12, dtype=np.float16).reshape(3, 4)
    write_shard(
        tmp_path / "feats-000000.tar",
        [
            ("u1", {"feats": feats, "pdf": np.array([1, 2, 3], np.int32)}),
            ("u2", {"feats": feats[:1], "pdf": np.array([4], np.int32)}),
        ],
    )
    samples = list(wds.WebDataset(str(tmp_path / "feats-000000.tar"), shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == ["u1", "u2"]
    np.testing.assert_array_equal(samples[0]["feats.npy"], feats)
    np.testing.assert_array_equal(samples[1]["pdf.npy"], [4])

"""Frame streams: context windows, coverage, determinism, resume, rank split, label checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from asrdistill.data.features import Cmvn
from asrdistill.data.frames import Batch, FrameConfig, FrameData, FrameStream, context_windows, iter_utterances
from asrdistill.data.shards import ShardManifest, write_shard

D = 4
K = 3


def _identity_cmvn() -> Cmvn:
    return Cmvn(mean=np.zeros(D), var=np.ones(D), count=1)


def _feats(u: int, t: int) -> np.ndarray:
    """Frame t of utterance u is recognisable: dim0 = t, dim1 = u, the rest noise."""
    rng = np.random.default_rng(u)
    f = rng.standard_normal((t, D)).astype(np.float16)
    f[:, 0] = np.arange(t)
    f[:, 1] = u
    return f


def _label(u: int, t: np.ndarray | int) -> np.ndarray:
    return (u * 1000 + np.asarray(t)).astype(np.int32)


def _make_sets(
    root: Path, shard_lens: list[list[int]], empty: set[int] = frozenset(), soft: bool = False, bad: int | None = None
) -> tuple[ShardManifest, ShardManifest, ShardManifest | None]:
    """Feature/label(/soft) shard sets; utterance numbers in ``empty`` are unaligned, ``bad`` mislabelled."""
    fm, lm, sm = ShardManifest(root, "feats", meta={"dim": D}), ShardManifest(root, "pdf"), ShardManifest(root, "soft")
    u = 0
    for i, lens in enumerate(shard_lens):
        fs, ls, ss = [], [], []
        for t in lens:
            key = f"spk{u % 3}-1-{u:04d}"
            fs.append((key, {"feats": _feats(u, t)}))
            n = 0 if u in empty else (t - 1 if u == bad else t)
            ls.append((key, {"pdf": _label(u, np.arange(n))}))
            idx = np.stack([_label(u, np.arange(t)) + j for j in range(K)], axis=1)
            ss.append((key, {"topk_idx": idx, "topk_prob": np.full((t, K), 1.0 / K, np.float16)}))
            u += 1
        fm.shards.append(write_shard(root / fm.shard_name(i), fs))
        lm.shards.append(write_shard(root / lm.shard_name(i), ls))
        sm.shards.append(write_shard(root / sm.shard_name(i), ss))
    return fm, lm, (sm if soft else None)


SHARDS = [[37, 5, 60], [12, 80], [3, 44, 21, 9], [50], [27, 31]]


def _frame_ids(batch: Batch, left: int) -> list[tuple[int, int]]:
    """(utterance, frame) of each window's centre frame."""
    centre = batch.x.reshape(batch.x.shape[0], -1, D)[:, left]
    return [(int(a), int(b)) for b, a in zip(centre[:, 0].tolist(), centre[:, 1].tolist())]


def _collect(stream: FrameStream, epoch: int, skip: int = 0) -> list[Batch]:
    return list(stream.epoch(epoch, skip_batches=skip))


def _same(a: list[Batch], b: list[Batch]) -> bool:
    return len(a) == len(b) and all(torch.equal(p.x, q.x) and torch.equal(p.y, q.y) for p, q in zip(a, b))


def _naive_window(f: np.ndarray, t: int, left: int, right: int) -> np.ndarray:
    rows = [min(max(j, 0), len(f) - 1) for j in range(t - left, t + right + 1)]
    return f[rows].astype(np.float32).reshape(-1)


def test_windows_match_naive_edge_padding(tmp_path: Path) -> None:
    fm, lm, _ = _make_sets(tmp_path, [[7, 30]])
    cfg = FrameConfig(left=4, right=2, batch_size=5, buffer_frames=100)
    got = dict((utt, (x, y)) for utt, x, y in iter_utterances(fm, _identity_cmvn(), cfg, labels=lm))
    for u, (key, t) in enumerate([("spk0-1-0000", 7), ("spk1-1-0001", 30)]):
        x, y = got[key]
        assert x.shape == (t, 7 * D) and x.dtype == torch.float32
        assert torch.equal(y, torch.from_numpy(_label(u, np.arange(t)).astype(np.int64)))
        for frame in (0, 1, 3, t - 2, t - 1):
            np.testing.assert_array_equal(x[frame].numpy(), _naive_window(_feats(u, t), frame, 4, 2))
    # the stream's windows are the same windows
    stream = FrameStream(fm, lm, _identity_cmvn(), cfg, seed=3)
    for batch in stream.epoch(0):
        for row, (u, t) in zip(batch.x.numpy(), _frame_ids(batch, 4)):
            np.testing.assert_array_equal(row, _naive_window(_feats(u, [7, 30][u]), t, 4, 2))


def test_epoch_covers_every_labelled_frame_once_and_skips_unaligned(tmp_path: Path) -> None:
    fm, lm, _ = _make_sets(tmp_path, SHARDS, empty={1, 6})
    cfg = FrameConfig(left=3, right=2, batch_size=16, buffer_frames=40, open_shards=2)
    stream = FrameStream(fm, lm, _identity_cmvn(), cfg, seed=0)
    batches = _collect(stream, 0)
    lens = [t for s in SHARDS for t in s]
    expected = {(u, t) for u, n in enumerate(lens) if u not in (1, 6) for t in range(n)}
    ids = [fid for b in batches for fid in _frame_ids(b, 3)]
    assert len(ids) == len(set(ids)) == len(expected) and set(ids) == expected
    for b in batches:  # labels travel with their windows
        assert b.y.dtype == torch.int64
        assert b.y.tolist() == [u * 1000 + t for u, t in _frame_ids(b, 3)]
    assert all(len(b.y) == 16 for b in batches[:-1]) and 0 < len(batches[-1].y) <= 16
    assert len(batches) == stream.num_batches(0)
    # frames are mixed across utterances, not in stored order
    first = _frame_ids(batches[0], 3)
    assert len({u for u, _ in first}) > 1 and first != sorted(first)


def test_an_epoch_of_several_passes_covers_every_frame_that_many_times(tmp_path: Path) -> None:
    from collections import Counter

    fm, lm, _ = _make_sets(tmp_path, SHARDS, empty={1})
    cfg = FrameConfig(left=3, right=2, batch_size=16, buffer_frames=40, open_shards=2)
    once = [fid for b in _collect(FrameStream(fm, lm, _identity_cmvn(), cfg, seed=0), 0) for fid in _frame_ids(b, 3)]
    stream = FrameStream(fm, lm, _identity_cmvn(), cfg, seed=0, passes=3)
    batches = _collect(stream, 0)
    ids = [fid for b in batches for fid in _frame_ids(b, 3)]
    assert Counter(ids) == Counter({fid: 3 for fid in once})
    assert len(batches) == stream.num_batches(0) == -(-3 * len(once) // 16)
    assert ids[len(once) : 2 * len(once)] != once
    for k in (0, 5, len(batches) - 1):  # resumable like any epoch
        assert _same(_collect(stream, 0, skip=k), batches[k:]), k


def test_stream_is_deterministic_and_resumable(tmp_path: Path) -> None:
    fm, lm, _ = _make_sets(tmp_path, SHARDS, empty={4})
    cfg = FrameConfig(left=2, right=1, batch_size=16, buffer_frames=50, open_shards=2)
    stream = FrameStream(fm, lm, _identity_cmvn(), cfg, seed=7)
    full = _collect(stream, 2)
    assert _same(full, _collect(FrameStream(fm, lm, _identity_cmvn(), cfg, seed=7), 2))
    assert not _same(full, _collect(stream, 3))
    assert not _same(full, _collect(FrameStream(fm, lm, _identity_cmvn(), cfg, seed=8), 2))
    # resuming at any batch (inside a buffer, at buffer edges, the last one, past the end) continues identically
    for k in range(0, len(full) + 2):
        assert _same(_collect(stream, 2, skip=k), full[k:]), k
    # prefetching in a thread changes nothing
    sync = FrameStream(fm, lm, _identity_cmvn(), FrameConfig(**{**cfg.__dict__, "prefetch": 0}), seed=7)
    assert _same(_collect(sync, 2), full)


def test_skipped_batches_are_not_gathered(tmp_path: Path, monkeypatch) -> None:
    fm, lm, _ = _make_sets(tmp_path, SHARDS)
    cfg = FrameConfig(left=2, right=1, batch_size=16, buffer_frames=60, prefetch=0)
    stream = FrameStream(fm, lm, _identity_cmvn(), cfg, seed=1)
    total = len(_collect(stream, 0))
    moved = []
    real = FrameStream._to_device
    monkeypatch.setattr(FrameStream, "_to_device", lambda self, host: moved.append(host.n) or real(self, host))
    assert len(_collect(stream, 0, skip=total - 1)) == 1
    assert len(moved) <= 2  # only the buffers feeding the last batch reach the device


@pytest.mark.parametrize("world_size", [2, 3, len(SHARDS) + 3])
def test_rank_split_is_by_frames_disjoint_complete_and_balanced(tmp_path: Path, world_size: int) -> None:
    fm, lm, sm = _make_sets(tmp_path, SHARDS, empty={6}, soft=True)
    cfg = FrameConfig(left=1, right=1, batch_size=8, buffer_frames=64)
    total = sum(t for u, t in enumerate(t for s in SHARDS for t in s) if u != 6)
    frames, counts = [], []
    for rank in range(world_size):  # more ranks than shards works too
        s = FrameStream(fm, lm, _identity_cmvn(), cfg, soft=sm, seed=5, rank=rank, world_size=world_size)
        batches = _collect(s, 1)
        ids = [fid for b in batches for fid in _frame_ids(b, 1)]
        for b in batches:  # labels and soft targets stay with their frames in shared utterances
            assert b.y.tolist() == [u * 1000 + t for u, t in _frame_ids(b, 1)]
            assert torch.equal(b.soft_idx[:, 0], b.y)
        assert len(ids) == len(set(ids)) == s.num_frames(1) and len(batches) == s.num_batches(1)
        frames.append(set(ids))
        counts.append(len(ids))
    assert max(counts) - min(counts) <= 1
    assert sum(counts) == len(set().union(*frames)) == total


def test_length_mismatch_names_the_shard(tmp_path: Path) -> None:
    fm, lm, _ = _make_sets(tmp_path, SHARDS, bad=4)  # utterance 4 (80 frames) lives in shard 1
    for prefetch in (0, 1):
        cfg = FrameConfig(left=1, right=1, batch_size=8, buffer_frames=30, prefetch=prefetch)
        with pytest.raises(ValueError, match=r"pdf-000001\.tar.*spk1-1-0004.*79 labels but 80"):
            _collect(FrameStream(fm, lm, _identity_cmvn(), cfg), 0)
    with pytest.raises(ValueError, match="pdf-000001"):
        list(iter_utterances(fm, _identity_cmvn(), FrameConfig(), labels=lm))


def test_misaligned_label_set_is_rejected(tmp_path: Path) -> None:
    fm, _, _ = _make_sets(tmp_path / "a", SHARDS)
    _, lm, _ = _make_sets(tmp_path / "b", SHARDS[:-1])
    with pytest.raises(ValueError, match="shards"):
        FrameStream(fm, lm, _identity_cmvn(), FrameConfig())


def test_soft_targets_follow_their_frames(tmp_path: Path) -> None:
    fm, lm, sm = _make_sets(tmp_path, SHARDS, soft=True)
    cfg = FrameConfig(left=2, right=2, batch_size=20, buffer_frames=70)
    for b in FrameStream(fm, lm, _identity_cmvn(), cfg, soft=sm, seed=2).epoch(0):
        assert b.soft_idx.dtype == torch.int64 and b.soft_prob.dtype == torch.float32
        assert b.soft_idx.shape == (len(b.y), K)
        assert torch.equal(b.soft_idx[:, 0], b.y) and torch.equal(b.soft_idx[:, 2], b.y + 2)
        assert torch.allclose(b.soft_prob.sum(1), torch.ones(len(b.y)), atol=1e-3)


def test_cmvn_applied_globally_and_per_speaker(tmp_path: Path) -> None:
    fm, lm, _ = _make_sets(tmp_path, SHARDS)
    cfg = FrameConfig(left=0, right=0, batch_size=64, buffer_frames=100)
    keys = fm.keys
    glob = Cmvn(mean=np.array([1.0, 2.0, 0.5, -1.0]), var=np.array([4.0, 1.0, 0.25, 9.0]), count=10)
    spk = Cmvn(
        mean=glob.mean,
        var=glob.var,
        count=10,
        spk_mean={"spk0": np.full(D, 3.0), "spk1": np.zeros(D)},
        spk_var={"spk0": np.full(D, 4.0), "spk1": np.ones(D)},
        utt2spk={k: k.split("-")[0] for k in keys},
    )
    for cmvn in (glob, spk):
        for b in FrameStream(fm, lm, cmvn, cfg, seed=0).epoch(0):
            for row, y in zip(b.x, b.y.tolist()):
                u, t = divmod(y, 1000)
                ref = cmvn.apply(_feats(u, [n for s in SHARDS for n in s][u])[t : t + 1], utt=keys[u])[0]
                np.testing.assert_allclose(row.numpy(), ref, rtol=1e-5, atol=1e-5)
    # iter_utterances applies the same statistics
    for utt, x, _ in iter_utterances(fm, spk, cfg):
        u = keys.index(utt)
        np.testing.assert_allclose(x.numpy(), spk.apply(_feats(u, x.shape[0]), utt=utt), rtol=1e-5, atol=1e-5)


def test_bfloat16_buffer_and_eval_without_labels(tmp_path: Path) -> None:
    fm, lm, _ = _make_sets(tmp_path, SHARDS, empty={0})
    cfg = FrameConfig(left=1, right=1, batch_size=64, buffer_frames=100, dtype="bfloat16")
    b = next(iter(FrameStream(fm, lm, _identity_cmvn(), cfg).epoch(0)))
    assert b.x.dtype == torch.bfloat16 and b.x.shape == (64, 3 * D)
    # decoding sees every utterance, unaligned ones included
    utts = [u for u, _, y in iter_utterances(fm, _identity_cmvn(), cfg) if y is None]
    assert utts == fm.keys
    assert "spk0-1-0000" not in [u for u, _, _ in iter_utterances(fm, _identity_cmvn(), cfg, labels=lm)]


def test_context_windows_short_utterance() -> None:
    f = torch.arange(2 * D, dtype=torch.float32).reshape(2, D)
    w = context_windows(f, 3, 2)
    assert w.shape == (2, 6 * D)
    np.testing.assert_array_equal(w[1].numpy(), _naive_window(f.numpy(), 1, 3, 2))


def test_frame_data_finds_each_sets_features_labels_and_the_training_cmvn(tmp_path):
    """FrameData: ``feats_root/<set>``, ``labels_root/<set>``, CMVN of the training set unless given; a set without
    labels has none (a test set), and asking for its labels anyway names the folder."""
    rng = np.random.default_rng(0)
    for name, labelled in (("train", True), ("test", False)):
        ShardManifest(
            tmp_path / "fbank" / name,
            "feats",
            [
                write_shard(
                    tmp_path / "fbank" / name / "feats-000000.tar",
                    [("u", {"feats": rng.standard_normal((4, 3)).astype(np.float16)})],
                )
            ],
        ).save()
        if labelled:
            ShardManifest(
                tmp_path / "ali" / name,
                "pdf",
                [
                    write_shard(
                        tmp_path / "ali" / name / "pdf-000000.tar", [("u", {"pdf": np.zeros(4, dtype=np.int32)})]
                    )
                ],
            ).save()
    Cmvn(np.zeros(3), np.ones(3), 1).save(tmp_path / "fbank" / "train" / "cmvn.json")
    data = FrameData(str(tmp_path / "fbank"), str(tmp_path / "ali"), "train", "dev", "test")
    assert data.cmvn_path == tmp_path / "fbank" / "train" / "cmvn.json" and data.cmvn().dim == 3
    feats, labels = data.labelled("train")
    assert feats.keys == labels.keys == ["u"] and data.sets == ("train", "dev", "test")
    assert data.labels("test") is None and data.feats("test").num_frames == 4
    with pytest.raises(FileNotFoundError, match=r"ali/test/pdf\.manifest\.json"):
        data.labelled("test")
    assert FrameData(tmp_path, tmp_path, "a", "b", cmvn_path=tmp_path / "c.json").cmvn_path == tmp_path / "c.json"

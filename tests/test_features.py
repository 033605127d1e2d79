"""Filterbank shards and CMVN: frame counts, values, bad audio, resume, statistics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as kaldi

from asrdistill.data.datadir import DataDir, read_kv
from asrdistill.data.features import Cmvn, FbankConfig, compute_cmvn, compute_features, fbank, num_frames
from asrdistill.data.shards import ShardManifest, iter_shard

SR = 16000
# lengths in samples: exact window, window + one shift - 1, typical, odd
LENGTHS = [400, 559, 560, 16000, 12345, 8000, 24011, 4321]


def _write_corpus(root: Path, lengths: list[int], seed: int = 0) -> DataDir:
    rng = np.random.default_rng(seed)
    data = DataDir()
    for i, n in enumerate(lengths):
        spk = f"{100 + i % 2}"
        utt = f"{spk}-7-{i:04d}"
        t = np.arange(n) / SR
        audio = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.01 * rng.standard_normal(n)
        path = root / "audio" / f"{utt}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio.astype(np.float32), SR, subtype="PCM_16")
        data.wav[utt] = str(path)
        data.text[utt] = "HELLO"
        data.utt2spk[utt] = spk
        data.utt2dur[utt] = n / SR
    return data


@pytest.fixture()
def corpus(tmp_path: Path) -> tuple[Path, DataDir]:
    data = _write_corpus(tmp_path, LENGTHS)
    data.save(tmp_path / "data")
    return tmp_path / "data", data


def _small_shards() -> FbankConfig:
    # ~3 utterances per shard, so multi-shard behaviour is exercised on tiny data; no minimum
    # duration, so that audio of exactly one analysis window (25 ms) is featurized
    return FbankConfig(shard_size_mb=0.015, min_duration=0.0)


def test_num_frames_snip_edges() -> None:
    cfg = FbankConfig()
    assert num_frames(399, cfg) == 0
    assert num_frames(400, cfg) == 1
    assert num_frames(559, cfg) == 1
    assert num_frames(560, cfg) == 2
    assert num_frames(16000, cfg) == 98


def test_shards_match_direct_fbank_and_audio_length(corpus, tmp_path: Path) -> None:
    data_dir, data = corpus
    manifest = compute_features(data_dir, tmp_path / "fbank", _small_shards(), nj=1)
    assert len(manifest.shards) > 1
    assert sorted(manifest.keys) == data.utt_ids
    assert manifest.meta["dim"] == 40 and manifest.meta["dtype"] == "float16"
    utt2frames = read_kv(tmp_path / "fbank" / "utt2num_frames")
    seen = 0
    for path in manifest.shard_paths:
        for utt, sample in iter_shard(path):
            feats = sample["feats"]
            n = sf.info(data.wav[utt]).frames
            assert feats.dtype == np.float16 and feats.shape == (1 + (n - 400) // 160, 40)
            assert int(utt2frames[utt]) == feats.shape[0]
            audio, _ = sf.read(data.wav[utt], dtype="float32")
            ref = kaldi.fbank(
                torch.from_numpy(audio * 32768.0)[None], num_mel_bins=40, dither=0.0, energy_floor=0.0
            ).numpy()
            np.testing.assert_allclose(feats.astype(np.float32), ref, rtol=2e-3, atol=2e-2)
            seen += 1
    assert seen == len(LENGTHS)
    # reloading the manifest gives the same frame totals
    again = ShardManifest.load(tmp_path / "fbank", "feats")
    assert again.num_frames == manifest.num_frames == sum(int(v) for v in utt2frames.values())


def test_bad_audio_is_skipped_and_reported(corpus, tmp_path: Path, caplog) -> None:
    data_dir, data = corpus
    utts = data.utt_ids
    Path(data.wav[utts[1]]).write_bytes(b"fLaC this is not a flac file")
    Path(data.wav[utts[2]]).write_bytes(b"")
    sf.write(data.wav[utts[3]], np.zeros(300, dtype=np.float32), SR)  # shorter than one window
    with caplog.at_level(logging.WARNING):
        manifest = compute_features(data_dir, tmp_path / "fbank", _small_shards(), nj=1)
    bad = {utts[1], utts[2], utts[3]}
    assert set(manifest.keys) == set(utts) - bad
    rows = [line.split("\t") for line in (tmp_path / "fbank" / "skipped.tsv").read_text().splitlines()[1:]]
    assert {r[0] for r in rows} == bad
    reasons = {r[0]: r[2] for r in rows}
    assert "decode" in reasons[utts[1]] and "too short" in reasons[utts[3]]
    assert all(r[1] == data.wav[r[0]] for r in rows)
    assert data.wav[utts[1]] in caplog.text
    assert manifest.meta["num_skipped"] == 3


def test_resume_reuses_finished_shards(corpus, tmp_path: Path) -> None:
    data_dir, _ = corpus
    out = tmp_path / "fbank"
    cfg = _small_shards()
    first = compute_features(data_dir, out, cfg, nj=1)
    # simulate a run killed after two shards: drop the stage marker, the manifest and the last shard
    (out / ".features.done").unlink()
    first.path.unlink()
    last = first.shard_paths[-1]
    last.unlink()
    kept = {p: p.stat().st_mtime_ns for p in first.shard_paths[:-1]}
    second = compute_features(data_dir, out, cfg, nj=1)
    assert last.is_file()
    assert {p: p.stat().st_mtime_ns for p in first.shard_paths[:-1]} == kept
    assert second.keys == first.keys and second.num_frames == first.num_frames
    # a finished stage is a no-op; a changed setting recomputes
    assert compute_features(data_dir, out, cfg, nj=1).keys == first.keys
    assert {p: p.stat().st_mtime_ns for p in first.shard_paths[:-1]} == kept
    compute_features(data_dir, out, FbankConfig(shard_size_mb=0.015, num_mel_bins=23), nj=1)
    assert next(iter_shard(first.shard_paths[0]))[1]["feats"].shape[1] == 23


def test_parallel_workers_match_serial(corpus, tmp_path: Path) -> None:
    data_dir, _ = corpus
    serial = compute_features(data_dir, tmp_path / "a", _small_shards(), nj=1)
    parallel = compute_features(data_dir, tmp_path / "b", _small_shards(), nj=2)
    assert [s.keys for s in parallel.shards] == [s.keys for s in serial.shards]
    for a, b in zip(serial.shard_paths, parallel.shard_paths):
        for (ka, sa), (kb, sb) in zip(iter_shard(a), iter_shard(b)):
            assert ka == kb and np.array_equal(sa["feats"], sb["feats"])


def test_cmvn_global_and_speaker(corpus, tmp_path: Path) -> None:
    data_dir, data = corpus
    manifest = compute_features(data_dir, tmp_path / "fbank", _small_shards(), nj=1)
    feats = {u: s["feats"] for p in manifest.shard_paths for u, s in iter_shard(p)}
    allf = np.concatenate(list(feats.values())).astype(np.float64)

    cmvn = compute_cmvn(manifest)
    assert cmvn.count == allf.shape[0]
    np.testing.assert_allclose(cmvn.mean, allf.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(cmvn.var, allf.var(0), rtol=1e-5, atol=1e-6)
    normed = np.concatenate([cmvn.apply(f) for f in feats.values()])
    assert normed.dtype == np.float32
    np.testing.assert_allclose(normed.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(normed.var(0), 1.0, atol=1e-3)

    path = cmvn.save(tmp_path / "cmvn.json")
    loaded = Cmvn.load(path)
    some = next(iter(feats.values()))
    t = loaded.apply(torch.from_numpy(some))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), cmvn.apply(some), rtol=1e-5, atol=1e-5)

    spk = compute_cmvn(manifest, utt2spk=data.utt2spk)
    spk = Cmvn.load(spk.save(tmp_path / "cmvn-spk.json"))
    for speaker, utts in data.spk2utt.items():
        x = np.concatenate([spk.apply(feats[u], utt=u) for u in utts])
        np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(x.var(0), 1.0, atol=1e-3)
    # an unknown utterance falls back to the global statistics
    np.testing.assert_allclose(spk.apply(some, utt="nobody"), cmvn.apply(some), rtol=1e-5, atol=1e-5)

    with pytest.raises(ValueError, match="40-dim"):
        cmvn.apply(np.zeros((3, 23), dtype=np.float32))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json"):
        Cmvn.load(tmp_path / "broken.json")


def test_fbank_rejects_short_audio_and_config_validates() -> None:
    with pytest.raises(ValueError, match="too short"):
        fbank(np.zeros(399, dtype=np.float32), FbankConfig())
    with pytest.raises(ValueError, match="cmvn"):
        FbankConfig(cmvn="utterance")


def test_manifest_meta_records_config(corpus, tmp_path: Path) -> None:
    data_dir, _ = corpus
    manifest = compute_features(data_dir, tmp_path / "fbank", FbankConfig(), nj=1)
    meta = json.loads(manifest.path.read_text())["meta"]
    assert meta["config"]["num_mel_bins"] == 40 and meta["config"]["dither"] == 0.0
    assert len(manifest.shards) == 1


@pytest.mark.parametrize(
    "n, bins, shift, length",
    [(16000 * 3 + 77, 40, 10.0, 25.0), (4321, 23, 10.0, 25.0), (400, 40, 10.0, 25.0), (9000, 80, 12.5, 30.0)],
)
def test_fbank_equals_torchaudio_kaldi_fbank(n: int, bins: int, shift: float, length: float) -> None:
    rng = np.random.default_rng(n)
    audio = (0.3 * np.sin(np.arange(n) / 7.0) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    audio[: n // 4] = 0.0  # digital silence hits the log floor the same way
    cfg = FbankConfig(num_mel_bins=bins, frame_shift_ms=shift, frame_length_ms=length)
    ref = kaldi.fbank(
        torch.from_numpy(audio * 32768.0)[None],
        num_mel_bins=bins,
        frame_shift=shift,
        frame_length=length,
        dither=0.0,
        energy_floor=0.0,
    ).numpy()
    got = fbank(audio, cfg)
    assert got.shape == ref.shape == (num_frames(n, cfg), bins)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-3)
    dithered = fbank(audio, FbankConfig(num_mel_bins=bins, frame_shift_ms=shift, frame_length_ms=length, dither=1.0))
    assert np.isfinite(dithered).all() and dithered.shape == ref.shape
    if n // 4 >= 400:  # the first frame is digital silence: at the log floor without dither, above it with
        assert ref[0].max() == pytest.approx(np.log(np.finfo(np.float32).eps)) and dithered[0].min() > ref[0].max()


@pytest.mark.parametrize(
    "body, message",
    [
        ("num_mel_bins: 0", r"features.num_mel_bins must be an integer >= 3, got 0"),
        ("num_mel_bins: 40.5", r"features.num_mel_bins: expected an integer, got 40.5"),
        ("sample_rate: 8", r"features.sample_rate must be an integer >= 1000, got 8"),
        ("frame_shift_ms: -10", r"features.frame_shift_ms must be a positive finite number, got -10.0"),
        ("frame_length_ms: .nan", r"features.frame_length_ms must be a positive finite number, got nan"),
        ("frame_length_ms: 0.01", r"features.frame_length_ms and frame_shift_ms must each span a sample"),
        ("shard_size_mb: 0", r"features.shard_size_mb must be a positive finite number, got 0.0"),
        ("dither: -1", r"features.dither must be a finite number >= 0, got -1.0"),
        ("dither: yes", r"features.dither: expected a number, got True"),
        ("min_duration: -0.5", r"features.min_duration must be a finite number >= 0, got -0.5"),
        ("max_duration: .inf", r"features.max_duration must be a positive finite number, got inf"),
        ("max_duration: 0.05", r"features.min_duration must be below features.max_duration, got 0.1 >= 0.05"),
        ("cmvn: utterance", r"features.cmvn must be 'global' or 'speaker', got 'utterance'"),
    ],
)
def test_fbank_settings_are_checked_naming_file_key_and_range(tmp_path: Path, body: str, message: str) -> None:
    from asrdistill.config import load_section

    cfg = tmp_path / "conf.yaml"
    cfg.write_text(f"features:\n  {body}\n")
    with pytest.raises(ValueError, match=rf"^{cfg}:(features: )?{message}"):
        load_section(cfg, "features", FbankConfig)

"""Fault injection: SIGKILL of a stage's whole process group at a random point, and a full disk.

Each kill case runs the real ``asrdistill`` command as a subprocess in its own
process group (its worker processes included) on tiny data: once uninterrupted,
once killed with SIGKILL at a random moment of its run, then once more to
resume; the resumed outputs must equal the uninterrupted ones (bytes for
shards, values for checkpoints). The disk-full cases patch a writer to raise
``OSError(ENOSPC)`` in the middle of a file: no done marker, no partial file
left where a later stage would trust it, and the rerun matches a clean run.

Kill points come from ``random.Random(FAULT_SEED)`` (environment, default 0), so
a failure is reproducible. CI (``.ci/run``) runs every case, slow ones included,
at the default seed; to sample other kill points run
``FAULT_SEED=$RANDOM pytest -q tests/test_faults.py`` (the slow cases alone: ``-m slow``).
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml

from conftest import make_frame_set

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
SEED = int(os.environ.get("FAULT_SEED", "0"))
torch.set_num_threads(1)


def _cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "asrdistill.cli", *map(str, args)]


def _run(args: list[str], log: Path) -> float:
    """Run to completion (own process group, like the killed runs); returns its wall time."""
    t0 = time.monotonic()
    with open(log, "w") as err:
        proc = subprocess.run(args, env=ENV, stdout=err, stderr=subprocess.STDOUT, start_new_session=True,
                              timeout=600)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return time.monotonic() - t0


def _run_killed(args: list[str], log: Path, seconds: float, rng: random.Random,
                started: Callable[[], bool] = lambda: True) -> float:
    """Start ``args``, SIGKILL its process group at a random point of a run of ``seconds``; returns that point.

    The point is drawn from the part of the run after ``started()`` holds (the
    work, not the interpreter start); a run that ends first is retried earlier.
    """
    fraction = rng.uniform(0.35, 0.85)
    for _ in range(4):
        with open(log, "w") as err:
            proc = subprocess.Popen(args, env=ENV, stdout=err, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.monotonic()
        while not started() and proc.poll() is None:
            time.sleep(0.01)
        delay = max(0.0, fraction * seconds - (time.monotonic() - t0))
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return time.monotonic() - t0
        fraction /= 2  # finished before the kill: it ran faster than the reference
    pytest.fail(f"{args[3]} always finished before the kill point; see {log}")


def _same_files(a: Path, b: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Names of the non-hidden files under ``a`` and ``b`` (asserted to be the same, byte for byte).

    Command logs (``<out>/log/<command>.log``: times, and the killed run's lines) are left out."""

    def files(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                      and not (p.parent.name == "log" and p.suffix == ".log"))

    names = files(a)
    assert names == files(b)
    for n in names:
        if not n.endswith(skip):
            assert (a / n).read_bytes() == (b / n).read_bytes(), n
    return names


def _assert_no_temporaries(root: Path) -> None:
    assert not [p for p in root.rglob(".*.tmp")], "temporary files left behind"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def audio_data(tmp_path_factory) -> Path:
    import soundfile as sf

    from asrdistill.data.datadir import DataDir

    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    data = DataDir()
    for i in range(48):
        utt = f"{100 + i % 3}-1-{i:04d}"
        n = int(16000 * rng.uniform(1.0, 3.0))
        t = np.arange(n) / 16000
        x = 0.3 * np.sin(2 * np.pi * (150 + 10 * i) * t) + 0.02 * rng.standard_normal(n)
        path = root / "wav" / f"{utt}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, x.astype(np.float32), 16000, subtype="PCM_16")
        data.wav[utt], data.text[utt], data.utt2spk[utt], data.utt2dur[utt] = str(path), "A", utt[:3], n / 16000
    data.save(root / "data")
    return root / "data"


FEATS_SET = ["--set", "features.shard_size_mb=0.05"]  # ~6 utterances per shard: several shards


@pytest.fixture(scope="module")
def gmm_data(tmp_path_factory) -> Path:
    """Features, transcripts, lang and config for the GMM-HMM stages (the monophone tests' synthetic speech)."""
    from test_mono import _cfg, _lang, _make_corpus, _write_feats

    from asrdistill.config import to_dict
    from asrdistill.data.datadir import DataDir

    root = tmp_path_factory.mktemp("gmm")
    _, feats, text, _ = _make_corpus(root, n_utts=40)
    _write_feats(root / "fbank", feats, per_shard=10)
    DataDir(wav={u: "/dev/null" for u in feats}, text=text, utt2spk={u: "spk" for u in feats}).save(root / "data")
    _lang().save(root / "lang")
    mono = {k: v for k, v in to_dict(_cfg(num_iters=4, realign_iters=[1, 2])).items() if k not in ("nj", "device")}
    (root / "conf.yaml").write_text(yaml.safe_dump({"mono": mono, "align": {"nj": 1}}))
    return root


@pytest.fixture(scope="module")
def dnn_data(tmp_path_factory) -> Path:
    from asrdistill.data.features import Cmvn

    root = tmp_path_factory.mktemp("dnn")
    rng = np.random.default_rng(0)
    means = 2 * rng.standard_normal((6, 5))
    for name, n in (("train", 24), ("dev", 8)):
        make_frame_set(root / "mk" / name, rng, means, n, frames=40, shards=4)
        (root / "feats").mkdir(exist_ok=True)
        (root / "labels").mkdir(exist_ok=True)
        (root / "mk" / name / "feats").rename(root / "feats" / name)
        (root / "mk" / name / "labels").rename(root / "labels" / name)
    Cmvn(np.zeros(5), np.ones(5), 1).save(root / "feats/train/cmvn.json")
    train = {"model": {"preset": "tiny", "dropout": 0.2}, "frames": {"left": 2, "right": 1, "batch_size": 16, "buffer_frames": 300,
                                                      "prefetch": 0},
             "epochs": 3, "optimizer": "adam", "lr": 3e-3, "warmup_steps": 0, "checkpoint_every": 17,
             "log_every": 10, "progress": False, "patience": 0}
    (root / "conf.yaml").write_text(yaml.safe_dump({"train": train}))
    return root


def _dnn_args(root: Path) -> list[str]:
    return ["--config", str(root / "conf.yaml"), "--feats", str(root / "feats"), "--labels", str(root / "labels"),
            "--train-set", "train", "--dev-set", "dev", "--device", "cpu"]


# --------------------------------------------------------------------------- SIGKILL and resume


def test_features_killed_and_resumed_equal_uninterrupted(audio_data, tmp_path):
    rng = random.Random(SEED)
    ref = tmp_path / "ref"
    seconds = _run(_cmd("features", *FEATS_SET, "--nj", 2, audio_data, ref), tmp_path / "ref.log")
    out = tmp_path / "out"
    _run_killed(_cmd("features", *FEATS_SET, "--nj", 2, audio_data, out), tmp_path / "kill.log", seconds, rng)
    _run(_cmd("features", *FEATS_SET, "--nj", 2, audio_data, out), tmp_path / "resume.log")
    assert len(_same_files(ref, out)) > 8
    _assert_no_temporaries(out)


def _mono_args(g: Path) -> list:
    return ["--config", g / "conf.yaml", "--nj", 1, g / "data", g / "lang", g / "fbank"]


@pytest.fixture(scope="module")
def mono_ref(gmm_data, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted monophone run (the reference, and the model the alignment case uses)."""
    out = tmp_path_factory.mktemp("mono_ref")
    seconds = _run(_cmd("mono", *_mono_args(gmm_data), out / "exp"), out / "ref.log")
    return out / "exp", seconds


@pytest.mark.slow
def test_monophone_killed_and_resumed_equal_uninterrupted(gmm_data, mono_ref, tmp_path):
    from asrdistill.fileio import identity, load_weights

    rng = random.Random(SEED + 1)
    ref, seconds = mono_ref
    _run_killed(_cmd("mono", *_mono_args(gmm_data), tmp_path / "out"), tmp_path / "kill.log", seconds, rng)
    _run(_cmd("mono", *_mono_args(gmm_data), tmp_path / "out"), tmp_path / "resume.log")
    a, b = load_weights(ref / "final.pt"), load_weights(tmp_path / "out/final.pt")
    assert identity(a["gmm"], a["transform"], a["topology"]) == identity(b["gmm"], b["transform"], b["topology"])
    _same_files(ref / "ali", tmp_path / "out/ali")
    _assert_no_temporaries(tmp_path / "out")


@pytest.mark.slow
def test_alignment_killed_and_resumed_equal_uninterrupted(gmm_data, mono_ref, tmp_path):
    rng = random.Random(SEED + 2)
    g = gmm_data
    args = ["--config", g / "conf.yaml", "--nj", 1, mono_ref[0], g / "data", g / "lang", g / "fbank"]
    seconds = _run(_cmd("align", *args, tmp_path / "ref"), tmp_path / "ref.log")
    _run_killed(_cmd("align", *args, tmp_path / "out"), tmp_path / "kill.log", seconds, rng)
    _run(_cmd("align", *args, tmp_path / "out"), tmp_path / "resume.log")
    assert len(_same_files(tmp_path / "ref", tmp_path / "out")) >= 5
    _assert_no_temporaries(tmp_path / "out")


def _params(path: Path) -> dict[str, torch.Tensor]:
    from asrdistill.fileio import load_weights

    return load_weights(path)["model"]


def _metrics(path: Path) -> list[dict]:
    """Each record's step, and the epoch records' values (a train record's windowed loss after a resume
    covers only the steps since the checkpoint; timings differ)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if "per_sec" not in k} if "dev_acc" in r else {"step": r["step"]}
            for r in records]


def test_training_killed_mid_epoch_and_resumed_equals_uninterrupted(dnn_data, tmp_path):
    rng = random.Random(SEED + 3)
    ref, out = tmp_path / "ref", tmp_path / "out"
    seconds = _run(_cmd("train", *_dnn_args(dnn_data), "--out", ref), tmp_path / "ref.log")
    log = tmp_path / "kill.log"
    _run_killed(_cmd("train", *_dnn_args(dnn_data), "--out", out), log, seconds, rng,
                started=lambda: (out / "last.pt").is_file())
    assert not (out / ".train.done").exists()
    _run(_cmd("train", *_dnn_args(dnn_data), "--out", out), tmp_path / "resume.log")
    for name in ("last.pt", "best.pt"):
        a, b = _params(ref / name), _params(out / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert _metrics(out / "log/metrics.jsonl") == _metrics(ref / "log/metrics.jsonl")  # no step twice
    _assert_no_temporaries(out)


@pytest.mark.slow
def test_soft_target_caching_killed_and_resumed_equals_uninterrupted(dnn_data, tmp_path):
    from asrdistill.nnet.model import FrameDNN, ModelConfig

    rng = random.Random(SEED + 4)
    members = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = FrameDNN(ModelConfig("tiny"), 4 * 5, 6)
        (tmp_path / f"t{seed}").mkdir()
        torch.save({**model.describe(), "model": model.state_dict()}, tmp_path / f"t{seed}/best.pt")
        members.append(tmp_path / f"t{seed}")
    args = [*_dnn_args(dnn_data), "--set", "ensemble.topk=3", "--temperatures", 1, 2, 4, "--members", *members]
    seconds = _run(_cmd("ensemble", *args, "--out", tmp_path / "ref"), tmp_path / "ref.log")
    _run_killed(_cmd("ensemble", *args, "--out", tmp_path / "out"), tmp_path / "kill.log", seconds, rng)
    _run(_cmd("ensemble", *args, "--out", tmp_path / "out"), tmp_path / "resume.log")
    assert len(_same_files(tmp_path / "ref", tmp_path / "out", skip=("members.txt",))) >= 12
    _assert_no_temporaries(tmp_path / "out")


# --------------------------------------------------------------------------- disk full


def _enospc_after(n: int, real: Callable) -> Callable:
    calls = {"n": 0}

    def writer(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    return writer


def test_disk_full_while_writing_features_leaves_nothing_trusted(audio_data, tmp_path, monkeypatch):
    import asrdistill.data.shards as shards
    from asrdistill.data.features import FbankConfig, compute_features

    cfg = FbankConfig(shard_size_mb=0.05)
    ref = compute_features(audio_data, tmp_path / "ref", cfg)
    # the disk fills in the middle of the third shard (its member arrays are serialised one by one)
    done_before = len(ref.shards[0].keys) + len(ref.shards[1].keys)
    monkeypatch.setattr(shards, "_npy_bytes", _enospc_after(done_before + 2, shards._npy_bytes))
    with pytest.raises(OSError, match="No space left"):
        compute_features(audio_data, tmp_path / "out", cfg)
    monkeypatch.undo()
    out = tmp_path / "out"
    assert not (out / ".features.done").exists() and not (out / "feats.manifest.json").exists()
    _assert_no_temporaries(out)
    tars = sorted(out.glob("feats-*.tar"))
    assert len(tars) == 2  # the two finished shards; the third never appeared
    again = compute_features(audio_data, out, cfg)
    assert again.keys == ref.keys
    _same_files(tmp_path / "ref", out)


def test_disk_full_while_checkpointing_keeps_the_last_good_checkpoint(dnn_data, tmp_path, monkeypatch):
    import asrdistill.nnet.train as train_mod
    from asrdistill.config import from_dict, merge

    raw = yaml.safe_load((dnn_data / "conf.yaml").read_text())["train"]
    paths = {"train_feats": "feats/train", "train_labels": "labels/train", "dev_feats": "feats/dev",
             "dev_labels": "labels/dev", "cmvn": "feats/train/cmvn.json"}
    config = from_dict(train_mod.TrainConfig, merge(raw, {k: str(dnn_data / v) for k, v in paths.items()}))
    train_mod.train(config, tmp_path / "ref")
    real_save = torch.save

    def half_written(obj, path, *args, **kwargs):  # writes half a checkpoint, then the disk is full
        real_save(obj, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", _enospc_after(2, real_save))
    with pytest.raises(OSError, match="No space left"):
        train_mod.train(config, tmp_path / "out")
    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(OSError, match="No space left"):
        train_mod.train(config, tmp_path / "out")
    monkeypatch.undo()
    out = tmp_path / "out"
    assert not (out / ".train.done").exists()
    _assert_no_temporaries(out)
    _params(out / "last.pt")  # still the last complete checkpoint
    train_mod.train(config, out)
    a, b = _params(tmp_path / "ref/last.pt"), _params(out / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)

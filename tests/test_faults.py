"""Fault injection: SIGKILL of a stage's whole process group at a point drawn from a seed, and a full disk.

Each kill case runs the real ``asrdistill`` command as a subprocess in its own
process group (its worker processes included) on tiny data: once uninterrupted,
once killed with SIGKILL at a point of its work, then once more to resume; the
resumed outputs must equal the uninterrupted ones (bytes for shards, values for
checkpoints). The kill point is a write, not a moment: the library's
``ASRDISTILL_FAULT_KILL_AT_WRITE=GLOB:N`` (``asrdistill.fileio``) makes the
process group SIGKILL itself once the Nth file matching GLOB is written but not
yet renamed into place, so the verdict does not depend on the machine's load.
The disk-full cases patch a writer to raise ``OSError(ENOSPC)`` in the middle
of a file: no done marker, no partial file left where a later stage would trust
it, and the rerun matches a clean run.

Kill points (which file, which of its writes) are drawn from
``random.Random(FAULT_SEED)`` (environment, default 0) among the writes the
uninterrupted run made, so a failure is reproducible. CI (``.ci/run``) runs
every case, slow ones included, at the default seed; to sample other kill points run
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
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from conftest import make_frame_set

REPO = Path(__file__).resolve().parents[1]
FAULT = "ASRDISTILL_FAULT_KILL_AT_WRITE"
ENV = {
    **{k: v for k, v in os.environ.items() if k != FAULT},
    "PYTHONPATH": str(REPO),
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
}
SEED = int(os.environ.get("FAULT_SEED", "0"))
torch.set_num_threads(1)


def _cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "asrdistill.cli", *map(str, args)]


def _run(args: list[str], log: Path, env: dict[str, str] = ENV) -> int:
    """Run to completion in a process group of its own (a killed run's workers die with it); its exit status."""
    with open(log, "w") as err:
        return subprocess.run(
            args, env=env, stdout=err, stderr=subprocess.STDOUT, start_new_session=True, timeout=600
        ).returncode


def _run_ok(args: list[str], log: Path) -> None:
    assert _run(args, log) == 0, log.read_text()[-3000:]


def _run_killed(args: list[str], log: Path, out: Path, rng: random.Random, points: dict[str, range]) -> None:
    """Run ``args`` until it SIGKILLs its process group at a write drawn from ``points``.

    ``points`` maps a file-name glob to the indices (1 = first) of its writes to draw from: writes
    the uninterrupted run made, so the killed run reaches the one drawn.

    The kill comes from the library (``ASRDISTILL_FAULT_KILL_AT_WRITE``) when that file's data is
    written but not yet renamed, so it happens at the same point of the work whatever the machine's load.
    """
    glob, n = rng.choice([(g, i) for g, indices in points.items() for i in indices])
    print(f"kill point: {FAULT}={glob}:{n}")  # shown with a failure's report
    status = _run(args, log, {**ENV, FAULT: f"{glob}:{n}"})
    assert status == -signal.SIGKILL, f"{args[3]} was not killed at write {n} of {glob} (exit {status}); see {log}"
    assert [*out.rglob(f".{glob}.*.tmp")], f"no temporary of {glob} left by the kill under {out}"


def _same_files(a: Path, b: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Names of the non-hidden files under ``a`` and ``b`` (asserted to be the same, byte for byte).

    Command logs (``<out>/log/<command>.log``: times, and the killed run's lines) are left out."""

    def files(root: Path) -> list[str]:
        return sorted(
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".") and not (p.parent.name == "log" and p.suffix == ".log")
        )

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
    train = {
        "model": {"preset": "tiny", "dropout": 0.2},
        "frames": {"left": 2, "right": 1, "batch_size": 16, "buffer_frames": 300, "prefetch": 0},
        "epochs": 3,
        "optimizer": "adam",
        "lr": 3e-3,
        "warmup_steps": 0,
        "checkpoint_every": 17,
        "log_every": 5,
        "progress": False,
        "patience": 0,
    }  # a record between any two checkpoints
    (root / "conf.yaml").write_text(yaml.safe_dump({"train": train}))
    return root


def _dnn_args(root: Path) -> list[str]:
    return [
        "--config",
        str(root / "conf.yaml"),
        "--feats",
        str(root / "feats"),
        "--labels",
        str(root / "labels"),
        "--train-set",
        "train",
        "--dev-set",
        "dev",
        "--device",
        "cpu",
    ]


# --------------------------------------------------------------------------- SIGKILL and resume


def test_the_kill_point_is_the_nth_matching_write(tmp_path):
    """The hook kills the process group at the Nth write of a matching name (others do not count), before its
    rename: the earlier content stays, the new data is left in a temporary; a malformed value is an error."""
    script = (
        "import sys; from asrdistill.fileio import write_text_atomic as w\n"
        "for i in range(3):\n    w(sys.argv[1] + '/other.txt', str(i)); w(sys.argv[1] + '/x.txt', str(i))\n"
    )
    args, log = [sys.executable, "-c", script, str(tmp_path)], tmp_path / "log"
    assert _run(args, log, {**ENV, FAULT: "x.*:2"}) == -signal.SIGKILL
    assert (tmp_path / "x.txt").read_text() == "0" and (tmp_path / "other.txt").read_text() == "1"
    assert [p.read_text() for p in tmp_path.glob(".x.txt.*.tmp")] == ["1"]
    assert _run(args, log, {**ENV, FAULT: "x.txt"}) == 1
    assert "ASRDISTILL_FAULT_KILL_AT_WRITE='x.txt': expected GLOB:N" in log.read_text()


def test_features_killed_and_resumed_equal_uninterrupted(audio_data, tmp_path):
    rng = random.Random(SEED)
    ref = tmp_path / "ref"
    _run_ok(_cmd("features", *FEATS_SET, "--nj", 2, audio_data, ref), tmp_path / "ref.log")
    out = tmp_path / "out"
    shards = len([*ref.glob("feats-*.tar")])  # each written, then its sidecar feats-N.json
    _run_killed(
        _cmd("features", *FEATS_SET, "--nj", 2, audio_data, out),
        tmp_path / "kill.log",
        out,
        rng,
        {"feats-*": range(1, 2 * shards + 1)},
    )
    _run_ok(_cmd("features", *FEATS_SET, "--nj", 2, audio_data, out), tmp_path / "resume.log")
    assert len(_same_files(ref, out)) > 8
    _assert_no_temporaries(out)


def _mono_args(g: Path) -> list:
    return ["--config", g / "conf.yaml", "--nj", 1, g / "data", g / "lang", g / "fbank"]


@pytest.fixture(scope="module")
def mono_ref(gmm_data, tmp_path_factory) -> Path:
    """An uninterrupted monophone run (the reference, and the model the alignment case uses)."""
    out = tmp_path_factory.mktemp("mono_ref")
    _run_ok(_cmd("mono", *_mono_args(gmm_data), out / "exp"), out / "ref.log")
    return out / "exp"


def _label_shards(directory: Path) -> dict[str, range]:
    """Kill points in an alignment: each ``ali-*.tar`` / ``pdf-*.tar`` label shard the reference wrote."""
    return {g: range(1, len([*directory.glob(g)]) + 1) for g in ("ali-*.tar", "pdf-*.tar")}


@pytest.mark.slow
def test_monophone_killed_and_resumed_equal_uninterrupted(gmm_data, mono_ref, tmp_path):
    from asrdistill.fileio import identity, load_weights

    rng = random.Random(SEED + 1)
    ref = mono_ref
    iterations = len((ref / "log/train.jsonl").read_text().splitlines())  # the log is rewritten every iteration
    _run_killed(
        _cmd("mono", *_mono_args(gmm_data), tmp_path / "out"),
        tmp_path / "kill.log",
        tmp_path / "out",
        rng,
        {"train.jsonl": range(1, iterations + 1), **_label_shards(ref / "ali")},
    )
    _run_ok(_cmd("mono", *_mono_args(gmm_data), tmp_path / "out"), tmp_path / "resume.log")
    a, b = load_weights(ref / "final.pt"), load_weights(tmp_path / "out/final.pt")
    assert identity(a["gmm"], a["transform"], a["topology"]) == identity(b["gmm"], b["transform"], b["topology"])
    _same_files(ref / "ali", tmp_path / "out/ali")
    _assert_no_temporaries(tmp_path / "out")


@pytest.mark.slow
def test_alignment_killed_and_resumed_equal_uninterrupted(gmm_data, mono_ref, tmp_path):
    rng = random.Random(SEED + 2)
    g = gmm_data
    args = ["--config", g / "conf.yaml", "--nj", 1, mono_ref, g / "data", g / "lang", g / "fbank"]
    _run_ok(_cmd("align", *args, tmp_path / "ref"), tmp_path / "ref.log")
    _run_killed(
        _cmd("align", *args, tmp_path / "out"),
        tmp_path / "kill.log",
        tmp_path / "out",
        rng,
        _label_shards(tmp_path / "ref"),
    )
    _run_ok(_cmd("align", *args, tmp_path / "out"), tmp_path / "resume.log")
    assert len(_same_files(tmp_path / "ref", tmp_path / "out")) >= 5
    _assert_no_temporaries(tmp_path / "out")


def _params(path: Path) -> dict[str, torch.Tensor]:
    from asrdistill.fileio import load_weights

    return load_weights(path)["model"]


def _state(path: Path) -> dict:
    from asrdistill.fileio import load_weights

    return load_weights(path)["state"]


def _metrics(path: Path) -> list[dict]:
    """Each record's step, and the epoch records' values (a train record's windowed loss after a resume
    covers only the steps since the checkpoint; timings differ)."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if "per_sec" not in k} if "dev_acc" in r else {"step": r["step"]} for r in records
    ]


def test_training_killed_mid_epoch_and_resumed_equals_uninterrupted(dnn_data, tmp_path):
    rng = random.Random(SEED + 3)
    ref, out = tmp_path / "ref", tmp_path / "out"
    _run_ok(_cmd("train", *_dnn_args(dnn_data), "--out", ref), tmp_path / "ref.log")
    steps = json.loads((ref / "log/metrics.jsonl").read_text().splitlines()[-1])["step"]
    every = yaml.safe_load((dnn_data / "conf.yaml").read_text())["train"]["checkpoint_every"]
    # last.pt is written every `every` steps and at each epoch's end; killed at its 2nd write or later,
    # a last.pt exists and the steps (and metrics records) since it are lost
    _run_killed(
        _cmd("train", *_dnn_args(dnn_data), "--out", out),
        tmp_path / "kill.log",
        out,
        rng,
        {"last.pt": range(2, steps // every + 1)},
    )
    assert not (out / ".train.done").exists()
    logged = [json.loads(line)["step"] for line in (out / "log/metrics.jsonl").read_text().splitlines()]
    assert max(logged) > _state(out / "last.pt")["step"], "the kill lost no logged step: nothing for the resume to drop"
    _run_ok(_cmd("train", *_dnn_args(dnn_data), "--out", out), tmp_path / "resume.log")
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
    _run_ok(_cmd("ensemble", *args, "--out", tmp_path / "ref"), tmp_path / "ref.log")
    _run_killed(
        _cmd("ensemble", *args, "--out", tmp_path / "out"),
        tmp_path / "kill.log",
        tmp_path / "out",
        rng,
        {"soft-*.tar": range(1, len([*(tmp_path / "ref").rglob("soft-*.tar")]) + 1)},
    )
    _run_ok(_cmd("ensemble", *args, "--out", tmp_path / "out"), tmp_path / "resume.log")
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
    paths = {
        "train_feats": "feats/train",
        "train_labels": "labels/train",
        "dev_feats": "feats/dev",
        "dev_labels": "labels/dev",
        "cmvn": "feats/train/cmvn.json",
    }
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

"""DDP training on CPU (gloo, two ranks): identical parameters, frame coverage, exact resume; run.sh --gpus 2."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp_mp
from conftest import make_frame_set

import asrdistill.nnet.train as train_mod
from asrdistill.config import to_dict
from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig
from asrdistill.data.shards import ShardManifest
from asrdistill.nnet.model import ModelConfig
from asrdistill.nnet.train import TrainConfig

C, D = 6, 5
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "librispeech"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """3 shards of unequal size: a split by shard count would leave one rank a third of the frames."""
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    means = 2 * rng.standard_normal((C, D))
    make_frame_set(root / "train", rng, means, 20, frames=37, shards=3)
    make_frame_set(root / "dev", rng, means, 5)
    Cmvn(np.zeros(D), np.ones(D), 1).save(root / "cmvn.json")
    return root


def _config(data: Path) -> dict:
    return to_dict(
        TrainConfig(
            train_feats=str(data / "train/feats"),
            train_labels=str(data / "train/labels"),
            dev_feats=str(data / "dev/feats"),
            dev_labels=str(data / "dev/labels"),
            cmvn=str(data / "cmvn.json"),
            model=ModelConfig("tiny", dropout=0.2),
            frames=FrameConfig(left=2, right=1, batch_size=16, buffer_frames=150, prefetch=0),
            epochs=3,
            optimizer="adam",
            lr=3e-3,
            warmup_steps=5,
            checkpoint_every=9,
            log_every=5,
            progress=False,
        )
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world_size: int, port: int, config: dict, out: str, die_at: int) -> None:
    """One DDP rank: train, saving this rank's parameters beside each checkpoint; raise at call ``die_at``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)
    real_loss, real_save = train_mod.compute_loss, train_mod.save_checkpoint
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == die_at:
            raise RuntimeError(f"killed at step {die_at}")  # mp.spawn ignores KeyboardInterrupt
        return real_loss(*args, **kwargs)

    def save(run, state, name="last.pt"):
        real_save(run, state, name)
        torch.save(run.model.state_dict(), Path(out) / f"params_rank{rank}.pt")

    train_mod.compute_loss, train_mod.save_checkpoint = loss, save
    try:
        result = train_mod.train(train_mod.from_dict(TrainConfig, config), out)
        (Path(out) / f"result_rank{rank}.json").write_text(json.dumps(result))
    finally:
        torch.distributed.destroy_process_group()


def _spawn(config: dict, out: Path, die_at: int = 0) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp_mp.spawn(_rank, args=(2, _free_port(), config, str(out), die_at), nprocs=2, join=True)


def _params(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_two_ranks_agree_cover_the_epoch_and_resume_exactly(data, tmp_path):
    config = _config(data)
    total = ShardManifest.load(data / "train/labels", "pdf").num_frames
    _spawn(config, tmp_path / "ref")
    p0, p1 = _params(tmp_path / "ref/params_rank0.pt"), _params(tmp_path / "ref/params_rank1.pt")
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
    results = [json.loads((tmp_path / f"ref/result_rank{r}.json").read_text()) for r in range(2)]
    for r in results:
        r.pop("train_frames_per_sec")  # timed per rank
    assert results[0] == results[1]  # dev metrics and counts reduced: both ranks saw the same figures
    ref = results[0]
    assert ref["epochs"] == 3 and ref["train_frames"] >= 0.99 * 3 * total
    assert ref["best_dev_acc"] > 0.5  # it learned (chance is 1/6)

    # kill both ranks at step 30 of 3 x 24 (the last checkpoint: step 27, mid-epoch 1), then resume
    with pytest.raises(Exception, match="killed at step 30"):
        _spawn(config, tmp_path / "run", die_at=30)
    ckpt = torch.load(tmp_path / "run/last.pt", map_location="cpu", weights_only=True)
    assert (ckpt["state"]["step"], ckpt["state"]["epoch"], len(ckpt["rng"])) == (27, 1, 2)
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # each rank's own dropout stream
    _spawn(config, tmp_path / "run")
    ref_last, run_last = _params(tmp_path / "ref/params_rank0.pt"), _params(tmp_path / "run/params_rank0.pt")
    for name, value in ref_last.items():
        assert torch.equal(value, run_last[name]), name
    resumed = json.loads((tmp_path / "run/result_rank0.json").read_text())
    assert {k: resumed[k] for k in ("best_dev_acc", "steps", "train_frames")} == {
        k: ref[k] for k in ("best_dev_acc", "steps", "train_frames")
    }


def test_run_sh_gpus_2_launches_two_ranks(data, tmp_path):
    """Stage 6 of the recipe with --gpus 2 runs torchrun with two ranks (on CPU through ASRDISTILL_DEVICE)."""
    shutil.copy(RECIPE / "run.sh", tmp_path / "run.sh")
    shutil.copytree(RECIPE / "conf", tmp_path / "conf")
    for split, name in (("train", "train"), ("dev", "dev")):
        shutil.copytree(data / split / "feats", tmp_path / "data/fbank" / name)
        shutil.copytree(data / split / "labels", tmp_path / "exp/tri_ali" / name)
    shutil.copy(data / "cmvn.json", tmp_path / "data/fbank/train/cmvn.json")
    env = {
        **os.environ,
        "ASRDISTILL_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        ["bash", "run.sh", "--config", "conf/tiny.yaml", "--stage", "6", "--stop-stage", "6", "--gpus", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "cpu x2" in proc.stderr  # the trainer's log line: device x world size
    ckpt = torch.load(tmp_path / "exp/baseline_seed1/last.pt", map_location="cpu", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2

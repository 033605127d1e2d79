"""Cost of a transfer set of unlabelled audio (issue 27): labelling it with the ensemble, and training with it.

Random features stand in for speech (throughput does not depend on the values) and random teachers for the
ensemble. Prints frames/s of

  (a) the ensemble caching soft targets on the training set (``build_ensemble``, stage 8) and labelling the transfer
      set (``label_transfer``: the same cache plus a second teacher pass for the T = 1 decisions);
  (b) one epoch of ``train``: hard labels, a cached-target student, and the same student with the transfer set
      (``train.transfer``), with each epoch's frames: with the transfer set an epoch holds both sets' frames, so
      it costs (train + transfer) / train times as long at about the same frames/s.

    python -m benchmarks.bench_transfer                           # CPU defaults
    nice -n 19 python -m benchmarks.bench_transfer --threads 1 --frames 20000 --transfer-frames 20000
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig
from asrdistill.data.shards import ShardManifest, write_shard
from asrdistill.nnet.ensemble import EnsembleConfig, build_ensemble
from asrdistill.nnet.model import FrameDNN, ModelConfig
from asrdistill.nnet.train import DistillConfig, TrainConfig, train
from asrdistill.nnet.transfer import label_transfer

FEAT_DIM = 40


def _write_set(root: Path, tag: str, frames: int, senones: int, utt_frames: int = 500, shards: int = 4) -> None:
    """Random fp16 features and labels of ``frames`` frames under ``root/<tag>/{feats,pdf}``; ids start with tag."""
    rng = np.random.default_rng(len(tag))
    feats = ShardManifest(root / tag / "feats", "feats", meta={"dim": FEAT_DIM})
    pdf = ShardManifest(root / tag / "pdf", "pdf", meta={"num_pdfs": senones})
    utts = [f"{tag}{i:05d}-1-{i:04d}" for i in range(max(shards, frames // utt_frames))]
    for s in range(shards):
        mine = utts[s::shards]
        x = [(u, {"feats": rng.standard_normal((utt_frames, FEAT_DIM)).astype(np.float16)}) for u in mine]
        y = [(u, {"pdf": rng.integers(0, senones, utt_frames).astype(np.int32)}) for u in mine]
        feats.shards.append(write_shard(feats.directory / feats.shard_name(s), x))
        pdf.shards.append(write_shard(pdf.directory / pdf.shard_name(s), y))
    feats.save()
    pdf.save()


def _teachers(root: Path, n: int, preset: str, senones: int, window: int) -> list[Path]:
    paths = []
    for i in range(n):
        torch.manual_seed(i)
        model = FrameDNN(ModelConfig(preset), window * FEAT_DIM, senones)
        paths.append(root / f"teacher{i}.pt")
        torch.save({**model.describe(), "model": model.state_dict()}, paths[-1])
    return paths


def _epoch(args, root: Path, frames: FrameConfig, name: str, **kw) -> dict:
    config = TrainConfig(
        train_feats=str(root / "train/feats"),
        train_labels=str(root / "train/pdf"),
        dev_feats=str(root / "dev/feats"),
        dev_labels=str(root / "dev/pdf"),
        cmvn=str(root / "cmvn.json"),
        model=ModelConfig(args.preset),
        frames=frames,
        epochs=1,
        lr=1e-3,
        warmup_steps=0,
        schedule="constant",
        device="cpu",
        checkpoint_every=10**9,
        log_every=10**9,
        progress=False,
        **kw,
    )
    result = train(config, root / f"exp-{name}")
    return {"fps": result["train_frames_per_sec"], "frames": result["train_frames"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="cpu", help="student and teacher size (default: cpu)")
    p.add_argument("--senones", type=int, default=2000, help="default: 2000")
    p.add_argument("--teachers", type=int, default=4, help="ensemble members (default: 4)")
    p.add_argument("--frames", type=int, default=100_000, help="training-set frames (default: 100000)")
    p.add_argument("--transfer-frames", type=int, default=100_000, help="transfer-set frames (default: 100000)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0, torch's)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    frames = FrameConfig(batch_size=1024, buffer_frames=50_000)
    print(
        f"CPU ({torch.get_num_threads()} threads); preset {args.preset}, {args.senones} senones, "
        f"{args.teachers} teachers, dense T=2 cache; {args.frames} train + {args.transfer_frames} transfer frames"
    )
    rows: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write_set(root, "train", args.frames, args.senones)
        _write_set(root, "dev", 4000, args.senones)
        _write_set(root, "transfer", args.transfer_frames, args.senones)
        Cmvn(np.zeros(FEAT_DIM), np.ones(FEAT_DIM), 1).save(root / "cmvn.json")
        load = lambda name: ShardManifest.load(root / name / "feats", "feats")  # noqa: E731
        cmvn = Cmvn.load(root / "cmvn.json")
        members = _teachers(root, args.teachers, args.preset, args.senones, frames.window)
        t0 = time.perf_counter()
        build_ensemble(members, load("train"), load("dev"), cmvn, frames, [2.0], root / "ens", EnsembleConfig())
        rows["(a) ensemble: cache train soft targets (+ dev fidelity)"] = (
            f"{args.frames / (time.perf_counter() - t0):,.0f} frames/s"
        )
        t0 = time.perf_counter()
        label_transfer(
            root / "ens", load("transfer"), cmvn, frames, [2.0], root / "labels", [load("train"), load("dev")]
        )
        rows["(a) label-transfer: soft targets + decisions"] = (
            f"{args.transfer_frames / (time.perf_counter() - t0):,.0f} frames/s"
        )
        soft = DistillConfig(temperature=2.0, soft_targets=str(root / "ens/soft_T2"))
        _epoch(args, root, frames, "warmup")  # untimed: the first epoch of a process is slower whatever it trains
        for name, kw in (
            ("hard labels", {}),
            ("student, cached T=2", {"distill": soft}),
            ("student, cached T=2 + transfer set", {"distill": soft, "transfer": [str(root / "labels")]}),
        ):
            r = _epoch(args, root, frames, name.replace(" ", "_").replace(",", "").replace("+", "and"), **kw)
            rows[f"(b) train epoch, {name}"] = f"{r['fps']:,.0f} frames/s ({r['frames']:,} frames in the epoch)"
    width = max(map(len, rows))
    for label, value in rows.items():
        print(f"{label:<{width}}  {value}")


if __name__ == "__main__":
    main()

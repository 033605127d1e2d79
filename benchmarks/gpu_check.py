"""The prepared GPU check of issue 12: training, inference and evaluation throughput in one short run.

Prints, for the paper-size DNN (8 x 2560 ReLU, 14,000 senones) at bf16:

  * the ceiling: the same model trained on synthetic in-memory tensors (bare loop);
  * the trainer on shards (``asrdistill.nnet.train.train`` through ``FrameStream``) with
    hard labels, with cached top-k soft targets, and with online teachers run on every batch;
  * ensemble inference (``ensemble_logprobs``) of the online teachers;
  * evaluation: seconds of acoustic-model scoring (``frame_accuracy``: posteriors of every
    dev frame, batched) per hour of audio (360,000 frames at a 10 ms shift); decoding is not in it;

and the ratios the issue sets as goals: real-data training / ceiling >= 0.9,
KD (cached) / hard labels >= 0.9. Sized to finish in under 8 minutes on one
H100/H200; ``--cpu-smoke`` runs the same code at tiny sizes in seconds on a CPU
(``tests/test_gpu_check.py``). Run it through ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig
from asrdistill.data.shards import FEATS_PREFIX, PDF_PREFIX, ShardManifest
from asrdistill.nnet.ensemble import frame_accuracy
from asrdistill.nnet.model import FrameDNN, ModelConfig
from asrdistill.nnet.train import DistillConfig, TrainConfig, train
from benchmarks.bench_train import FEAT_DIM, _write_corpus, bare_loop, ensemble_inference

FRAMES_PER_HOUR = 360_000


def _train_fps(args, device: torch.device, root: Path, name: str, distill: DistillConfig | None) -> float:
    config = TrainConfig(
        train_feats=str(root / "train/feats"),
        train_labels=str(root / "train/pdf"),
        dev_feats=str(root / "dev/feats"),
        dev_labels=str(root / "dev/pdf"),
        cmvn=str(root / "cmvn.json"),
        model=ModelConfig(args.preset),
        frames=FrameConfig(batch_size=args.batch_size, buffer_frames=args.buffer_frames),
        distill=distill,
        epochs=1,
        lr=1e-3,
        warmup_steps=0,
        schedule="constant",
        device=device.type,
        compile=args.compile,
        checkpoint_every=10**9,
        log_every=50,
        progress=False,
    )
    return float(train(config, root / name)["train_frames_per_sec"])


def _teachers(args, device: torch.device, root: Path) -> list[str]:
    """Random-weight checkpoints of the paper model (their speed, not their accuracy, is measured)."""
    paths = []
    for i in range(args.teachers):
        torch.manual_seed(i)
        model = FrameDNN(ModelConfig(args.preset), 26 * FEAT_DIM, args.senones)
        paths.append(str(root / f"teacher_{i}.pt"))
        torch.save({**model.describe(), "model": model.state_dict()}, paths[-1])
    return paths


def _eval_seconds_per_hour(args, device: torch.device, root: Path) -> float:
    model = FrameDNN(ModelConfig(args.preset), 26 * FEAT_DIM, args.senones).to(device)
    feats = ShardManifest.load(root / "train/feats", FEATS_PREFIX)
    labels = ShardManifest.load(root / "train/pdf", PDF_PREFIX)
    cmvn = Cmvn.load(root / "cmvn.json")
    frame_accuracy([model], feats, labels, cmvn, FrameConfig(), device=device, bf16=True)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    frames = frame_accuracy([model], feats, labels, cmvn, FrameConfig(), device=device, bf16=True)["frames"]
    return (time.perf_counter() - t0) / (frames / FRAMES_PER_HOUR)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: checks that everything runs")
    p.add_argument("--compile", action="store_true", help="torch.compile the trained models")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.cpu_smoke:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        sizes = dict(
            preset="tiny",
            senones=50,
            batch_size=256,
            steps=5,
            warmup=1,
            k=5,
            teachers=2,
            frames=8_000,
            buffer_frames=4_000,
        )
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device (use --cpu-smoke to check the script on a CPU)")
        device = torch.device("cuda")
        sizes = dict(
            preset="paper",
            senones=14_000,
            batch_size=1024,
            steps=200,
            warmup=20,
            k=20,
            teachers=10,
            frames=2_000_000,
            buffer_frames=500_000,
        )
    for key, value in sizes.items():
        setattr(args, key, value)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke sizes)"
    print(
        f"device: {name}; preset {args.preset}, {args.senones} senones, batch {args.batch_size}, "
        f"top-{args.k}, {args.teachers} teachers, bf16={device.type == 'cuda'}, compile={args.compile}",
        flush=True,
    )

    t0 = time.perf_counter()
    rows: dict[str, float] = {}

    def row(label: str, fps: float) -> None:
        """Print each figure as soon as it is measured: a run cut by gpu_check.sh's timeout keeps what it got."""
        rows[label] = fps
        print(f"{label:52s} {fps:14,.0f} frames/s", flush=True)

    row("ceiling: bare loop, synthetic in-memory", bare_loop(args, device))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write_corpus(root, args.frames, args.senones, args.k)
        teachers = _teachers(args, device, root)
        row("trainer on shards, hard labels", _train_fps(args, device, root, "hard", None))
        row(
            "trainer on shards, KD cached top-k",
            _train_fps(args, device, root, "cached", DistillConfig(soft_targets=str(root / "train/soft"))),
        )
        row(
            f"trainer on shards, KD online ({args.teachers} teachers)",
            _train_fps(args, device, root, "online", DistillConfig(source="online", teachers=teachers)),
        )
        row(f"ensemble inference ({args.teachers} models)", ensemble_inference(args, device, args.teachers))
        seconds_per_hour = _eval_seconds_per_hour(args, device, root)
        print(
            f"{'evaluation (frame posteriors + accuracy, no decoding)':52s} {seconds_per_hour:14.2f} s per hour of "
            "audio",
            flush=True,
        )
    ceiling, hard = rows["ceiling: bare loop, synthetic in-memory"], rows["trainer on shards, hard labels"]
    cached = rows["trainer on shards, KD cached top-k"]
    print(f"real-data training / ceiling: {hard / ceiling:.3f} (goal >= 0.9)")
    print(f"KD cached / hard labels:      {cached / hard:.3f} (goal >= 0.9)")
    print(f"total: {time.perf_counter() - t0:.0f} s", flush=True)
    return {**rows, "eval_seconds_per_hour": seconds_per_hour}


if __name__ == "__main__":
    main()

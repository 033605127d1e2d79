"""Training throughput: bare PyTorch loop vs our trainer step vs our full loop; hard labels vs KD.

Prints frames/s for

  (a) a bare loop (model, cross-entropy, SGD) on synthetic device tensors: the ceiling;
  (b) ``asrdistill.nnet.train.train_step`` on the same synthetic batches (hard; KD with top-k targets);
  (c) the full ``asrdistill.nnet.train.train`` loop reading shards through ``FrameStream``
      (splicing, CMVN, shuffling) for hard labels, KD from a cached top-k or dense cache,
      online KD (the ``--teachers`` teachers run on every batch) and online KD on mixed-up
      batches (``distill.augment.mixup_alpha``: one mixed input for student and teachers),
      with their ratios to hard labels;
  (d) ensemble inference (``ensemble_logprobs``) with 1 and N models,
  (e) the loss alone, forward + backward on (batch, senones) logits: cross-entropy vs top-k KD,

and the ratios the project targets: full/ceiling >= 0.9 on GPU (CPU preset
within 1.5x of the bare loop on CPU), KD/hard >= 0.9. CUDA is used when
available (bf16 autocast, optional ``--compile``), the CPU otherwise.

    python -m benchmarks.bench_train                  # from the repo root; CPU: cpu preset, 2000 senones
    python -m benchmarks.bench_train --compile        # GPU: paper preset (84M parameters, 14,000 senones)
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from asrdistill.data.features import Cmvn
from asrdistill.data.frames import Batch, FrameConfig
from asrdistill.data.shards import ShardManifest, write_shard
from asrdistill.kd import kd_loss
from asrdistill.nnet.consistent import AugmentConfig
from asrdistill.nnet.ensemble import ensemble_logprobs
from asrdistill.nnet.model import FrameDNN, ModelConfig
from asrdistill.nnet.train import DistillConfig, TrainConfig, train, train_step

FEAT_DIM = 40


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, n_steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``step()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        step()
    _sync(device)
    return (time.perf_counter() - t0) / n_steps


def _model(args, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return FrameDNN(ModelConfig(args.preset), 26 * FEAT_DIM, args.senones).to(device)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _topk_targets(n: int, k: int, c: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.stack([torch.randperm(c, generator=gen)[:k] for _ in range(min(n, 64))]).repeat(-(-n // 64), 1)[:n]
    prob = torch.rand(n, k, generator=gen)
    return idx, prob / prob.sum(-1, keepdim=True) * 0.95


def bare_loop(args, device) -> float:
    model = _model(args, device)
    net = torch.compile(model) if args.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(args.batch_size, 26 * FEAT_DIM, device=device)
    y = torch.randint(0, args.senones, (args.batch_size,), device=device)

    def step():
        with _autocast(device):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return args.batch_size / _timed(step, args.steps, args.warmup, device)


def trainer_step(args, device, kd: bool) -> float:
    model = _model(args, device)
    net = torch.compile(model) if args.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 26 * FEAT_DIM, generator=gen).to(device)
    y = torch.randint(0, args.senones, (args.batch_size,), generator=gen).to(device)
    idx, prob = _topk_targets(args.batch_size, args.k, args.senones, gen) if kd else (None, None)
    batch = Batch(x, y, None if idx is None else idx.to(device), None if prob is None else prob.to(device))
    distill = DistillConfig(soft_targets="(synthetic)") if kd else None
    check = device.type != "cuda"
    return args.batch_size / _timed(
        lambda: train_step(net, opt, batch, distill, (), device.type == "cuda", check), args.steps, args.warmup, device
    )


def loss_only(args, device, kd: bool) -> float:
    """Frames/s of the loss's forward + backward alone, as ``train_step`` calls it (top-k targets at T = 2)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(args.batch_size, args.senones, generator=gen).to(device).requires_grad_(True)
    y = torch.randint(0, args.senones, (args.batch_size,), generator=gen).to(device)
    idx, prob = (t.to(device) for t in _topk_targets(args.batch_size, args.k, args.senones, gen))
    check = device.type != "cuda"

    def step():
        logits.grad = None
        loss = (
            kd_loss(logits, teacher_topk=(idx, prob), labels=y, temperature=2.0, check_values=check)
            if kd
            else F.cross_entropy(logits, y)
        )
        loss.backward()

    return args.batch_size / _timed(step, args.steps, args.warmup, device)


def _write_corpus(root: Path, frames: int, senones: int, k: int, utt_frames: int = 1000, shards: int = 4) -> None:
    """Random 40-dim features, labels, top-k and dense soft targets in the shard layout of docs/CONTRACTS.md."""
    rng = np.random.default_rng(0)
    for subset, n_frames in (("train", frames), ("dev", 4 * utt_frames)):
        n_utts = max(shards, n_frames // utt_frames)
        sets = {
            name: ShardManifest(
                root / subset / name,
                "soft" if name == "dense" else name,
                meta={"dim": FEAT_DIM, "num_pdfs": senones, "temperature": 2.0, "k": k},
            )
            for name in ("feats", "pdf", "soft", "dense")
        }
        utts = [f"s{i:04d}-1-{i:05d}" for i in range(n_utts)]
        for s in range(shards):
            samples = {"feats": [], "pdf": [], "soft": [], "dense": []}
            for u in utts[s::shards]:
                samples["feats"].append((u, {"feats": rng.standard_normal((utt_frames, FEAT_DIM)).astype(np.float16)}))
                samples["pdf"].append((u, {"pdf": rng.integers(0, senones, utt_frames).astype(np.int32)}))
                prob = rng.random((utt_frames, k)).astype(np.float32)
                samples["soft"].append(
                    (
                        u,
                        {
                            "topk_idx": rng.integers(0, senones, (utt_frames, k)).astype(np.int32),
                            "topk_prob": (prob / prob.sum(1, keepdims=True) * 0.95).astype(np.float16),
                        },
                    )
                )
                logits = rng.standard_normal((utt_frames, senones)).astype(np.float32)
                logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
                samples["dense"].append((u, {"soft_logp": logp.astype(np.float16)}))
            for name, manifest in sets.items():
                manifest.shards.append(
                    write_shard(manifest.directory / f"{manifest.prefix}-{s:06d}.tar", samples[name])
                )
        for manifest in sets.values():
            manifest.save()
    Cmvn(np.zeros(FEAT_DIM), np.ones(FEAT_DIM), 1).save(root / "cmvn.json")


def full_loop(args, device, root: Path, kd: str = "") -> float:
    """Frames/s of one epoch of ``train``: ``kd`` is "" (hard labels), "topk", "dense", "online" or "online-mixup"."""
    distill = None
    if kd in ("topk", "dense"):
        distill = DistillConfig(
            soft_targets=str(root / "train" / ("soft" if kd == "topk" else "dense")), min_fidelity=0.0
        )
    elif kd in ("online", "online-mixup"):
        teachers = []
        for i in range(args.teachers):
            path = root / f"teacher-{i}.pt"
            model = FrameDNN(ModelConfig(args.preset), 26 * FEAT_DIM, args.senones)
            torch.save({**model.describe(), "model": model.state_dict()}, path)
            teachers.append(str(path))
        mixup = args.mixup_alpha if kd == "online-mixup" else 0.0
        distill = DistillConfig(source="online", teachers=teachers, augment=AugmentConfig(mixup_alpha=mixup))
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
    result = train(config, root / f"exp-{kd or 'hard'}")
    return result["train_frames_per_sec"]


def ensemble_inference(args, device, n_models: int) -> float:
    models = [_model(args, device).eval() for _ in range(n_models)]
    x = torch.randn(args.batch_size, 26 * FEAT_DIM, device=device)

    def step():
        with _autocast(device):
            ensemble_logprobs(models, x, 2.0)

    return args.batch_size / _timed(step, max(1, args.steps // 2), args.warmup, device)


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="paper" if cuda else "cpu")
    p.add_argument("--senones", type=int, default=14_000 if cuda else 2000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=200 if cuda else 30)
    p.add_argument("--warmup", type=int, default=20 if cuda else 3)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--teachers", type=int, default=10 if cuda else 4)
    p.add_argument("--frames", type=int, default=2_000_000 if cuda else 100_000, help="full-loop training frames")
    p.add_argument("--buffer-frames", type=int, default=500_000 if cuda else 50_000)
    p.add_argument("--mixup-alpha", type=float, default=0.4, help="mixup of the online + mixup full loop")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"device: {name}; preset {args.preset}, {args.senones} senones, batch {args.batch_size}, "
        f"k={args.k}, bf16={cuda}, compile={args.compile}"
    )

    rows = {
        "(a) bare loop, synthetic": bare_loop(args, device),
        "(b) trainer step, hard": trainer_step(args, device, kd=False),
        "(b) trainer step, KD top-k": trainer_step(args, device, kd=True),
    }
    with tempfile.TemporaryDirectory() as tmp:
        _write_corpus(Path(tmp), args.frames, args.senones, args.k)
        rows["(c) full loop, hard"] = full_loop(args, device, Path(tmp))
        rows["(c) full loop, KD top-k"] = full_loop(args, device, Path(tmp), kd="topk")
        rows["(c) full loop, KD dense cache"] = full_loop(args, device, Path(tmp), kd="dense")
        rows[f"(c) full loop, KD online x{args.teachers}"] = full_loop(args, device, Path(tmp), kd="online")
        rows["(c) full loop, online + mixup"] = full_loop(args, device, Path(tmp), kd="online-mixup")
    rows["(d) inference, 1 model"] = ensemble_inference(args, device, 1)
    rows[f"(d) inference, {args.teachers} models"] = ensemble_inference(args, device, args.teachers)
    rows["(e) loss fwd+bwd, hard"] = loss_only(args, device, kd=False)
    rows["(e) loss fwd+bwd, KD top-k"] = loss_only(args, device, kd=True)

    for label, fps in rows.items():
        print(f"{label:32s} {fps:12,.0f} frames/s")
    bare = rows["(a) bare loop, synthetic"]
    print(f"trainer step / bare       hard {rows['(b) trainer step, hard'] / bare:.3f}")
    print(
        f"full loop / bare          hard {rows['(c) full loop, hard'] / bare:.3f}   "
        f"(goal: >= 0.9 on GPU; CPU preset within 1.5x, i.e. >= 0.667)"
    )
    print(f"full loop / trainer step  hard {rows['(c) full loop, hard'] / rows['(b) trainer step, hard']:.3f}")
    print(
        f"KD / hard   trainer step {rows['(b) trainer step, KD top-k'] / rows['(b) trainer step, hard']:.3f}   "
        f"full loop {rows['(c) full loop, KD top-k'] / rows['(c) full loop, hard']:.3f}   "
        f"loss alone {rows['(e) loss fwd+bwd, KD top-k'] / rows['(e) loss fwd+bwd, hard']:.3f}   (goal: >= 0.9)"
    )
    hard = rows["(c) full loop, hard"]
    print(
        f"full loop / hard          KD top-k cache {rows['(c) full loop, KD top-k'] / hard:.3f}   "
        f"KD dense cache {rows['(c) full loop, KD dense cache'] / hard:.3f}   "
        f"KD online x{args.teachers} {rows[f'(c) full loop, KD online x{args.teachers}'] / hard:.3f}   "
        f"online + mixup {rows['(c) full loop, online + mixup'] / hard:.3f}"
    )
    print(
        f"ensemble of {args.teachers} / 1 model inference "
        f"{rows[f'(d) inference, {args.teachers} models'] / rows['(d) inference, 1 model']:.3f}"
    )


if __name__ == "__main__":
    main()

"""Host-side feed of DNN training: frames per CPU-second that :class:`FrameStream` prepares.

The GPU trains the paper-size DNN at ~870k frames/s (H100, bf16), so the host
must read shards, edge-pad utterances, draw the shuffle order and pin the
buffer at >= 1M frames per CPU-second to keep ahead of it. This measures that
host side (``FrameStream._host_buffers``: tar reading, npy decoding, padding,
permuting; one process, one torch thread, no prefetch thread) for

  * features + labels (hard-label training),
  * + top-k soft targets as cached (int32 ids, fp16 probabilities: kept narrow to the device),
  * + dense soft targets (fp16 log-probabilities over all senones),

and, for reference, the whole epoch on the CPU (the host side plus the window
gather that runs on the GPU in real training). Shards are written to a temporary
folder first, so reads come from the page cache, as with a warm local disk.

    python -m benchmarks.bench_loader                        # from the repo root
    python -m benchmarks.bench_loader --frames 100000 --dense-senones 500   # quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig, FrameStream
from asrdistill.data.shards import FEATS_PREFIX, PDF_PREFIX, SOFT_PREFIX, ShardManifest, write_shard

FEAT_DIM = 40


def write_corpus(
    root: Path, frames: int, senones: int, k: int, dense_senones: int, utt_frames: int = 1000, shards: int = 4
) -> None:
    """Random fp16 features, int32 labels, top-k and dense soft targets, aligned shard sets under ``root``."""
    rng = np.random.default_rng(0)
    n_utts = max(shards, frames // utt_frames)
    names = {"feats": FEATS_PREFIX, "pdf": PDF_PREFIX, "topk": SOFT_PREFIX, "dense": SOFT_PREFIX}
    sets = {
        name: ShardManifest(root / name, prefix, meta={"dim": FEAT_DIM, "num_pdfs": senones})
        for name, prefix in names.items()
    }
    utts = [f"s{i:04d}-1-{i:05d}" for i in range(n_utts)]
    for s in range(shards):
        samples: dict[str, list] = {name: [] for name in sets}
        for u in utts[s::shards]:
            samples["feats"].append((u, {"feats": rng.standard_normal((utt_frames, FEAT_DIM)).astype(np.float16)}))
            samples["pdf"].append((u, {"pdf": rng.integers(0, senones, utt_frames).astype(np.int32)}))
            prob = rng.random((utt_frames, k)).astype(np.float32)
            samples["topk"].append(
                (
                    u,
                    {
                        "topk_idx": rng.integers(0, senones, (utt_frames, k)).astype(np.int32),
                        "topk_prob": (prob / prob.sum(1, keepdims=True)).astype(np.float16),
                    },
                )
            )
            logp = -rng.random((utt_frames, dense_senones)).astype(np.float16)
            samples["dense"].append((u, {"soft_logp": logp}))
        for name, manifest in sets.items():
            manifest.shards.append(write_shard(manifest.directory / f"{manifest.prefix}-{s:06d}.tar", samples[name]))
    for manifest in sets.values():
        manifest.save()
    Cmvn(np.zeros(FEAT_DIM), np.ones(FEAT_DIM), 1).save(root / "cmvn.json")


def measure(root: Path, soft: str | None, whole_epoch: bool, batch_size: int) -> dict[str, float]:
    """Frames, CPU seconds and wall seconds of one epoch's host side (or of the whole epoch on the CPU)."""
    feats = ShardManifest.load(root / "feats", FEATS_PREFIX)
    labels = ShardManifest.load(root / "pdf", PDF_PREFIX)
    soft_set = ShardManifest.load(root / soft, SOFT_PREFIX) if soft else None
    config = FrameConfig(batch_size=batch_size, buffer_frames=200_000, prefetch=0)
    stream = FrameStream(feats, labels, Cmvn.load(root / "cmvn.json"), config, soft=soft_set)
    cpu, wall = time.process_time(), time.perf_counter()
    if whole_epoch:
        frames = sum(int(b.y.shape[0]) for b in stream.epoch(0))
    else:
        frames = sum(buf.n for buf in stream._host_buffers(0, 0))
    return {"frames": frames, "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=400_000, help="training frames (sparse runs)")
    p.add_argument("--senones", type=int, default=2000)
    p.add_argument("--topk", type=int, default=20)
    p.add_argument("--dense-senones", type=int, default=1000, help="classes of the dense soft targets")
    p.add_argument("--batch-size", type=int, default=1024)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_corpus(root, args.frames, args.senones, args.topk, args.dense_senones)
        cases = [
            ("host: features + labels", None, False),
            (f"host: + top-{args.topk} soft targets", "topk", False),
            (f"host: + dense soft targets ({args.dense_senones} classes)", "dense", False),
            ("whole epoch on CPU: features + labels", None, True),
            (f"whole epoch on CPU: + top-{args.topk}", "topk", True),
        ]
        measure(root, None, False, args.batch_size)  # warm the page cache and the imports
        print(f"{'what':52s} {'frames':>9s} {'CPU s':>7s} {'wall s':>7s} {'frames/CPU-s':>13s}")
        for name, soft, whole in cases:
            r = measure(root, soft, whole, args.batch_size)
            r["frames_per_cpu_s"] = r["frames"] / max(r["cpu_s"], 1e-9)
            out[name] = r
            print(f"{name:52s} {r['frames']:9d} {r['cpu_s']:7.2f} {r['wall_s']:7.2f} {r['frames_per_cpu_s']:13,.0f}")
    return out


if __name__ == "__main__":
    main()

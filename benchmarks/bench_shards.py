"""Benchmark: shard writing and reading (``asrdistill.data.shards``), the I/O under every training epoch.

Writes ``--utts`` utterances of (``--frames``, 40) float16 features plus (frames,)
int32 labels into shards of ``--shard-mb`` MB, then reads every shard back
``--repeats`` times (best of) and reports MB/s and utterances/s of both::

    python benchmarks/bench_shards.py --utts 3000 --frames 800
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asrdistill.data.shards import iter_shard, plan_shards, write_shard  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--utts", type=int, default=3000)
    p.add_argument("--frames", type=int, default=800, help="frames per utterance (8 s)")
    p.add_argument("--shard-mb", type=float, default=50.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", type=Path, help="where to write the shards (default: a temporary folder)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(args.frames, 40)).astype(np.float16)
    pdf = rng.integers(0, 4000, args.frames).astype(np.int32)
    utts = [f"spk-{i // 100:04d}-{i:06d}" for i in range(args.utts)]
    groups = plan_shards({u: feats.nbytes + pdf.nbytes for u in utts}, args.shard_mb * 1e6)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t0 = time.perf_counter()
        paths = []
        for i, g in enumerate(groups):
            path = Path(tmp) / f"feats-{i:06d}.tar"
            write_shard(path, ((u, {"feats": feats, "pdf": pdf}) for u in g))
            paths.append(path)
        write_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        read_s = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            n = sum(1 for path in paths for _ in iter_shard(path))
            read_s = min(read_s, time.perf_counter() - t0)
        assert n == args.utts
    print(f"{args.utts} utterances x {args.frames} frames, {len(paths)} shards, {size_mb:.0f} MB")
    print(f"write: {size_mb / write_s:8.0f} MB/s  {args.utts / write_s:8.0f} utt/s")
    print(f"read:  {size_mb / read_s:8.0f} MB/s  {args.utts / read_s:8.0f} utt/s (best of {args.repeats})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: fbank extraction (FLAC decode + fbank + shard writing) and FrameStream minibatch rate.

Without ``--data-dir`` it builds a corpus of sine+noise FLACs (LibriSpeech
layout, 16 kHz PCM_16, 2-20 s utterances) and prepares it with
``data_prep.librispeech``, so it runs offline in a couple of minutes::

    python benchmarks/bench_features.py --hours 2 --nj 2
    python benchmarks/bench_features.py --data-dir data/train --nj 2 --device cuda

Reports x-real-time (audio seconds / wall seconds) of ``compute_features``,
peak resident memory (self, and the largest worker), and frames/s of
``FrameStream`` batches (random labels, 26-frame windows, batch 1024).
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asrdistill.data.datadir import DataDir  # noqa: E402
from asrdistill.data.features import FbankConfig, compute_cmvn, compute_features  # noqa: E402
from asrdistill.data.frames import FrameConfig, FrameStream  # noqa: E402
from asrdistill.data.shards import ShardManifest, iter_shard, write_shard  # noqa: E402

SR = 16000


def make_sine_corpus(root: Path, hours: float, seed: int = 0) -> Path:
    """Write ``hours`` of sine+noise FLACs as ``root/LibriSpeech/bench/SPK/CH/`` and return the data dir."""
    from data_prep.librispeech import prepare_librispeech

    rng = np.random.default_rng(seed)
    total, utt, chapter = 0.0, 0, None
    subset = root / "LibriSpeech" / "bench"
    lines: list[str] = []
    while total < hours * 3600:
        spk, ch = 100 + utt // 200, 1 + (utt // 50) % 4
        folder = subset / str(spk) / str(ch)
        if chapter != folder:
            if chapter is not None:
                (chapter / f"{chapter.parent.name}-{chapter.name}.trans.txt").write_text("".join(lines))
            folder.mkdir(parents=True, exist_ok=True)
            chapter, lines = folder, []
        n = int(rng.uniform(2.0, 20.0) * SR)
        t = np.arange(n) / SR
        audio = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(n)
        uid = f"{spk}-{ch}-{utt % 50:04d}"
        sf.write(folder / f"{uid}.flac", audio.astype(np.float32), SR, subtype="PCM_16")
        lines.append(f"{uid} SINE WAVE\n")
        total += n / SR
        utt += 1
    (chapter / f"{chapter.parent.name}-{chapter.name}.trans.txt").write_text("".join(lines))
    prepare_librispeech(root, ["bench"], root / "data", nj=1)
    return root / "data" / "bench"


def _random_labels(feats: ShardManifest, out: Path, num_pdfs: int = 4000) -> ShardManifest:
    rng = np.random.default_rng(0)
    labels = ShardManifest(out, "pdf")
    for i, path in enumerate(feats.shard_paths):
        samples = [
            (utt, {"pdf": rng.integers(0, num_pdfs, s["feats"].shape[0]).astype(np.int32)})
            for utt, s in iter_shard(path)
        ]
        labels.shards.append(write_shard(out / labels.shard_name(i), samples))
    labels.save()
    return labels


def _maxrss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def _cpu_s() -> float:
    """User+system CPU seconds of this process and its finished children."""
    return sum(
        r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, help="Kaldi data dir to benchmark (default: build a sine corpus)")
    p.add_argument("--hours", type=float, default=2.0, help="size of the generated corpus")
    p.add_argument("--nj", type=int, default=2)
    p.add_argument("--work", type=Path, help="folder for the corpus and shards (default: a temporary one)")
    p.add_argument("--device", default="cpu", help="FrameStream device")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--max-batches", type=int, default=2000, help="FrameStream batches to time")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="bench_features.") as tmp:
        work = args.work or Path(tmp)
        data_dir = args.data_dir
        if data_dir is None:
            t0 = time.perf_counter()
            data_dir = make_sine_corpus(work / "corpus", args.hours)
            print(f"generated {args.hours:g} h sine corpus in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        audio_s = sum(DataDir.load(data_dir).utt2dur.values())

        t0, c0 = time.perf_counter(), _cpu_s()
        feats = compute_features(data_dir, work / "fbank", FbankConfig(), nj=args.nj, force=True)
        extract_s, extract_cpu = time.perf_counter() - t0, _cpu_s() - c0
        rss_self, rss_child = _maxrss_mb(resource.RUSAGE_SELF), _maxrss_mb(resource.RUSAGE_CHILDREN)

        labels = _random_labels(feats, work / "ali")
        cmvn = compute_cmvn(feats)
        cfg = FrameConfig(left=20, right=5, batch_size=args.batch_size)
        stream = FrameStream(feats, labels, cmvn, cfg, device=args.device)
        frames = batches = 0
        t0, c0 = time.perf_counter(), _cpu_s()
        first = None
        for batch in stream.epoch(0):
            if first is None:
                first = time.perf_counter() - t0
            frames += batch.x.shape[0]
            batches += 1
            if batches >= args.max_batches:
                break
        if stream.device.type == "cuda":
            torch.cuda.synchronize()
        stream_s, stream_cpu = time.perf_counter() - t0, _cpu_s() - c0

    rows = [
        ("audio", f"{audio_s / 3600:.2f} h, {len(feats.keys)} utterances, {feats.num_frames} frames"),
        (
            f"fbank extraction (decode+fbank+shards, nj={args.nj})",
            f"{extract_s:.1f} s = {audio_s / extract_s:.0f}x real-time",
        ),
        (
            "  CPU time; audio s per CPU s; if nj cores were free",
            f"{extract_cpu:.1f} s; {audio_s / extract_cpu:.0f}x; {args.nj * audio_s / extract_cpu:.0f}x real-time",
        ),
        ("peak RSS main / largest worker", f"{rss_self:.0f} MB / {rss_child:.0f} MB"),
        (
            f"FrameStream {cfg.window}-frame windows, batch {cfg.batch_size}, {args.device}",
            f"{frames / stream_s:,.0f} frames/s ({batches} batches, first after {first:.2f} s)",
        ),
        ("  CPU time; frames per CPU s", f"{stream_cpu:.1f} s; {frames / stream_cpu:,.0f}"),
        ("torch threads (main)", str(torch.get_num_threads())),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{'measure':<{width}} | value\n{'-' * width}-+------")
    for k, v in rows:
        print(f"{k:<{width}} | {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

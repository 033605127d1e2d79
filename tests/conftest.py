"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asrdistill.data.shards import ShardManifest, write_shard


def make_frame_set(
    root: Path,
    rng: np.random.Generator,
    means: np.ndarray,
    n_utts: int,
    frames: int = 40,
    shards: int = 2,
    noise: float = 0.0,
) -> None:
    """Tiny aligned feature + label shard sets: frame = class mean + unit noise.

    ``noise`` is the fraction of labels replaced by random classes (hard labels
    that soft targets can correct). Writes ``root/feats`` and ``root/labels``.
    """
    num_classes, dim = means.shape
    fm = ShardManifest(root / "feats", "feats", meta={"dim": dim})
    lm = ShardManifest(root / "labels", "pdf", meta={"num_pdfs": num_classes})
    utts = [f"s{i:03d}-1-{i:04d}" for i in range(n_utts)]
    for s in range(shards):
        fs, ls = [], []
        for u in utts[s::shards]:
            y = rng.integers(0, num_classes, frames)
            fs.append((u, {"feats": (means[y] + rng.standard_normal((frames, dim))).astype(np.float16)}))
            if noise:
                y = np.where(rng.random(frames) < noise, rng.integers(0, num_classes, frames), y)
            ls.append((u, {"pdf": y.astype(np.int32)}))
        fm.shards.append(write_shard(root / "feats" / f"feats-{s:06d}.tar", fs))
        lm.shards.append(write_shard(root / "labels" / f"pdf-{s:06d}.tar", ls))
    fm.save()
    lm.save()

"""Single-Gaussian statistics per triphone HMM state, the input of the decision tree.

From a phone-level alignment (per frame: phone id and HMM state, a phone instance
starting wherever the state returns to 0) every frame gets its context
``(left, center, right, state)``; ``0`` stands for "no phone" at utterance edges
and silence is a context phone like any other (as in Kaldi). For each distinct
context we keep the frame count, the sum and the sum of squares of the features:
enough to fit a diagonal Gaussian to any pooled set of contexts, which is all the
tree needs. Accumulation is vectorised (sort + ``np.add.reduceat``), never a
Python loop over frames.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from asrdistill.logs import progress

if TYPE_CHECKING:  # shards import webdataset, which imports torch: not needed by the graph builder's tree
    from asrdistill.data.shards import ShardManifest

__all__ = [
    "TriphoneStats",
    "instance_starts",
    "frame_contexts",
    "gaussian_loglike",
    "StatsAccumulator",
    "accumulate_triphone_stats",
]

log = logging.getLogger(__name__)


@dataclass
class TriphoneStats:
    """Sufficient statistics per distinct context; rows sorted by context."""

    contexts: np.ndarray  # (N, 4) int64: left, center, right, state
    count: np.ndarray  # (N,) float64 frames
    sum: np.ndarray  # (N, D) float64
    sumsq: np.ndarray  # (N, D) float64

    @property
    def dim(self) -> int:
        return int(self.sum.shape[1])

    @property
    def num_frames(self) -> int:
        return int(round(self.count.sum()))

    def __len__(self) -> int:
        return int(self.count.shape[0])


def gaussian_loglike(count: np.ndarray, sum_: np.ndarray, sumsq: np.ndarray, var_floor: float = 0.01) -> np.ndarray:
    """Log-likelihood of pooled data under its own ML diagonal Gaussian (Kaldi's ``GaussClusterable::Objf``).

    Vectorised over leading dimensions: ``count`` (...), ``sum_``/``sumsq`` (..., D).
    The variance floor keeps tiny pools from scoring unbounded gains.
    """
    count = np.asarray(count, dtype=np.float64)
    n = np.maximum(count, 1e-10)[..., None]
    mean = sum_ / n
    var = np.maximum(sumsq / n - mean * mean, var_floor)
    dim = sum_.shape[-1]
    return -0.5 * count * (np.log(var).sum(-1) + dim * (1.0 + np.log(2 * np.pi)))


def instance_starts(phone: np.ndarray, state: np.ndarray) -> np.ndarray:
    """(T,) bool: a phone instance starts where the state returns to 0 or the phone id changes."""
    phone = np.asarray(phone)
    state = np.asarray(state)
    if phone.shape != state.shape or phone.ndim != 1:
        raise ValueError(f"phone {phone.shape} and state {state.shape} must be equal-length 1-d arrays")
    start = np.ones(phone.shape[0], dtype=bool)
    start[1:] = ((state[1:] == 0) & (state[:-1] != 0)) | (phone[1:] != phone[:-1])
    return start


def frame_contexts(phone: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame ``(left, center, right, state)`` from a phone-level alignment.

    Left/right are the neighbouring phone instances' phones (see
    :func:`instance_starts`), 0 at the utterance edges.
    """
    phone = np.asarray(phone, dtype=np.int64)
    state = np.asarray(state, dtype=np.int64)
    start = instance_starts(phone, state)
    if phone.shape[0] == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e, e, e
    inst = np.cumsum(start) - 1  # instance index per frame
    inst_phone = phone[start]
    padded = np.concatenate([[0], inst_phone, [0]])
    return padded[inst], phone, padded[inst + 2], state


class StatsAccumulator:
    """Adds utterances' (contexts, features) and reduces them to :class:`TriphoneStats`.

    Frames are buffered and reduced in blocks so memory stays bounded by the
    number of distinct contexts, not the number of frames.
    """

    def __init__(self, num_phones: int, max_states: int, dim: int, block_frames: int = 500_000):
        self.base = num_phones + 1
        self.max_states = max_states
        self.dim = dim
        self.block_frames = block_frames
        self._keys: list[np.ndarray] = []
        self._feats: list[np.ndarray] = []
        self._buffered = 0
        self._acc: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def _encode(self, l, c, r, s) -> np.ndarray:
        return ((l * self.base + c) * self.base + r) * self.max_states + s

    def _decode(self, keys: np.ndarray) -> np.ndarray:
        s = keys % self.max_states
        rest = keys // self.max_states
        r = rest % self.base
        rest //= self.base
        return np.stack([rest // self.base, rest % self.base, r, s], axis=1)

    def add(self, phone: np.ndarray, state: np.ndarray, feats: np.ndarray) -> None:
        """Add one aligned utterance; ``feats`` (T, D) in the space the GMMs model."""
        if feats.shape != (len(phone), self.dim):
            raise ValueError(f"features {feats.shape} do not match alignment length {len(phone)} x dim {self.dim}")
        l, c, r, s = frame_contexts(phone, state)
        if len(c) and (c.min() < 1 or c.max() >= self.base or s.min() < 0 or s.max() >= self.max_states):
            raise ValueError(f"phone ids must be in 1..{self.base - 1} and states in 0..{self.max_states - 1}")
        self._keys.append(self._encode(l, c, r, s))
        self._feats.append(np.asarray(feats, dtype=np.float64))
        self._buffered += len(c)
        if self._buffered >= self.block_frames:
            self._flush()

    @staticmethod
    def _reduce(keys, count, sum_, sumsq):
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        return (
            keys[starts],
            np.add.reduceat(count[order], starts),
            np.add.reduceat(sum_[order], starts, axis=0),
            np.add.reduceat(sumsq[order], starts, axis=0),
        )

    def _flush(self) -> None:
        if not self._keys:
            return
        keys = np.concatenate(self._keys)
        x = np.concatenate(self._feats)
        self._keys, self._feats, self._buffered = [], [], 0
        if len(keys) == 0:
            return
        new = self._reduce(keys, np.ones(len(keys)), x, x * x)
        if self._acc is not None:
            new = self._reduce(*(np.concatenate([a, b]) for a, b in zip(self._acc, new)))
        self._acc = new

    def result(self) -> TriphoneStats:
        self._flush()
        if self._acc is None:
            z = np.zeros((0, self.dim))
            return TriphoneStats(np.zeros((0, 4), dtype=np.int64), np.zeros(0), z, z.copy())
        keys, count, sum_, sumsq = self._acc
        return TriphoneStats(self._decode(keys), count, sum_, sumsq)


def accumulate_triphone_stats(
    ali: ShardManifest,
    feats: ShardManifest,
    num_phones: int,
    max_states: int,
    transform: Callable[[str, np.ndarray], np.ndarray],
) -> TriphoneStats:
    """Statistics over every aligned utterance of ``ali`` (shards aligned with ``feats``).

    ``transform(utt, raw_feats)`` maps stored features to the GMM feature space
    (CMVN, deltas...). Utterances with an empty alignment are skipped; a length
    mismatch is an error naming the shard.
    """
    from asrdistill.data.shards import iter_aligned

    acc: StatsAccumulator | None = None
    skipped = 0
    t0 = time.time()
    if len(ali.shards) != len(feats.shards):
        raise ValueError(f"{ali.path}: {len(ali.shards)} shards but {feats.path} has {len(feats.shards)}")
    with progress(total=feats.num_frames, desc="tree stats", unit="frame", unit_scale=True, leave=False) as bar:
        for fpath, apath in zip(feats.shard_paths, ali.shard_paths):
            for utt, sample in iter_aligned([fpath, apath]):
                x = sample["feats"]
                bar.update(len(x))
                phone, state = sample["phone"], sample["state"]
                if len(phone) == 0:
                    skipped += 1
                    continue
                if len(phone) != len(x):
                    raise ValueError(f"{apath}: {utt} has {len(phone)} aligned frames but {fpath} has {len(x)}")
                y = transform(utt, x)
                if acc is None:
                    acc = StatsAccumulator(num_phones, max_states, y.shape[1])
                acc.add(phone, state, y)
    if acc is None:
        raise ValueError(f"{ali.path}: no aligned utterance to accumulate tree statistics from")
    stats = acc.result()
    log.info(
        "tree stats: %d frames, %d distinct contexts, %d unaligned utterances skipped (%.1fs)",
        stats.num_frames,
        len(stats),
        skipped,
        time.time() - t0,
    )
    return stats

"""Frame-level data for DNN acoustic models: shuffled minibatches of context windows.

The paper's DNN sees 26 frames (20 past, the current one, 5 future) around each
labelled frame. Storing windows would multiply the data 26-fold, so shards hold
plain per-utterance features and windows are built on the fly, on the target
device: each utterance is edge-padded, utterances are concatenated into one
buffer tensor, and a batch is a single gather ``buf[pos[:, None] + offsets]``.

Shuffling is two-level, as webdataset-style streaming needs: the shard order is
permuted per epoch, several shards are read
interleaved, whole utterances fill a buffer of ``buffer_frames`` frames, and
every labelled frame in the buffer is drawn in a random order. Everything is
seeded by ``(seed, epoch)``, so a stream can be regenerated and fast-forwarded
to a saved batch position; skipped batches are never gathered, and buffers that
feed only skipped batches never reach the device.

DDP ranks split an epoch by frames, not by shards: the epoch's shard order is
one sequence of labelled frames, and rank r of N takes frames
``[r F / N, (r + 1) F / N)`` of it (an utterance at a boundary is shared: each
rank reads it whole, for context, and trains on its own frames). Every rank
thus trains the same number of frames, within one, for any N, even more ranks
than shards.

Host-side work (reading, padding, permuting) runs in a background thread one
buffer ahead, so the device does not wait for shards between buffers.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from asrdistill.data.features import Cmvn
from asrdistill.data.shards import FEATS_PREFIX, PDF_PREFIX, ShardManifest, iter_aligned

__all__ = ["FrameConfig", "FrameData", "Batch", "FrameStream", "iter_utterances", "context_windows"]

log = logging.getLogger(__name__)


@dataclass
class FrameConfig:
    """Context window and minibatch settings (section ``frames`` of a recipe config)."""

    left: int = 20  # past context frames (paper: 20)
    right: int = 5  # future context frames (paper: 5)
    batch_size: int = 1024  # frames per minibatch
    buffer_frames: int = 500_000  # shuffle buffer, in frames
    open_shards: int = 4  # shards read interleaved, so a buffer mixes speakers and chapters
    dtype: str = "float32"  # device buffer and ``Batch.x`` dtype: "float32" or "bfloat16"
    prefetch: int = 1  # host buffers prepared ahead in a background thread (0: none)

    def __post_init__(self) -> None:
        if self.left < 0 or self.right < 0:
            raise ValueError("frames: left and right context must be >= 0")
        if self.batch_size <= 0 or self.buffer_frames <= 0 or self.open_shards <= 0:
            raise ValueError("frames: batch_size, buffer_frames and open_shards must be positive")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"frames.dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.prefetch < 0:
            raise ValueError("frames.prefetch must be >= 0")

    @property
    def window(self) -> int:
        return self.left + 1 + self.right

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.dtype == "bfloat16" else torch.float32


@dataclass(frozen=True)
class FrameData:
    """A recipe's frame-level data, as every stage after alignment reads it: features and senone labels per set.

    ``feats_root/<set>/feats.manifest.json`` (features), ``labels_root/<set>/pdf.manifest.json`` (the
    aligner's labels), the CMVN statistics of the training features and how frames are windowed and batched.
    One object instead of the same six arguments in every evaluation, ensemble and specialists call.
    """

    feats_root: Path
    labels_root: Path
    train_set: str
    dev_set: str
    test_set: str = ""  # "" where a stage reads no test set
    frames: FrameConfig = field(default_factory=FrameConfig)
    cmvn_path: Path | None = None  # None: ``feats_root/<train_set>/cmvn.json``

    def __post_init__(self) -> None:
        object.__setattr__(self, "feats_root", Path(self.feats_root))
        object.__setattr__(self, "labels_root", Path(self.labels_root))
        cmvn = self.feats_root / self.train_set / "cmvn.json" if self.cmvn_path is None else Path(self.cmvn_path)
        object.__setattr__(self, "cmvn_path", cmvn)

    @property
    def sets(self) -> tuple[str, str, str]:
        return self.train_set, self.dev_set, self.test_set

    def cmvn(self) -> Cmvn:
        return Cmvn.load(self.cmvn_path)

    def feats(self, subset: str) -> ShardManifest:
        """The features of ``subset``."""
        return ShardManifest.load(self.feats_root / subset, FEATS_PREFIX)

    def labels_dir(self, subset: str) -> Path:
        return self.labels_root / subset

    def labels(self, subset: str) -> ShardManifest | None:
        """The senone labels of ``subset``, or None if it has none (a test set without alignments)."""
        if not ShardManifest.manifest_path(self.labels_dir(subset), PDF_PREFIX).is_file():
            return None
        return ShardManifest.load(self.labels_dir(subset), PDF_PREFIX)

    def labelled(self, subset: str) -> tuple[ShardManifest, ShardManifest]:
        """Features and labels of ``subset``; missing labels are an error naming the folder."""
        return self.feats(subset), ShardManifest.load(self.labels_dir(subset), PDF_PREFIX)


@dataclass
class Batch:
    x: Tensor  # (B, (left + 1 + right) * feat_dim) float32 (or bf16), CMVN applied
    y: Tensor  # (B,) int64 senone ids
    soft_idx: Tensor | None  # (B, k) int64  top-k teacher classes (sparse cache)
    soft_prob: Tensor | None  # (B, k) float32 their probabilities
    soft_logp: Tensor | None = None  # (B, C) float32 the teachers' full log-distribution at T (dense cache)


def context_windows(feats: Tensor, left: int, right: int) -> Tensor:
    """(T, (left+1+right)*D) windows of one normalised utterance (T, D), edges replicated."""
    t = feats.shape[0]
    rows = torch.arange(-left, t + right, device=feats.device).clamp_(0, t - 1)
    padded = feats[rows]
    idx = torch.arange(t, device=feats.device)[:, None] + torch.arange(left + 1 + right, device=feats.device)
    return padded[idx].reshape(t, -1)


# Soft-target fields of a cached soft shard (asrdistill.nnet.ensemble.cache_soft_targets): a sparse
# cache has topk_idx (T, k) int32 and topk_prob (T, k) float16, a dense one soft_logp (T, C) float16.
SOFT_FIELDS = ("topk_idx", "topk_prob", "soft_logp")


def _check_lengths(utt: str, sample: dict[str, np.ndarray], paths: list[Path]) -> bool:
    """True if the utterance has labels of the right length; False if unaligned (empty ``pdf``)."""
    t = sample["feats"].shape[0]
    n = sample["pdf"].shape[0]
    if n == 0:
        return False
    if n != t:
        raise ValueError(f"{paths[1]}: utterance {utt!r} has {n} labels but {t} feature frames in {paths[0]}")
    for name in SOFT_FIELDS:
        if len(paths) > 2 and name in sample and sample[name].shape[0] != t:
            raise ValueError(
                f"{paths[2]}: utterance {utt!r} has {sample[name].shape[0]} soft-target "
                f"frames but {t} feature frames in {paths[0]}"
            )
    return True


def _check_aligned(feats: ShardManifest, other: ShardManifest) -> None:
    if len(other.shards) != len(feats.shards):
        raise ValueError(f"{other.path}: {len(other.shards)} shards but {feats.path} has {len(feats.shards)}")
    for a, b in zip(feats.shards, other.shards):
        if a.keys != b.keys:
            raise ValueError(
                f"{other.directory / b.name}: keys differ from {feats.directory / a.name} "
                "(shards not aligned; stale labels?)"
            )


@dataclass
class _HostBuffer:
    """One shuffle buffer prepared on the host; ``padded`` is None when all its batches are skipped."""

    n: int  # labelled frames
    padded: Tensor | None = None  # (rows, D) float16 edge-padded features of its utterances
    row_utt: Tensor | None = None  # (rows,) utterance index of each row (speaker CMVN only)
    shift: Tensor | None = None  # (U, D) per-utterance CMVN shift (speaker CMVN only)
    scale: Tensor | None = None
    pos: Tensor | None = None  # (n,) window start row of each frame, in draw order
    y: Tensor | None = None  # (n,) senone ids as stored (int32), in draw order: widened on the device
    soft_idx: Tensor | None = None  # (n,) as stored (int32): widened on the device
    soft_prob: Tensor | None = None  # float16 as stored
    soft_logp: Tensor | None = None  # float16 as stored


_Utt = tuple[str, dict[str, np.ndarray], int, int]  # (utt, sample, first, end): its frames [first, end) are ours


class _Skipper:
    """Tracks batch numbers across buffers; shared logic of the reader and the consumer."""

    def __init__(self, batch_size: int, skip: int):
        self.b, self.skip = batch_size, skip
        self.done = 0  # full batches completed before the current buffer
        self.carry = 0  # frames carried into the next batch

    def wholly_skipped(self, n: int) -> bool:
        # the carry out of this buffer lands in batch done + full; everything before it is skipped too
        return self.done + (self.carry + n) // self.b < self.skip

    def advance(self, n: int) -> None:
        self.done += (self.carry + n) // self.b
        self.carry = (self.carry + n) % self.b


class FrameStream:
    """Shuffled frame-level minibatches (features + senone labels [+ top-k soft targets]).

    ``epoch(e)`` covers every labelled frame of this rank's shards exactly once
    (``passes`` times, each pass in its own order: a run on a small subset of the
    data can then count epochs in the same number of frames as a full-data run);
    the last batch may be smaller. ``epoch(e, skip_batches=k)`` yields the same
    stream from batch ``k`` on (for resuming a checkpoint mid-epoch).
    """

    def __init__(
        self,
        feats: ShardManifest,
        labels: ShardManifest,
        cmvn: Cmvn,
        config: FrameConfig,
        soft: ShardManifest | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        passes: int = 1,
    ):
        _check_aligned(feats, labels)
        if soft is not None:
            _check_aligned(feats, soft)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        if passes < 1:
            raise ValueError(f"FrameStream: passes must be >= 1, got {passes}")
        dim = feats.meta.get("dim")
        if dim is not None and int(dim) != cmvn.dim:
            raise ValueError(f"{feats.path}: features are {dim}-dim but CMVN is {cmvn.dim}-dim")
        self.feats, self.labels, self.soft, self.cmvn, self.config = feats, labels, soft, cmvn, config
        self.seed, self.rank, self.world_size, self.passes = seed, rank, world_size, passes
        self.device = torch.device(device)
        self._offsets = torch.arange(config.window, device=self.device)

    def frame_ranges(self, epoch: int) -> list[tuple[int, int, int]]:
        """``(shard, first, end)``: the labelled frames (counted within each shard) this rank trains on in ``epoch``.

        Shards in the epoch's reading order; the ranks' ranges tile the epoch
        without overlap. Counts come from the label manifest (unaligned
        utterances count 0).
        """
        n_shards = len(self.feats.shards)
        order = np.concatenate(
            [
                np.random.default_rng([self.seed, epoch] + ([p] if p else [])).permutation(n_shards)
                for p in range(self.passes)
            ]
        )
        total = self.labels.num_frames * self.passes
        lo, hi = total * self.rank // self.world_size, total * (self.rank + 1) // self.world_size
        out, start = [], 0
        for i in order:
            n = self.labels.shards[int(i)].num_frames
            a, b = max(lo, start), min(hi, start + n)
            if a < b:
                out.append((int(i), a - start, b - start))
            start += n
        return out

    def shard_order(self, epoch: int) -> list[int]:
        """Indices of the shards this rank reads in ``epoch``, in reading order."""
        return [i for i, _, _ in self.frame_ranges(epoch)]

    def num_frames(self, epoch: int) -> int:
        """Labelled frames this rank yields in ``epoch``."""
        return sum(b - a for _, a, b in self.frame_ranges(epoch))

    def num_batches(self, epoch: int) -> int:
        """Batches ``epoch(epoch)`` yields; DDP ranks differ by at most one (the last, partial one)."""
        return -(-self.num_frames(epoch) // self.config.batch_size)

    # ------------------------------------------------------------------ host side

    def _shard_utterances(self, i: int, first: int, end: int) -> Iterator[_Utt]:
        """Labelled utterances of shard ``i`` holding frames ``[first, end)`` of it, each with its share."""
        paths = [self.feats.shard_paths[i], self.labels.shard_paths[i]]
        if self.soft is not None:
            paths.append(self.soft.shard_paths[i])
        seen = 0  # labelled frames of the shard before this utterance
        for utt, sample in iter_aligned(paths):
            if seen >= end:
                return
            if not _check_lengths(utt, sample, paths):
                continue
            n = sample["pdf"].shape[0]
            lo, hi = max(first - seen, 0), min(end - seen, n)
            seen += n
            if lo < hi:
                yield utt, sample, lo, hi

    def _utterances(self, epoch: int) -> Iterator[_Utt]:
        """This rank's labelled utterances (and frame shares), ``open_shards`` shards interleaved at random."""
        rng = np.random.default_rng([self.seed, epoch, self.rank, 1])
        pending = self.frame_ranges(epoch)
        pending.reverse()
        active: list[Iterator[_Utt]] = []
        while pending or active:
            while pending and len(active) < self.config.open_shards:
                active.append(self._shard_utterances(*pending.pop()))
            k = int(rng.integers(len(active)))
            item = next(active[k], None)
            if item is None:
                active.pop(k)
                continue
            yield item

    def _host_buffers(self, epoch: int, skip_batches: int) -> Iterator[_HostBuffer]:
        cfg = self.config
        skipper = _Skipper(cfg.batch_size, skip_batches)
        pin = self.device.type == "cuda"
        utts: list[_Utt] = []
        frames = 0
        number = 0

        def pack() -> _HostBuffer:
            n = frames
            skipped = skipper.wholly_skipped(n)
            skipper.advance(n)
            if skipped:
                return _HostBuffer(n)
            buf = self._pack(utts, np.random.default_rng([self.seed, epoch, self.rank, 2, number]))
            if pin:
                for name in ("padded", "pos", "y", "soft_idx", "soft_prob", "soft_logp"):
                    t = getattr(buf, name)
                    if t is not None:
                        setattr(buf, name, t.pin_memory())
            return buf

        for item in self._utterances(epoch):
            utts.append(item)
            frames += item[3] - item[2]
            if frames >= cfg.buffer_frames:
                yield pack()
                utts, frames, number = [], 0, number + 1
        if utts:
            yield pack()

    def _pack(self, utts: list[_Utt], rng: np.random.Generator) -> _HostBuffer:
        """Edge-pad and concatenate the utterances; draw the random order of their (shares of) frames."""
        left, right = self.config.left, self.config.right
        lens = np.array([s["feats"].shape[0] for _, s, _, _ in utts], dtype=np.int64)
        first = np.array([a for _, _, a, _ in utts], dtype=np.int64)
        share = np.array([b - a for _, _, a, b in utts], dtype=np.int64)
        n, u = int(share.sum()), len(utts)
        padded_lens = lens + left + right
        raw_start = np.cumsum(lens) - lens
        pad_start = np.cumsum(padded_lens) - padded_lens
        raw = np.concatenate([s["feats"] for _, s, _, _ in utts])
        row_utt = np.repeat(np.arange(u), padded_lens)
        local = np.arange(row_utt.shape[0]) - pad_start[row_utt] - left
        np.clip(local, 0, lens[row_utt] - 1, out=local)
        padded = raw[raw_start[row_utt] + local]
        share_start = np.cumsum(share) - share
        frame_utt = np.repeat(np.arange(u), share)
        pos = pad_start[frame_utt] + first[frame_utt] + np.arange(n) - share_start[frame_utt]
        perm = rng.permutation(n)
        cat = lambda name: np.concatenate([s[name][a:b] for _, s, a, b in utts])  # noqa: E731
        out = _HostBuffer(
            n=n,
            padded=torch.from_numpy(padded),
            pos=torch.from_numpy(pos[perm]),
            y=torch.from_numpy(cat("pdf")[perm]),
        )
        if self.soft is not None:  # kept as stored (narrow); widened on the device
            fields = {"topk_idx": "soft_idx", "topk_prob": "soft_prob", "soft_logp": "soft_logp"}
            for name, attr in fields.items():
                if name in utts[0][1]:
                    setattr(out, attr, torch.from_numpy(cat(name)[perm]))
        if self.cmvn.per_speaker:
            stats = [self.cmvn.shift_scale(utt) for utt, _, _, _ in utts]
            out.row_utt = torch.from_numpy(row_utt)
            out.shift = torch.stack([s for s, _ in stats])
            out.scale = torch.stack([s for _, s in stats])
        return out

    def _prefetched(self, epoch: int, skip_batches: int) -> Iterator[_HostBuffer]:
        """``_host_buffers`` run ``prefetch`` buffers ahead in a thread (errors re-raised here)."""
        if self.config.prefetch == 0:
            yield from self._host_buffers(epoch, skip_batches)
            return
        q: queue.Queue = queue.Queue(maxsize=self.config.prefetch)
        stop = threading.Event()
        end = object()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for buf in self._host_buffers(epoch, skip_batches):
                    if not put(buf):
                        return
                put(end)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer thread
                put(e)

        thread = threading.Thread(target=work, name=f"frames-epoch{epoch}", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()

    # ------------------------------------------------------------------ device side

    def _to_device(
        self, host: _HostBuffer
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
        dev = self.device
        move = lambda t: None if t is None else t.to(dev, non_blocking=True)  # noqa: E731
        buf = move(host.padded).float()
        if host.row_utt is not None:
            rows = move(host.row_utt)
            buf.add_(move(host.shift)[rows]).mul_(move(host.scale)[rows])
        else:
            shift, scale = self.cmvn.shift_scale(device=dev)
            buf.add_(shift).mul_(scale)
        buf = buf.to(self.config.torch_dtype)
        widen = lambda t, dtype: None if t is None else move(t).to(dtype)  # noqa: E731
        return (
            buf,
            move(host.pos),
            widen(host.y, torch.int64),
            widen(host.soft_idx, torch.int64),
            widen(host.soft_prob, torch.float32),
            widen(host.soft_logp, torch.float32),
        )

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[Batch]:
        """Minibatches of ``epoch``, deterministic given (seed, epoch, rank, world_size), from ``skip_batches`` on."""
        b = self.config.batch_size
        skipper = _Skipper(b, skip_batches)
        carry: list[Batch] = []  # pieces of the batch that straddles buffers (empty if that batch is skipped)
        for host in self._prefetched(epoch, skip_batches):
            if host.padded is None:
                skipper.advance(host.n)
                carry = []
                continue
            buf, pos, y, *soft = self._to_device(host)

            def gather(s: int, e: int) -> Batch:
                x = buf[pos[s:e, None] + self._offsets].reshape(e - s, -1)
                return Batch(x, y[s:e], *(None if t is None else t[s:e] for t in soft))

            start = 0
            number = skipper.done
            need = b - skipper.carry
            while host.n - start >= need:
                if number >= skip_batches:
                    yield _concat(carry + [gather(start, start + need)])
                carry = []
                start += need
                need = b
                number += 1
            if start < host.n and number >= skip_batches:
                carry.append(gather(start, host.n))
            skipper.advance(host.n)
        if carry and skipper.done >= skip_batches:
            yield _concat(carry)


def _concat(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    cat = lambda ts: None if ts[0] is None else torch.cat(ts)  # noqa: E731
    return Batch(
        cat([p.x for p in parts]),
        cat([p.y for p in parts]),
        cat([p.soft_idx for p in parts]),
        cat([p.soft_prob for p in parts]),
        cat([p.soft_logp for p in parts]),
    )


def iter_utterances(
    feats: ShardManifest,
    cmvn: Cmvn,
    config: FrameConfig,
    labels: ShardManifest | None = None,
    device: str | torch.device = "cpu",
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[str, Tensor, Tensor | None]]:
    """(utt_id, windows (T, (left+1+right)*feat_dim) float32, labels (T,) int64 or None), in shard order.

    With ``labels``, unaligned utterances (empty ``pdf``) are skipped and a
    length mismatch is an error naming the shard; without, every utterance is
    yielded (decoding). ``rank``/``world_size``: only every ``world_size``-th
    utterance from the ``rank``-th on (dev evaluation split across DDP ranks).
    """
    device = torch.device(device)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, {world_size})")
    if labels is not None:
        _check_aligned(feats, labels)
    number = -1
    for i, feat_path in enumerate(feats.shard_paths):
        paths = [feat_path] if labels is None else [feat_path, labels.shard_paths[i]]
        for utt, sample in iter_aligned(paths):
            number += 1
            if number % world_size != rank:
                continue
            if labels is not None and not _check_lengths(utt, sample, paths):
                continue
            x = cmvn.apply(torch.from_numpy(sample["feats"]).to(device), utt=utt)
            y = None if labels is None else torch.from_numpy(sample["pdf"].astype(np.int64)).to(device)
            yield utt, context_windows(x, config.left, config.right), y

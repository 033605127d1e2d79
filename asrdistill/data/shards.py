"""Utterance shards in webdataset format, and streams aligned across shard sets.

A shard is a webdataset tar file, written by ``webdataset.TarWriter`` and read
back with webdataset's sample grouping over a random-access tar reader (as
fast as the hand-written reader it replaced; webdataset's own streaming tar
reader is ~25% slower). Any webdataset pipeline, local or streaming from HTTP
or object storage and split by node and worker, reads the shards as they are:
one sample per utterance, members ``<utt>.<field>.npy`` (e.g. ``feats.npy`` (T, 40)
float16, ``pdf.npy`` (T,) int32), arrays stored with ``allow_pickle=False``
and read the same way. Shards are bounded in size (~200 MB) so training
streams LibriSpeech-960 without holding it in memory.

Labels and soft targets are not written into the feature shards: they go into
*aligned* shard sets, one shard per feature shard with the same keys in the same
order (``feats-000003.tar`` <-> ``pdf-000003.tar``). :func:`iter_aligned` zips
them and checks that the keys agree, so a stale label shard is caught, not
trusted. Each shard set has a manifest ``<prefix>.manifest.json``.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import webdataset as wds
from webdataset.tariterators import group_by_keys

from asrdistill.fileio import atomic_path, write_json_atomic

__all__ = [
    "ShardInfo",
    "ShardManifest",
    "write_shard",
    "iter_shard",
    "iter_aligned",
    "plan_shards",
    "FEATS_PREFIX",
    "ALI_PREFIX",
    "PDF_PREFIX",
    "SOFT_PREFIX",
]

Sample = dict[str, np.ndarray]

# The shard sets of the pipeline, by file prefix (``<prefix>-NNNNNN.tar``, ``<prefix>.manifest.json``).
FEATS_PREFIX = "feats"  # fbank features, written by asrdistill.data.features
ALI_PREFIX = "ali"  # transition-level alignments, written by the aligner
PDF_PREFIX = "pdf"  # senone (pdf) frame labels: the DNNs' hard targets
SOFT_PREFIX = "soft"  # the ensemble's soft targets, written by asrdistill.nnet.ensemble


@dataclass
class ShardInfo:
    """One shard: its file name (relative to the manifest's folder), keys and frame count."""

    name: str
    keys: list[str]
    num_frames: int


@dataclass
class ShardManifest:
    """All shards of one set (e.g. the features of ``train``) in order."""

    directory: Path
    prefix: str
    shards: list[ShardInfo] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # free-form: feature dim, dtype, config, ...

    @property
    def path(self) -> Path:
        return self.manifest_path(self.directory, self.prefix)

    @staticmethod
    def manifest_path(directory: str | Path, prefix: str) -> Path:
        return Path(directory) / f"{prefix}.manifest.json"

    @property
    def shard_paths(self) -> list[Path]:
        return [self.directory / s.name for s in self.shards]

    @property
    def keys(self) -> list[str]:
        return [k for s in self.shards for k in s.keys]

    @property
    def num_frames(self) -> int:
        return sum(s.num_frames for s in self.shards)

    def shard_name(self, index: int) -> str:
        return f"{self.prefix}-{index:06d}.tar"

    def save(self) -> Path:
        write_json_atomic(
            self.path,
            {
                "prefix": self.prefix,
                "meta": self.meta,
                "shards": [{"name": s.name, "keys": s.keys, "num_frames": s.num_frames} for s in self.shards],
            },
        )
        return self.path

    @classmethod
    def load(cls, directory: str | Path, prefix: str) -> "ShardManifest":
        path = cls.manifest_path(directory, prefix)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shard manifest not found (did the stage that writes it finish?)")
        data = json.loads(path.read_text(encoding="utf-8"))
        shards = [ShardInfo(s["name"], list(s["keys"]), int(s["num_frames"])) for s in data["shards"]]
        for s in shards:
            if not (Path(directory) / s.name).is_file():
                raise FileNotFoundError(f"{Path(directory) / s.name}: listed in {path} but missing")
        return cls(Path(directory), data["prefix"], shards, data.get("meta", {}))


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def write_shard(path: str | Path, samples: Iterable[tuple[str, Sample]], frames_field: str | None = None) -> ShardInfo:
    """Write one shard atomically; returns its :class:`ShardInfo`.

    ``frames_field`` names the array whose first dimension counts frames
    (default: the first field of each sample).
    """
    path = Path(path)
    keys: list[str] = []
    frames = 0
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as f,
        wds.TarWriter(f, user="", group="", mode=0o644, encoder=False, mtime=0) as tar,
    ):
        for key, sample in samples:
            if "." in key or "/" in key:
                raise ValueError(f"{path}: sample key {key!r} may not contain '.' or '/'")
            tar.write({"__key__": key, **{f"{name}.npy": _npy_bytes(array) for name, array in sample.items()}})
            first = sample[frames_field] if frames_field else next(iter(sample.values()))
            frames += int(first.shape[0])
            keys.append(key)
    return ShardInfo(path.name, keys, frames)


def iter_shard(path: str | Path) -> Iterator[tuple[str, Sample]]:
    """Yield ``(key, {field: array})`` for each sample of one shard, in order."""
    path = Path(path)
    try:
        with tarfile.open(path, "r") as tar:  # random access: ~25% faster than webdataset's streaming tar reader
            files = (
                {"fname": m.name, "data": tar.extractfile(m).read(), "__url__": str(path)} for m in tar if m.isfile()
            )
            for sample in group_by_keys(files, lcase=False):
                fields = {k[: -len(".npy")]: v for k, v in sample.items() if k.endswith(".npy")}
                yield sample["__key__"], {k: np.load(io.BytesIO(v), allow_pickle=False) for k, v in fields.items()}
    except (tarfile.TarError, OSError, ValueError) as e:
        raise ValueError(f"{path}: corrupt shard: {e}") from e


def iter_aligned(paths: Sequence[str | Path]) -> Iterator[tuple[str, Sample]]:
    """Zip aligned shards (features, labels, soft targets...) sample by sample.

    Fields are merged into one dict. A key mismatch or a shard that ends early
    raises a ``ValueError`` naming both files.
    """
    iterators = [iter_shard(p) for p in paths]
    while True:
        items = [next(it, None) for it in iterators]
        if all(x is None for x in items):
            return
        for p, x in zip(paths, items):
            if x is None:
                raise ValueError(f"{p}: ends before {paths[0]} (shards not aligned)")
        key = items[0][0]
        merged: Sample = {}
        for p, (k, s) in zip(paths, items):
            if k != key:
                raise ValueError(f"{p}: sample {k!r} where {paths[0]} has {key!r} (shards not aligned)")
            merged.update(s)
        yield key, merged


def plan_shards(utt2size: dict[str, float], max_size: float) -> list[list[str]]:
    """Group utterances (in sorted order) into shards whose summed size stays <= ``max_size``.

    Sizes are estimates (e.g. seconds x bytes/second); an utterance larger than
    ``max_size`` gets a shard of its own.
    """
    groups: list[list[str]] = []
    current: list[str] = []
    total = 0.0
    for utt in sorted(utt2size):
        size = utt2size[utt]
        if current and total + size > max_size:
            groups.append(current)
            current, total = [], 0.0
        current.append(utt)
        total += size
    if current:
        groups.append(current)
    return groups

"""CMVN: the mean and variance normalisation statistics of filterbank features, applied on the fly.

Feature shards hold raw log-mel energies (:mod:`asrdistill.data.features`); readers
normalise with a :class:`Cmvn`, global or per speaker, so the same shards serve either mode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asrdistill import logs
from asrdistill.data.shards import ShardManifest, iter_shard
from asrdistill.fileio import write_json_atomic

__all__ = ["Cmvn", "compute_cmvn"]

_VAR_FLOOR = 1e-8


@dataclass
class Cmvn:
    """Mean/variance normalisation statistics: global, and optionally per speaker.

    ``apply(feats, utt=...)`` uses the utterance's speaker statistics when this
    object holds them (``cmvn='speaker'``) and the global ones otherwise, so a
    reader never needs to know which mode was chosen.
    """

    mean: np.ndarray  # (D,) float64
    var: np.ndarray  # (D,) float64
    count: int  # frames the global stats were computed on
    spk_mean: dict[str, np.ndarray] = field(default_factory=dict)
    spk_var: dict[str, np.ndarray] = field(default_factory=dict)
    utt2spk: dict[str, str] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def per_speaker(self) -> bool:
        return bool(self.spk_mean)

    def _stats(self, utt: str | None) -> tuple[str, np.ndarray, np.ndarray]:
        spk = self.utt2spk.get(utt) if (utt is not None and self.per_speaker) else None
        if spk is not None and spk in self.spk_mean:
            return spk, self.spk_mean[spk], self.spk_var[spk]
        return "", self.mean, self.var

    def shift_scale(
        self, utt: str | None = None, device: str | torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(-mean, 1/std)`` as float32 tensors on ``device`` (cached), for ``(x + shift) * scale``."""
        key, mean, var = self._stats(utt)
        dev = torch.device(device or "cpu")
        cache_key = (key, str(dev))
        if cache_key not in self._cache:
            shift = torch.as_tensor(-mean, dtype=torch.float32).to(dev)
            scale = torch.as_tensor(1.0 / np.sqrt(np.maximum(var, _VAR_FLOOR)), dtype=torch.float32).to(dev)
            self._cache[cache_key] = (shift, scale)
        return self._cache[cache_key]

    def apply(self, feats: np.ndarray | torch.Tensor, utt: str | None = None) -> np.ndarray | torch.Tensor:
        """Normalised float32 copy of ``feats`` (T, D), numpy in -> numpy out, torch in -> torch out."""
        if feats.shape[-1] != self.dim:
            raise ValueError(f"CMVN is {self.dim}-dim but features are {feats.shape[-1]}-dim")
        if isinstance(feats, torch.Tensor):
            shift, scale = self.shift_scale(utt, feats.device)
            return (feats.float() + shift) * scale
        _, mean, var = self._stats(utt)
        return ((feats.astype(np.float64) - mean) / np.sqrt(np.maximum(var, _VAR_FLOOR))).astype(np.float32)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_json_atomic(
            path,
            {
                "dim": self.dim,
                "count": self.count,
                "mean": self.mean.tolist(),
                "var": self.var.tolist(),
                "spk_mean": {s: m.tolist() for s, m in self.spk_mean.items()},
                "spk_var": {s: v.tolist() for s, v in self.spk_var.items()},
                "utt2spk": self.utt2spk,
            },
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Cmvn":
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            cmvn = cls(
                mean=np.asarray(d["mean"], dtype=np.float64),
                var=np.asarray(d["var"], dtype=np.float64),
                count=int(d["count"]),
                spk_mean={s: np.asarray(m, dtype=np.float64) for s, m in d.get("spk_mean", {}).items()},
                spk_var={s: np.asarray(v, dtype=np.float64) for s, v in d.get("spk_var", {}).items()},
                utt2spk=dict(d.get("utt2spk", {})),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: cannot read CMVN statistics: {e}") from e
        if cmvn.mean.shape != cmvn.var.shape or cmvn.mean.ndim != 1:
            raise ValueError(f"{path}: mean and var must be vectors of the same length")
        cmvn.check_finite(str(path))
        return cmvn

    def check_finite(self, where: str) -> None:
        """NaN or infinite statistics (from bad features) are an error naming ``where`` and the speaker."""
        stats = {"": (self.mean, self.var), **{s: (self.spk_mean[s], self.spk_var[s]) for s in self.spk_mean}}
        bad = [s or "global" for s, (m, v) in stats.items() if not (np.isfinite(m).all() and np.isfinite(v).all())]
        if bad:
            raise ValueError(f"{where}: CMVN statistics are not finite (NaN or Inf) for {bad[:3]}")


class _Accumulator:
    """Float64 sums for mean/variance (float16 features summed in float64 do not lose precision)."""

    def __init__(self, dim: int):
        self.n = 0
        self.s = np.zeros(dim, dtype=np.float64)
        self.ss = np.zeros(dim, dtype=np.float64)

    def add(self, x: np.ndarray) -> None:
        x = x.astype(np.float64)
        self.n += x.shape[0]
        self.s += x.sum(axis=0)
        self.ss += np.einsum("td,td->d", x, x)

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.s / max(self.n, 1)
        var = np.maximum(self.ss / max(self.n, 1) - mean**2, _VAR_FLOOR)
        return mean, var


def compute_cmvn(manifest: ShardManifest, utt2spk: dict[str, str] | None = None) -> Cmvn:
    """Global mean/variance over all frames of ``manifest``; per-speaker too when ``utt2spk`` is given.

    Compute it on the training features and apply the same object to every
    subset (global mode). In speaker mode, compute it on each subset's own
    features: test speakers are not in the training set.
    """
    dim = int(manifest.meta.get("dim", 0)) or None
    total: _Accumulator | None = None
    per_spk: dict[str, _Accumulator] = {}
    missing: list[str] = []
    for path in logs.progress(manifest.shard_paths, desc="cmvn", unit="shard", leave=False):
        for utt, sample in iter_shard(path):
            x = sample["feats"]
            if not np.isfinite(x).all():
                raise ValueError(f"{path}: {utt}: features hold NaN or Inf; recompute them (features --force)")
            if total is None:
                dim = dim or x.shape[1]
                total = _Accumulator(dim)
            total.add(x)
            if utt2spk is not None:
                spk = utt2spk.get(utt)
                if spk is None:
                    missing.append(utt)
                    continue
                per_spk.setdefault(spk, _Accumulator(dim)).add(x)
    if total is None or total.n == 0:
        raise ValueError(f"{manifest.path}: no feature frames to compute CMVN from")
    if missing:
        raise ValueError(f"{manifest.path}: {len(missing)} utterance(s) have no speaker in utt2spk, e.g. {missing[:3]}")
    mean, var = total.mean_var()
    cmvn = Cmvn(mean=mean, var=var, count=total.n)
    if utt2spk is not None:
        keys = set(manifest.keys)
        cmvn.utt2spk = {u: s for u, s in utt2spk.items() if u in keys}
        for spk, acc in per_spk.items():
            cmvn.spk_mean[spk], cmvn.spk_var[spk] = acc.mean_var()
    cmvn.check_finite(str(manifest.path))
    return cmvn

"""Teacher ensembles: loading members, combining posteriors, and caching soft targets.

As in Hinton et al. (2015) section 4, the teachers are N independent training
runs that differ only in their seed (initialisation and data order; the recipe
trains them with ``asrdistill train --seed i``). Their posteriors, softened at temperature T, are combined by the arithmetic mean
(default) or the renormalised geometric mean.

Distilling from a 10-model ensemble online costs 10 forward passes per student
step, so the targets are computed once and cached: :func:`cache_soft_targets`
runs the teachers over the training features in ONE pass and writes, for each
requested temperature, the k most probable senones per frame and their
probabilities (``soft-NNNNNN.tar``, aligned with the feature shards). The mass
outside the top k is not stored; :func:`asrdistill.kd.kd_loss` treats it as one
"rest" class. :func:`topk_kl` measures what that truncation loses.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from asrdistill.data.features import Cmvn
from asrdistill.fileio import clear_done, is_done, mark_done
from asrdistill.data.frames import FrameConfig, iter_utterances
from asrdistill.nnet.model import FrameDNN, autocast, load_model
from asrdistill.data.shards import SOFT_PREFIX, ShardManifest, write_shard

__all__ = ["load_teachers", "combine_logits", "ensemble_logprobs", "posterior_stream", "frame_accuracy",
           "cache_soft_targets", "topk_kl", "dense_to_topk"]

log = logging.getLogger(__name__)

METHODS = ("arithmetic", "geometric")


def load_teachers(paths: Sequence[str | Path], device: str | torch.device = "cpu",
                  expect: tuple[int, int] | None = None) -> list[FrameDNN]:
    """Load member checkpoints (eval mode, no grad); they must agree on inputs and senones.

    ``expect``: the ``(input_dim, num_classes)`` of the model they will teach, checked too.
    """
    if not paths:
        raise ValueError("no teacher checkpoints given")
    models = [load_model(p, device).requires_grad_(False) for p in paths]
    want = expect or (models[0].input_dim, models[0].num_classes)
    for path, m in zip(paths, models):
        if (m.input_dim, m.num_classes) != want:
            raise ValueError(f"{path}: {m.input_dim} inputs / {m.num_classes} senones, but "
                             f"{'the student' if expect else paths[0]} has {want[0]} / {want[1]} "
                             "(different context window, feature dim or tree?)")
    return models


def combine_logits(logits: Sequence[Tensor], temperature: float = 1.0, method: str = "arithmetic") -> Tensor:
    """Log of the ensemble posterior from each model's logits ``(N, C)``, all softened at ``temperature``.

    ``arithmetic``: log mean_m softmax(z_m / T). ``geometric``: the mean of the
    log-posteriors, renormalised (a product of experts). Computed in float32.
    """
    if method not in METHODS:
        raise ValueError(f"ensemble method must be one of {METHODS}, got {method!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logp = torch.stack([torch.log_softmax(z.float() / temperature, dim=-1) for z in logits])  # (M, N, C)
    if method == "arithmetic":
        return torch.logsumexp(logp, dim=0) - math.log(len(logits))
    return torch.log_softmax(logp.mean(0), dim=-1)


@torch.no_grad()
def ensemble_logprobs(models: Sequence[nn.Module], x: Tensor, temperature: float = 1.0,
                      method: str = "arithmetic") -> Tensor:
    """Ensemble log-posteriors ``(N, C)`` of ``models`` on inputs ``x`` at ``temperature``."""
    return combine_logits([m(x) for m in models], temperature, method)


@torch.no_grad()
def posterior_stream(models: Sequence[nn.Module], feats: ShardManifest, cmvn: Cmvn, frame_config: FrameConfig,
                     labels: ShardManifest | None = None, method: str = "arithmetic",
                     device: str | torch.device = "cpu", bf16: bool = False
                     ) -> Iterator[tuple[str, Tensor, Tensor | None]]:
    """``(utt, log posteriors (T, C) float32, labels (T,) or None)`` of a system over a feature set.

    A system is one model or an ensemble (its members combined at T = 1). This is
    the one pass that dev frame accuracy during training, ensemble scoring and
    decoding all read, so they cannot disagree on what a system's posterior is.
    """
    device = torch.device(device)
    for m in models:
        m.eval()
    for utt, x, y in iter_utterances(feats, cmvn, frame_config, labels=labels, device=device):
        with autocast(device, bf16):
            logits = [m(x).float() for m in models]
        yield utt, combine_logits(logits, 1.0, method), y


def frame_accuracy(models: Sequence[nn.Module], feats: ShardManifest, labels: ShardManifest, cmvn: Cmvn,
                   frame_config: FrameConfig, method: str = "arithmetic", device: str | torch.device = "cpu",
                   bf16: bool = False) -> dict[str, float]:
    """Frame accuracy and cross-entropy of a system (one model or an ensemble) on every labelled frame of a set."""
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for _, logp, y in posterior_stream(models, feats, cmvn, frame_config, labels, method, device, bf16):
        loss -= logp.gather(1, y[:, None]).sum().double()
        correct += (logp.argmax(-1) == y).sum()
        count += y.numel()
    if count == 0:
        raise ValueError(f"{labels.path}: no labelled frames")
    return {"loss": loss.item() / count, "acc": correct.item() / count, "frames": count}


def dense_to_topk(logprobs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k classes ``(N, k)`` int32 and their probabilities float16 (the cached form)."""
    values, idx = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return idx.to(torch.int32), values.exp().to(torch.float16)


@torch.no_grad()
def cache_soft_targets(teachers: Sequence[nn.Module], feats: ShardManifest, cmvn: Cmvn, frame_config: FrameConfig,
                       out_dirs_by_temperature: dict[float, str | Path], k: int = 20, method: str = "arithmetic",
                       device: str | torch.device = "cpu", force: bool = False) -> dict[float, ShardManifest]:
    """Write top-k ensemble posteriors at every temperature, in one inference pass over ``feats``.

    Each ``out_dirs_by_temperature[T]`` receives ``soft-NNNNNN.tar`` shards
    aligned with the feature shards (``<utt>.topk_idx.npy`` (T, k) int32,
    ``<utt>.topk_prob.npy`` (T, k) float16, every utterance) and
    ``soft.manifest.json`` whose meta records the temperature, k, method and
    senone count. A folder already done with the same settings is kept.
    """
    if not teachers:
        raise ValueError("cache_soft_targets: no teachers")
    if k < 1:
        raise ValueError(f"cache_soft_targets: k must be >= 1, got {k}")
    num_classes = {getattr(m, "num_classes", None) for m in teachers}
    if len(num_classes) != 1:
        raise ValueError(f"cache_soft_targets: teachers disagree on the senone count: {sorted(map(str, num_classes))}")
    (c,) = num_classes
    dirs = {float(t): Path(d) for t, d in out_dirs_by_temperature.items()}
    info = {t: {"temperature": t, "k": k, "method": method, "num_classes": c, "num_teachers": len(teachers),
                "feats": str(feats.path), "context": [frame_config.left, frame_config.right]} for t in dirs}
    todo = {t: d for t, d in dirs.items() if force or not (is_done(d, "soft") and _marker(d) == info[t])}
    for t, d in todo.items():
        clear_done(d, "soft")
    for m in teachers:
        m.eval()

    manifests = {t: ShardManifest(d, SOFT_PREFIX, meta=info[t]) for t, d in todo.items()}
    bar = tqdm(total=feats.num_frames, unit="frame", unit_scale=True, desc="soft targets", disable=not todo)
    for index, shard in enumerate(feats.shards):
        if not todo:
            break
        one = ShardManifest(feats.directory, feats.prefix, [shard], feats.meta)
        per_t: dict[float, list] = {t: [] for t in todo}
        for utt, x, _ in iter_utterances(one, cmvn, frame_config, device=device):
            logits = [m(x) for m in teachers]
            for t in todo:
                idx, prob = dense_to_topk(combine_logits(logits, t, method), k)
                per_t[t].append((utt, {"topk_idx": idx.cpu().numpy(), "topk_prob": prob.cpu().numpy()}))
            bar.update(x.shape[0])
        for t, samples in per_t.items():
            if [u for u, _ in samples] != shard.keys:
                raise ValueError(f"{feats.directory / shard.name}: utterances differ from {feats.path}")
            info_t = write_shard(todo[t] / f"{SOFT_PREFIX}-{index:06d}.tar", samples)
            manifests[t].shards.append(info_t)
    bar.close()
    for t, manifest in manifests.items():
        manifest.save()
        mark_done(todo[t], "soft", info[t])
        log.info("%s: top-%d soft targets at T=%g for %d frames", todo[t], k, t, manifest.num_frames)
    return {t: manifests[t] if t in manifests else ShardManifest.load(d, SOFT_PREFIX) for t, d in dirs.items()}


def _marker(directory: Path) -> dict:
    return json.loads((directory / ".soft.done").read_text(encoding="utf-8"))


def topk_kl(probs: Tensor, k: int) -> float:
    """Mean KL(p || p_k) over frames ``probs`` (N, C): what keeping only the top k loses.

    ``p_k`` keeps the k largest probabilities and spreads the remaining mass
    evenly over the other C - k classes (the most neutral reading of a cached
    top-k target). 0 when k >= C or when the teacher puts no mass outside its top k.
    """
    p = probs.double()
    c = p.shape[-1]
    if k >= c:
        return 0.0
    top = p.topk(k, dim=-1).values
    rest = (1 - top.sum(-1)).clamp(min=0)
    rest_neg_entropy = torch.xlogy(p, p).sum(-1) - torch.xlogy(top, top).sum(-1)  # sum over the rest of p log p
    kl = rest_neg_entropy - torch.xlogy(rest, rest / (c - k))
    return float(kl.clamp(min=0).mean())

"""Specialists for confusable senones (Hinton et al. 2015, section 5), and their combination with the generalist.

Four steps, each a function here and an ``asrdistill specialists-*`` command:

1. :func:`find_groups`: run the generalist over held-out (dev) frames, accumulate
   the covariance of its predicted distributions and its confusions, and cluster
   the senones by K-means on the covariance columns (senones the generalist
   confuses rise and fall together). Written by :func:`write_groups` as
   ``groups.json``: group id, senone ids, their centre phones, the share of the
   generalist's dev errors each group covers.
2. :func:`train_specialist`: a copy of the generalist whose output layer covers
   its group plus one "dustbin" class (every other senone), fine-tuned on
   batches that are ``group_fraction`` group frames and the rest other frames,
   with hard labels or the generalist's targets merged to group + dustbin (the
   paper's regulariser). The dustbin logit is then corrected for the
   oversampling, as the paper does.
3. :func:`combine`: per frame, the generalist's top classes activate the
   specialists whose group holds them, and the full distribution ``q``
   minimising ``KL(p_g || q) + sum_m KL(p_m || q_m)`` is found iteratively
   (``q_m``: q over the group, plus q's mass outside it as the dustbin).
   :func:`specialist_stream` yields ``(utt, log q, labels)`` like
   :func:`asrdistill.nnet.ensemble.posterior_stream`, so frame accuracy and
   the decoder read it like any system: ``asrdistill evaluate exp/specialists``
   scores the folder (:func:`load_combination`: the generalist its
   ``specialists.json`` names, with the specialists trained from it).
4. :func:`cache_combination_targets`: the combination's soft targets, dense, for
   ``asrdistill train --soft DIR`` (one student distilled from generalist + specialists).

Commands (``recipes/librispeech``)::

    asrdistill specialists-groups --config conf/tiny.yaml --feats data/fbank --labels exp/tri_ali \\
        --train-set train --dev-set dev --generalist exp/baseline_seed1 --tree exp/tri/tree.json --lang data/lang \\
        --out exp/specialists
    asrdistill specialists-train --config conf/tiny.yaml ... --generalist exp/baseline_seed1 --out exp/specialists
    asrdistill specialists-eval  --config conf/tiny.yaml ... --generalist exp/baseline_seed1 --test-set test \\
        --out exp/specialists
    asrdistill specialists-cache --config conf/tiny.yaml ... --generalist exp/baseline_seed1 --temperatures 2 \\
        --out exp/specialists
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from asrdistill.aligner.tree import ContextTree
from asrdistill.config import to_dict
from asrdistill.data.features import Cmvn
from asrdistill.data.frames import Batch, FrameConfig, FrameData, FrameStream, iter_utterances
from asrdistill.data.lang import Lang
from asrdistill.data.shards import SOFT_PREFIX, ShardManifest, iter_shard, write_shard
from asrdistill.fileio import atomic_path, mark_done, stage_done, write_json_atomic
from asrdistill.kd import kd_loss
from asrdistill.nnet.ensemble import fingerprint, posterior_stream, stored_target
from asrdistill.nnet.model import FrameDNN, ModelConfig, autocast, load_model

__all__ = [
    "SpecialistConfig",
    "SenoneGroup",
    "Specialist",
    "DevStats",
    "dev_statistics",
    "kmeans",
    "find_groups",
    "pdf_phones",
    "write_groups",
    "read_groups",
    "group_senones",
    "train_specialist",
    "train_specialists",
    "load_specialist",
    "load_specialists",
    "is_specialists_dir",
    "load_combination",
    "combine",
    "evaluate_specialists",
    "specialist_stream",
    "stream_accuracy",
    "cache_combination_targets",
    "cache_specialist_targets",
]

log = logging.getLogger(__name__)

GROUPS_FILE = "groups.json"
SUMMARY_FILE = "specialists.json"


@dataclass
class SpecialistConfig:
    """Section ``specialists`` of a recipe config."""

    enabled: bool = False  # run the recipe's optional specialist stages
    # groups
    num_groups: int = 8  # K of the K-means over senones
    max_group_size: int = 40  # clusters larger than this are split again by K-means
    num_specialists: int = 0  # train specialists for this many groups, those covering most dev errors (0: all)
    kmeans_iters: int = 50
    seed: int = 0  # K-means initialisation and the specialists' data order
    # training
    targets: str = "hard"  # "hard": labels; "soft": the generalist's targets merged to group + dustbin
    temperature: float = 2.0  # soft: temperature of the generalist's targets
    hard_weight: float = 0.5  # soft: weight of the hard-label term
    group_fraction: float = 0.5  # share of each batch drawn from the group (paper: half)
    epochs: int = 2  # passes over the group's training frames
    lr: float = 1e-3  # Adam, starting from the generalist's weights
    # combination
    top_classes: int = 1  # the generalist's top classes that activate specialists (paper: 1)
    combine_steps: int = 10  # iterations of the KL minimisation per frame

    def __post_init__(self) -> None:
        if self.num_groups < 1 or self.max_group_size < 2 or self.num_specialists < 0 or self.kmeans_iters < 1:
            raise ValueError(
                "specialists: num_groups >= 1, max_group_size >= 2, num_specialists >= 0 and "
                "kmeans_iters >= 1 are required"
            )
        if self.targets not in ("hard", "soft"):
            raise ValueError(f"specialists.targets must be 'hard' or 'soft', got {self.targets!r}")
        if self.temperature <= 0 or not 0.0 <= self.hard_weight <= 1.0:
            raise ValueError("specialists: temperature must be > 0 and hard_weight in [0, 1]")
        if not 0.0 < self.group_fraction < 1.0:
            raise ValueError(f"specialists.group_fraction must be in (0, 1), got {self.group_fraction}")
        if self.epochs < 1 or self.lr <= 0 or self.top_classes < 1 or self.combine_steps < 1:
            raise ValueError("specialists: epochs, lr, top_classes and combine_steps must be positive")

    def group_fields(self) -> dict:
        return {
            k: getattr(self, k) for k in ("num_groups", "max_group_size", "num_specialists", "kmeans_iters", "seed")
        }

    def train_fields(self) -> dict:
        return {
            k: getattr(self, k)
            for k in ("targets", "temperature", "hard_weight", "group_fraction", "epochs", "lr", "seed")
        }


# --------------------------------------------------------------------------- 1. confusable groups


@dataclass
class DevStats:
    """What the generalist does on held-out frames: the inputs of the clustering and of the error shares."""

    covariance: Tensor  # (C, C) float64 covariance of the predicted distributions over frames
    confusions: Tensor  # (C, C) int64 frames with label i predicted as j (errors only: zero diagonal)
    label_counts: Tensor  # (C,) int64 frames labelled with each senone
    frames: int


@torch.no_grad()
def dev_statistics(
    generalist: FrameDNN,
    feats: ShardManifest,
    labels: ShardManifest,
    cmvn: Cmvn,
    frames: FrameConfig,
    device: str | torch.device = "cpu",
) -> DevStats:
    """One pass of the generalist over a labelled set; sums, not stored posteriors, so memory is O(C^2)."""
    c = generalist.num_classes
    device = torch.device(device)
    second = torch.zeros(c, c, dtype=torch.float64, device=device)
    first = torch.zeros(c, dtype=torch.float64, device=device)
    errors = torch.zeros(c * c, dtype=torch.int64, device=device)
    counts = torch.zeros(c, dtype=torch.int64, device=device)
    n = 0
    for _, logp, y in posterior_stream([generalist], feats, cmvn, frames, labels, device=device):
        p = logp.exp().double()  # (T, C)
        second += p.T @ p
        first += p.sum(0)
        pred = logp.argmax(-1)
        wrong = pred != y
        errors += torch.bincount(y[wrong] * c + pred[wrong], minlength=c * c)
        counts += torch.bincount(y, minlength=c)
        n += y.numel()
    if n == 0:
        raise ValueError(f"{labels.path}: no labelled frames to find confusable senones on")
    mean = first / n
    return DevStats(second / n - torch.outer(mean, mean), errors.view(c, c), counts, n)


def kmeans(points: Tensor, k: int, iters: int, seed: int) -> Tensor:
    """Cluster ids ``(N,)`` of ``points`` (N, D): k-means++ seeding, then Lloyd iterations.

    Our own (a few lines of torch) rather than scipy's: no extra dependency, it
    runs on the device holding the (C, C) covariance, and it is deterministic
    given ``seed`` on any device (the seeding draws from a CPU generator).
    """
    n = points.shape[0]
    k = min(k, n)
    gen = torch.Generator().manual_seed(seed)
    centres = points[torch.randint(n, (1,), generator=gen)]
    for _ in range(1, k):
        d2 = torch.cdist(points, centres).min(1).values.square().cpu()
        if float(d2.sum()) <= 0:  # fewer distinct points than k
            break
        centres = torch.cat([centres, points[torch.multinomial(d2 / d2.sum(), 1, generator=gen)]])
    assign = torch.cdist(points, centres).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=len(centres)).to(points.dtype)[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        new = torch.cdist(points, centres).argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


@dataclass
class SenoneGroup:
    """One confusable group: the senones one specialist tells apart."""

    id: int
    senones: list[int]
    errors_within: int = 0  # generalist dev errors with label and prediction both in the group
    errors_touching: int = 0  # dev errors with label or prediction in the group
    dev_frames: int = 0  # dev frames labelled with a senone of the group


def _split(points: Tensor, members: Tensor, config: SpecialistConfig) -> list[Tensor]:
    """``members`` (indices into points) split by K-means until no part exceeds ``max_group_size``."""
    if len(members) <= config.max_group_size:
        return [members]
    k = math.ceil(len(members) / config.max_group_size)
    assign = kmeans(points[members], k, config.kmeans_iters, config.seed)
    parts = [members[assign == i] for i in range(k) if bool((assign == i).any())]
    if len(parts) == 1:  # identical points: K-means cannot separate them; cut in order
        return list(members.split(config.max_group_size))
    return [q for part in parts for q in _split(points, part, config)]


def find_groups(stats: DevStats, config: SpecialistConfig) -> list[SenoneGroup]:
    """Confusable senone groups from the generalist's dev statistics, most dev errors covered first.

    Each senone is represented by its column of the covariance matrix, scaled
    to unit length: without the scaling, every rarely predicted senone sits near
    the origin and they would cluster by being rare rather than by being confused.
    Groups of one senone (nothing to tell apart) are dropped.
    """
    cov = stats.covariance.float()
    points = cov / cov.norm(dim=0, keepdim=True).clamp(min=1e-12)
    points = points.T.contiguous()  # (C, C): row j is senone j's column
    assign = kmeans(points, config.num_groups, config.kmeans_iters, config.seed)
    clusters = [torch.nonzero(assign == i).flatten() for i in range(int(assign.max()) + 1)]
    parts = [p for c in clusters if len(c) for p in _split(points, c, config)]
    conf, label_counts = stats.confusions.cpu(), stats.label_counts.cpu()
    groups = []
    for part in parts:
        if len(part) < 2:
            continue
        s = sorted(int(i) for i in part)
        idx = torch.tensor(s)
        within = int(conf[idx][:, idx].sum())
        touching = int(conf[idx].sum() + conf[:, idx].sum()) - within
        groups.append(SenoneGroup(0, s, within, touching, int(label_counts[idx].sum())))
    groups.sort(key=lambda g: (-g.errors_within, -g.errors_touching, g.senones))
    if config.num_specialists:
        groups = groups[: config.num_specialists]
    for i, g in enumerate(groups):
        g.id = i
    return groups


def pdf_phones(tree: ContextTree, lang: Lang) -> list[list[str]]:
    """Centre phones of every senone (pdf), from the tree's ``pdf_info`` (sorted, deduplicated)."""
    out = []
    for pdf, pairs in enumerate(tree.pdf_info):
        bad = [p for p, _ in pairs if not 0 < p < len(lang.phones)]
        if bad:
            raise ValueError(
                f"senone {pdf}: phone id(s) {bad} not in the lang's {len(lang.phones)} phones "
                "(tree and lang from different runs?)"
            )
        out.append(sorted({lang.phones[p] for p, _ in pairs}))
    return out


def write_groups(
    path: str | Path,
    groups: Sequence[SenoneGroup],
    stats: DevStats,
    num_classes: int,
    phones: list[list[str]] | None = None,
    info: dict | None = None,
) -> None:
    """``groups.json``: per group its senones (with their centre phones) and the dev errors it covers."""
    total = int(stats.confusions.sum())
    if phones is not None and len(phones) != num_classes:
        raise ValueError(f"the tree has {len(phones)} senones, the generalist {num_classes}")
    rows = []
    for g in groups:
        row = {
            "id": g.id,
            "size": len(g.senones),
            "senones": g.senones,
            "dev_frames": g.dev_frames,
            "errors_within": g.errors_within,
            "errors_touching": g.errors_touching,
            "error_share_within": g.errors_within / total if total else 0.0,
            "error_share_touching": g.errors_touching / total if total else 0.0,
        }
        if phones is not None:
            row["phones"] = {str(s): phones[s] for s in g.senones}
            row["centre_phones"] = sorted({p for s in g.senones for p in phones[s]})
        rows.append(row)
    write_json_atomic(
        path,
        {
            "num_classes": num_classes,
            "dev_frames": stats.frames,
            "dev_errors": total,
            "groups": rows,
            "info": info or {},
        },
    )


def read_groups(path: str | Path) -> tuple[list[SenoneGroup], int]:
    """Groups and the senone count of a ``groups.json``; a malformed file is an error naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        c = int(data["num_classes"])
        groups = [
            SenoneGroup(
                int(r["id"]),
                [int(s) for s in r["senones"]],
                int(r["errors_within"]),
                int(r["errors_touching"]),
                int(r["dev_frames"]),
            )
            for r in data["groups"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a usable groups file: {e}") from e
    for g in groups:
        if len(set(g.senones)) != len(g.senones) or not all(0 <= s < c for s in g.senones) or len(g.senones) < 2:
            raise ValueError(f"{path}: group {g.id} has repeated, out-of-range (C={c}) or too few senones")
    return groups, c


def group_senones(
    generalist_path: str | Path,
    data: FrameData,
    config: SpecialistConfig,
    out_dir: str | Path,
    *,
    tree: ContextTree | None = None,
    lang: Lang | None = None,
    device: str | torch.device = "cpu",
    force: bool = False,
) -> list[SenoneGroup]:
    """The groups stage: ``out_dir/groups.json`` from the generalist's predictions on ``data``'s dev set (kept if
    inputs are unchanged)."""
    path = Path(out_dir) / GROUPS_FILE
    generalist = load_model(generalist_path, device)
    (dev_feats, dev_labels), cmvn, frames = data.labelled(data.dev_set), data.cmvn(), data.frames
    info = {
        "generalist": fingerprint([generalist]),
        "dev": [str(dev_feats.path), str(dev_labels.path)],
        "context": [frames.left, frames.right],
        "config": config.group_fields(),
        "phones": tree is not None and lang is not None,
    }
    if stage_done(out_dir, "groups", info, force) is not None:
        return read_groups(path)[0]
    stats = dev_statistics(generalist, dev_feats, dev_labels, cmvn, frames, device)
    groups = find_groups(stats, config)
    phones = pdf_phones(tree, lang) if info["phones"] else None
    write_groups(path, groups, stats, generalist.num_classes, phones, info)
    mark_done(out_dir, "groups", {"groups": len(groups)}, info)
    total = int(stats.confusions.sum())
    log.info(
        "%s: %d groups of %s senones cover %d of the generalist's %d dev errors within a group",
        path,
        len(groups),
        "/".join(str(len(g.senones)) for g in groups) or "no",
        sum(g.errors_within for g in groups),
        total,
    )
    return groups


# --------------------------------------------------------------------------- 2. specialists


@dataclass
class Specialist:
    """A model over ``len(senones) + 1`` classes: the group's senones in order, then the dustbin."""

    model: FrameDNN
    senones: Tensor  # (S,) int64 senone ids of the group


def _class_map(senones: Tensor, num_classes: int) -> Tensor:
    """(C,) specialist class of each senone: its position in the group, or the dustbin ``S``."""
    lut = torch.full((num_classes,), len(senones), dtype=torch.int64, device=senones.device)
    lut[senones] = torch.arange(len(senones), device=senones.device)
    return lut


def _merge(logp: Tensor, senones: Tensor) -> Tensor:
    """Full-class log-probabilities (N, C) -> (N, S + 1): the group's, then the log mass outside it."""
    outside = torch.ones(logp.shape[-1], dtype=torch.bool, device=logp.device)
    outside[senones] = False
    rest = torch.logsumexp(logp.masked_fill(~outside, -math.inf), dim=-1, keepdim=True)
    return torch.cat([logp[:, senones], rest], dim=-1)


def _enriched(stream: FrameStream, epoch: int, in_group: Tensor, fraction: float) -> Iterator[Batch]:
    """Batches of the stream's size, ``fraction`` of them group frames and the rest other frames.

    Each group frame is used once per epoch; other frames are taken in the
    stream's random order as needed (the paper's "half from the special
    subset, half from the remainder"). The last incomplete batch is dropped.
    """
    size = stream.config.batch_size
    need_g = max(1, round(size * fraction))
    need_o = max(1, size - need_g)
    pool: dict[bool, list[tuple[Tensor, Tensor]]] = {True: [], False: []}
    have = {True: 0, False: 0}
    for batch in stream.epoch(epoch):
        mask = in_group[batch.y]
        for key, m in ((True, mask), (False, ~mask)):
            if key is False and have[False] >= need_o * (have[True] // need_g + 1):
                continue  # enough other frames for the group frames seen so far
            if bool(m.any()):
                pool[key].append((batch.x[m], batch.y[m]))
                have[key] += int(m.sum())
        while have[True] >= need_g and have[False] >= need_o:
            parts = []
            for key, need in ((True, need_g), (False, need_o)):
                x = torch.cat([p[0] for p in pool[key]])
                y = torch.cat([p[1] for p in pool[key]])
                parts.append((x[:need], y[:need]))
                pool[key] = [(x[need:], y[need:])]
                have[key] -= need
            yield Batch(torch.cat([parts[0][0], parts[1][0]]), torch.cat([parts[0][1], parts[1][1]]), None, None)


def train_specialist(
    generalist: FrameDNN,
    group: SenoneGroup,
    data: FrameData,
    config: SpecialistConfig,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    force: bool = False,
) -> dict:
    """Train one specialist on ``data``'s train set into ``out_dir/final.pt``; returns its dev metrics (kept when
    already done).

    ``nnet.train.train`` cannot be reused: it builds a fresh model over all
    senones from an unbiased stream; a specialist starts from the generalist
    with a new output layer over group + dustbin, on an enriched stream. The
    output layer starts from the generalist's rows (the dustbin's from their
    log-sum-exp at the current bias, approximated by the mean row plus the log
    of the class count), so training starts near the generalist merged to the group.

    Soft targets are the generalist's distribution merged to group + dustbin at
    T = 1, then softened as logits (``softmax(merged / T)``): merging after
    softening would ask one dustbin logit to be a sum of many softened classes,
    which no logit also matches at T = 1 (the dustbin would come out inflated
    by up to its class count).
    """
    out_dir = Path(out_dir)
    device = torch.device(device)
    (feats, labels), (dev_feats, dev_labels) = data.labelled(data.train_set), data.labelled(data.dev_set)
    cmvn, frames = data.cmvn(), data.frames
    info = {
        "generalist": fingerprint([generalist]),
        "senones": group.senones,
        "feats": str(feats.path),
        "labels": str(labels.path),
        "dev": [str(dev_feats.path), str(dev_labels.path)],
        "frames": to_dict(frames),
        "config": config.train_fields(),
    }
    done = stage_done(out_dir, "specialist", info, force)
    if done is not None:
        return done["result"]
    torch.manual_seed(config.seed + group.id)
    c = generalist.num_classes
    senones = torch.tensor(group.senones, dtype=torch.int64, device=device)
    lut = _class_map(senones, c)
    in_group = lut < len(senones)
    generalist = generalist.to(device).eval().requires_grad_(False)

    model = FrameDNN(generalist.config, generalist.input_dim, len(senones) + 1).to(device)
    with torch.no_grad():
        model.hidden.load_state_dict(generalist.hidden.state_dict())
        w, b = generalist.output.weight, generalist.output.bias
        rest = ~in_group
        model.output.weight.copy_(torch.cat([w[senones], w[rest].mean(0, keepdim=True)]))
        model.output.bias.copy_(torch.cat([b[senones], b[rest].mean(0, keepdim=True) + math.log(int(rest.sum()))]))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    stream = FrameStream(feats, labels, cmvn, frames, seed=config.seed + group.id, device=device)
    bf16 = device.type == "cuda"
    steps = 0
    for epoch in range(config.epochs):
        model.train()
        loss_sum, batches = torch.zeros((), device=device), 0
        for batch in _enriched(stream, epoch, in_group, config.group_fraction):
            y = lut[batch.y]
            with autocast(device, bf16):
                logits = model(batch.x)
                if config.targets == "hard":
                    loss = F.cross_entropy(logits.float(), y)
                else:
                    with torch.no_grad():  # merged at T = 1, then softened like logits (see the docstring)
                        merged = _merge(torch.log_softmax(generalist(batch.x).float(), -1), senones)
                        teacher = torch.softmax(merged / config.temperature, -1)
                    loss = kd_loss(
                        logits,
                        teacher_probs=teacher,
                        labels=y,
                        temperature=config.temperature,
                        hard_weight=config.hard_weight,
                        check_values=False,
                    )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            batches += 1
        steps += batches
        log.info(
            "specialist %d epoch %d: %d batches, train loss %.4f",
            group.id,
            epoch,
            batches,
            loss_sum.item() / max(batches, 1),
        )
    if steps == 0:
        raise ValueError(
            f"{labels.path}: too few frames of group {group.id} ({len(senones)} senones) for one "
            f"batch of {frames.batch_size}"
        )
    # undo the oversampling: the prior odds of dustbin vs group were (1 - r) / r in training, (1 - f) / f in the
    # data. Soft targets carry the data's prior already, so only the hard term's share of the shift applies.
    f = _group_share(labels, in_group.cpu())
    r = max(1, round(frames.batch_size * config.group_fraction)) / frames.batch_size
    correction = math.log((1 - f) / f) - math.log((1 - r) / r)
    if config.targets == "soft":
        correction *= config.hard_weight
    with torch.no_grad():
        model.output.bias[len(senones)] += correction
    model.eval()
    result = {
        "group": group.id,
        "size": len(senones),
        "steps": steps,
        "train_group_share": f,
        "dustbin_correction": correction,
        **_dev_group_metrics(generalist, model, senones, dev_feats, dev_labels, cmvn, frames, device),
    }
    ckpt = {
        **model.describe(),
        "model": model.state_dict(),
        "senones": group.senones,
        "num_pdfs": c,
        "generalist": info["generalist"],
        "result": result,
    }
    with atomic_path(out_dir / "final.pt") as tmp:
        torch.save(ckpt, tmp)
    mark_done(out_dir, "specialist", {"result": result}, info)
    log.info(
        "specialist %d (%d senones): dev accuracy on its frames %.2f%% (generalist %.2f%%) over %d frames",
        group.id,
        len(senones),
        100 * result["dev_acc"],
        100 * result["generalist_dev_acc"],
        result["dev_frames"],
    )
    return result


def _group_share(labels: ShardManifest, in_group: Tensor) -> float:
    """Share of the labelled frames of a set that belong to the group (strictly inside (0, 1))."""
    hits = total = 0
    for path in labels.shard_paths:
        for _, sample in iter_shard(path):
            y = torch.from_numpy(sample["pdf"].astype(np.int64))
            hits += int(in_group[y].sum())
            total += y.numel()
    if not 0 < hits < total:
        raise ValueError(f"{labels.path}: group covers {hits} of {total} frames; a specialist needs both kinds")
    return hits / total


@torch.no_grad()
def _dev_group_metrics(
    generalist: FrameDNN,
    model: FrameDNN,
    senones: Tensor,
    feats: ShardManifest,
    labels: ShardManifest,
    cmvn: Cmvn,
    frames: FrameConfig,
    device: torch.device,
) -> dict:
    """Accuracy over group + dustbin on the dev frames labelled with a group senone, specialist vs generalist."""
    lut = _class_map(senones, generalist.num_classes)
    hit_s = hit_g = n = 0
    for _, x, y in iter_utterances(feats, cmvn, frames, labels=labels, device=device):
        m = lut[y] < len(senones)
        if not bool(m.any()):
            continue
        x, y = x[m], lut[y[m]]
        hit_s += int((model(x).argmax(-1) == y).sum())
        hit_g += int((_merge(torch.log_softmax(generalist(x).float(), -1), senones).argmax(-1) == y).sum())
        n += y.numel()
    return {
        "dev_frames": n,
        "dev_acc": hit_s / n if n else float("nan"),
        "generalist_dev_acc": hit_g / n if n else float("nan"),
    }


def load_specialist(
    path: str | Path, device: str | torch.device = "cpu", generalist: FrameDNN | None = None
) -> Specialist:
    """A specialist written by :func:`train_specialist` (tensors and plain data only: ``weights_only``).

    With ``generalist``, the specialist must have been trained from those very weights.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if generalist is not None and ckpt["generalist"] != fingerprint([generalist]):
            raise ValueError("trained from another generalist than the one given (train the specialists again)")
        model = FrameDNN(ModelConfig(**ckpt["model_config"]), int(ckpt["input_dim"]), int(ckpt["num_classes"]))
        model.load_state_dict(ckpt["model"])
        senones = torch.tensor([int(s) for s in ckpt["senones"]], dtype=torch.int64)
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a usable specialist checkpoint: {e}") from e
    if model.num_classes != len(senones) + 1:
        raise ValueError(f"{path}: {model.num_classes} outputs for {len(senones)} senones + dustbin")
    return Specialist(model.to(device).eval().requires_grad_(False), senones.to(device))


def train_specialists(
    generalist_path: str | Path,
    data: FrameData,
    config: SpecialistConfig,
    out_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    force: bool = False,
) -> dict:
    """The training stage: one specialist per group of ``out_dir/groups.json`` in ``out_dir/spec_NN``.

    A group that cannot be trained (e.g. too few frames) is logged and skipped;
    ``out_dir/specialists.json`` lists the trained ones, the skipped ones with the reason, and the
    generalist's checkpoint, so the folder is a system :func:`load_combination` can load.
    """
    out_dir = Path(out_dir)
    groups, c = read_groups(out_dir / GROUPS_FILE)
    generalist = load_model(generalist_path, device)
    if generalist.num_classes != c:
        raise ValueError(
            f"{out_dir / GROUPS_FILE}: groups over {c} senones, {generalist_path} has {generalist.num_classes}"
        )
    trained, skipped = {}, {}
    for g in groups:
        try:
            trained[g.id] = train_specialist(
                generalist, g, data, config, out_dir / f"spec_{g.id:02d}", device=device, force=force
            )
        except ValueError as e:
            log.error("specialist %d skipped: %s", g.id, e)
            skipped[g.id] = str(e)
    # the generalist relative to the folder (as an ensemble's members.txt): evaluation finds the system from here
    summary = {
        "generalist": os.path.relpath(Path(generalist_path).resolve(), out_dir.resolve()),
        "trained": {str(k): v for k, v in trained.items()},
        "skipped": {str(k): v for k, v in skipped.items()},
    }
    write_json_atomic(out_dir / SUMMARY_FILE, summary)
    log.info(
        "%d specialists trained, %d skipped%s",
        len(trained),
        len(skipped),
        f" (groups {sorted(skipped)}; reasons in {out_dir / 'specialists.json'})" if skipped else "",
    )
    return summary


def load_specialists(
    out_dir: str | Path, device: str | torch.device = "cpu", generalist: FrameDNN | None = None
) -> list[Specialist]:
    """The specialists the training stage listed in ``out_dir/specialists.json``, checked against their groups
    (and, with ``generalist``, against the generalist they were trained from)."""
    out_dir = Path(out_dir)
    groups = {g.id: g for g in read_groups(out_dir / GROUPS_FILE)[0]}
    ids = sorted(int(k) for k in _summary(out_dir)["trained"])
    out = []
    for i in ids:
        spec = load_specialist(out_dir / f"spec_{i:02d}" / "final.pt", device, generalist)
        if i not in groups or spec.senones.tolist() != groups[i].senones:
            raise ValueError(
                f"{out_dir / f'spec_{i:02d}'}: its senones differ from group {i} of "
                f"{out_dir / GROUPS_FILE} (stale specialist?)"
            )
        out.append(spec)
    if not out:
        raise ValueError(f"{out_dir / SUMMARY_FILE}: no trained specialists")
    return out


def _summary(out_dir: Path) -> dict:
    path = out_dir / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(summary["trained"], dict):
            raise TypeError("'trained' is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a usable specialists summary (was specialists-train run?): {e}") from e
    return summary


def is_specialists_dir(path: str | Path) -> bool:
    """Whether ``path`` is a specialists folder (``specialists-train`` has written its summary)."""
    return (Path(path) / SUMMARY_FILE).is_file()


def load_combination(
    out_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[Path, FrameDNN, list[Specialist]]:
    """The generalist+specialists system of a specialists folder: the generalist's checkpoint (as the
    summary names it), the generalist, and the specialists checked to be trained from it."""
    out_dir = Path(out_dir)
    summary = _summary(out_dir)
    if "generalist" not in summary:
        raise ValueError(
            f"{out_dir / SUMMARY_FILE}: names no generalist (written before it recorded one: "
            "run specialists-train again)"
        )
    path = Path(summary["generalist"])
    path = path if path.is_absolute() else out_dir / path
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir / SUMMARY_FILE}: generalist {path} not found")
    generalist = load_model(path, device).requires_grad_(False)
    return path, generalist, load_specialists(out_dir, device, generalist)


# --------------------------------------------------------------------------- 3. combination


def combine(gen_logp: Tensor, outputs: Sequence[tuple[Tensor, Tensor, Tensor]], steps: int = 10) -> Tensor:
    """Log of ``q`` (N, C) minimising ``KL(p_g || q) + sum_m KL(p_m || q_m)`` for every frame at once.

    ``gen_logp`` (N, C): the generalist's log-distribution. ``outputs``: per
    specialist ``(senones (S,), rows (n,), logp (n, S + 1))``: its group, the
    frames it is active on, and its log-distribution over the group then the
    dustbin. ``q_m`` is ``q`` on the group plus q's mass outside it.

    The update is the gradient of the objective with respect to q's logits,
    divided by the number of terms of each frame, applied to q itself:
    ``q <- q - grad``, i.e. ``q <- (p_g + sum_m p_m's group mass + q * R) / W``,
    where ``R`` spreads each specialist's dustbin mass over the senones outside
    its group in proportion to q and ``W`` (1 + the active specialists) is what
    the numerator sums to. This is the EM step for the dustbin split: it
    stays on the simplex, never increases the objective, keeps tiny
    probabilities exact (decoding reads their logs), and is exact after one
    step when no dustbin has mass (one specialist over all senones gives the
    average of the two distributions).
    """
    logp_all = gen_logp.float()
    if not outputs or not any(len(rows) for _, rows, _ in outputs):
        return logp_all
    device = logp_all.device
    # only frames with an active specialist change: iterate on those alone
    active = torch.unique(torch.cat([rows for _, rows, _ in outputs]))
    local = torch.full((logp_all.shape[0],), -1, dtype=torch.int64, device=device)
    local[active] = torch.arange(len(active), device=device)
    logp_g = logp_all[active]
    n, c = logp_g.shape
    group_mass = torch.zeros(n, c, device=device)  # sum_m p_m on its group's senones
    dust = torch.zeros(n, len(outputs), device=device)  # (N, M) each active specialist's dustbin mass
    outside = torch.ones(len(outputs), c, device=device)
    for m, (senones, rows, logp) in enumerate(outputs):
        if logp.shape != (len(rows), len(senones) + 1):
            raise ValueError(
                f"combine: specialist {m} gives {tuple(logp.shape)} for {len(rows)} frames and "
                f"{len(senones)} senones + dustbin"
            )
        p = logp.float().exp()
        rows = local[rows]
        group_mass[rows[:, None], senones[None, :]] += p[:, :-1]
        dust[rows, m] = p[:, -1]
        outside[m, senones] = 0.0
    log_fixed = torch.logaddexp(logp_g, group_mass.log())  # the terms that do not depend on q
    logq = logp_g
    for _ in range(steps):
        q_out = logq.exp() @ outside.T  # (N, M) q's mass outside each group
        spread = (dust / q_out.clamp(min=1e-30)) @ outside  # (N, C)
        logq = torch.log_softmax(torch.logaddexp(log_fixed, logq + spread.log()), dim=-1)  # the sum is W
    out = logp_all.clone()
    out[active] = logq
    return out


@torch.no_grad()
def specialist_stream(
    generalist: FrameDNN,
    specialists: Sequence[Specialist],
    feats: ShardManifest,
    cmvn: Cmvn,
    frames: FrameConfig,
    labels: ShardManifest | None = None,
    top_classes: int = 1,
    steps: int = 10,
    device: str | torch.device = "cpu",
    bf16: bool = False,
) -> Iterator[tuple[str, Tensor, Tensor | None]]:
    """``(utt, log q (T, C) float32, labels or None)``: the generalist + specialists system over a set.

    The same form as :func:`asrdistill.nnet.ensemble.posterior_stream`: the
    decoder reads ``(utt, logq.cpu().numpy())`` and :func:`stream_accuracy`
    scores it. A specialist runs only on the frames it is active on.
    """
    device = torch.device(device)
    c = generalist.num_classes
    generalist.eval()
    member = torch.zeros(len(specialists), c, dtype=torch.bool, device=device)  # (M, C)
    for m, s in enumerate(specialists):
        s.model.eval()
        member[m, s.senones.to(device)] = True
    for utt, x, y in iter_utterances(feats, cmvn, frames, labels=labels, device=device):
        with autocast(device, bf16):
            gen = torch.log_softmax(generalist(x).float(), dim=-1)
            top = gen.topk(min(top_classes, c), dim=-1).indices  # (T, k)
            active = member.T[top].any(1)  # (T, M)
            outputs = []
            for m, s in enumerate(specialists):
                rows = torch.nonzero(active[:, m]).flatten()
                if len(rows):
                    outputs.append((s.senones.to(device), rows, torch.log_softmax(s.model(x[rows]).float(), dim=-1)))
        yield utt, combine(gen, outputs, steps), y


def stream_accuracy(stream: Iterable[tuple[str, Tensor, Tensor | None]], groups: Sequence[Sequence[int]] = ()) -> dict:
    """Frame accuracy and cross-entropy of a posterior stream, also split by whether the label is in a group.

    ``acc_in_groups`` covers the frames labelled with a senone of any group
    (what specialists can improve), ``acc_outside`` the rest; the analogue of
    the paper's Table 4 breakdown.
    """
    loss = 0.0
    hits = {"all": 0, "in": 0, "out": 0}
    counts = {"all": 0, "in": 0, "out": 0}
    grouped = None
    for _, logp, y in stream:
        if y is None:
            raise ValueError("stream_accuracy: the stream has no labels")
        if grouped is None:
            grouped = torch.zeros(logp.shape[-1], dtype=torch.bool, device=logp.device)
            for g in groups:
                grouped[torch.as_tensor(list(g), device=logp.device)] = True
        right = logp.argmax(-1) == y
        loss -= float(logp.gather(1, y[:, None]).double().sum())
        inside = grouped[y]
        for key, m in (("all", torch.ones_like(inside)), ("in", inside), ("out", ~inside)):
            hits[key] += int(right[m].sum())
            counts[key] += int(m.sum())
    if not counts["all"]:
        raise ValueError("stream_accuracy: no labelled frames")
    rate = lambda k: hits[k] / counts[k] if counts[k] else float("nan")  # noqa: E731
    return {
        "acc": rate("all"),
        "loss": loss / counts["all"],
        "frames": counts["all"],
        "acc_in_groups": rate("in"),
        "frames_in_groups": counts["in"],
        "acc_outside": rate("out"),
        "frames_outside": counts["out"],
    }


def evaluate_specialists(
    generalist_path: str | Path,
    out_dir: str | Path,
    data: FrameData,
    subsets: Sequence[str],
    config: SpecialistConfig,
    *,
    device: str | torch.device = "cpu",
) -> dict:
    """Frame accuracy of the generalist and of generalist + specialists on each labelled set, in and outside the groups.

    ``subsets``: names of ``data``'s labelled sets. Writes ``out_dir/frame_accuracy.json``.
    """
    cmvn, frames = data.cmvn(), data.frames
    out_dir = Path(out_dir)
    generalist = load_model(generalist_path, device)
    specialists = load_specialists(out_dir, device, generalist)
    groups = [s.senones.tolist() for s in specialists]
    result = {
        "specialists": len(specialists),
        "top_classes": config.top_classes,
        "combine_steps": config.combine_steps,
        "sets": {},
    }
    for name in subsets:
        feats, labels = data.labelled(name)
        gen = stream_accuracy(posterior_stream([generalist], feats, cmvn, frames, labels, device=device), groups)
        comb = stream_accuracy(
            specialist_stream(
                generalist, specialists, feats, cmvn, frames, labels, config.top_classes, config.combine_steps, device
            ),
            groups,
        )
        result["sets"][name] = {"generalist": gen, "generalist+specialists": comb}
        log.info(
            "%s: frame acc generalist %.2f%% -> with specialists %.2f%% (in groups %.2f%% -> %.2f%%, "
            "outside %.2f%% -> %.2f%%)",
            name,
            100 * gen["acc"],
            100 * comb["acc"],
            100 * gen["acc_in_groups"],
            100 * comb["acc_in_groups"],
            100 * gen["acc_outside"],
            100 * comb["acc_outside"],
        )
    write_json_atomic(out_dir / "frame_accuracy.json", result)
    return result


# --------------------------------------------------------------------------- 4. distilling the combination


@torch.no_grad()
def cache_combination_targets(
    generalist: FrameDNN,
    specialists: Sequence[Specialist],
    feats: ShardManifest,
    cmvn: Cmvn,
    frames: FrameConfig,
    out_dirs_by_temperature: dict[float, str | Path],
    config: SpecialistConfig,
    device: str | torch.device = "cpu",
    info: dict | None = None,
    force: bool = False,
) -> dict[float, ShardManifest]:
    """Dense soft targets of the combination on ``feats``, one folder per temperature, in one pass.

    Shards ``soft-NNNNNN.tar`` aligned with the feature shards hold
    ``<utt>.soft_logp.npy`` (T, C) float16: ``log_softmax(log q / T)``, the
    combination softened as if ``log q`` were logits. The manifest meta records
    temperature and num_classes, so ``asrdistill train --soft DIR --temperature T``
    distils from it. Dense: 2 bytes x C per frame on disk. A folder done with
    the same ``info`` is kept.
    """
    dirs = {float(t): Path(d) for t, d in out_dirs_by_temperature.items()}
    c = generalist.num_classes
    meta = {
        t: {
            "temperature": t,
            "num_classes": c,
            "source": "generalist+specialists",
            "feats": str(feats.path),
            "context": [frames.left, frames.right],
            "top_classes": config.top_classes,
            "combine_steps": config.combine_steps,
            **(info or {}),
        }
        for t in dirs
    }
    todo = {t: d for t, d in dirs.items() if stage_done(d, "soft", meta[t], force) is None}
    manifests = {t: ShardManifest(d, SOFT_PREFIX, meta=meta[t]) for t, d in todo.items()}
    for index, shard in enumerate(feats.shards if todo else []):
        one = ShardManifest(feats.directory, feats.prefix, [shard], feats.meta)
        per_t: dict[float, list] = {t: [] for t in todo}
        for utt, logq, _ in specialist_stream(
            generalist,
            specialists,
            one,
            cmvn,
            frames,
            top_classes=config.top_classes,
            steps=config.combine_steps,
            device=device,
        ):
            for t in todo:
                stored = stored_target(torch.log_softmax(logq / t, dim=-1), 0)  # dense, as the ensemble's
                per_t[t].append((utt, {name: v.cpu().numpy() for name, v in stored.items()}))
        for t, samples in per_t.items():
            if [u for u, _ in samples] != shard.keys:
                raise ValueError(f"{feats.directory / shard.name}: utterances differ from {feats.path}")
            manifests[t].shards.append(write_shard(todo[t] / f"{SOFT_PREFIX}-{index:06d}.tar", samples))
    for t, manifest in manifests.items():
        manifest.save()
        mark_done(todo[t], "soft", meta[t], meta[t])
        log.info(
            "%s: dense soft targets of generalist + %d specialists at T=%g for %d frames",
            todo[t],
            len(specialists),
            t,
            manifest.num_frames,
        )
    return {t: manifests[t] if t in manifests else ShardManifest.load(d, SOFT_PREFIX) for t, d in dirs.items()}


def cache_specialist_targets(
    generalist_path: str | Path,
    out_dir: str | Path,
    data: FrameData,
    temperatures: Sequence[float],
    config: SpecialistConfig,
    *,
    device: str | torch.device = "cpu",
    force: bool = False,
) -> dict[float, ShardManifest]:
    """The caching stage: :func:`cache_combination_targets` of the trained specialists on ``data``'s train set
    into ``out_dir/soft_T<t>``.

    The marker records the weight fingerprints of the generalist and the
    specialists, so retraining any of them makes the cache stale.
    """
    out_dir = Path(out_dir)
    generalist = load_model(generalist_path, device)
    specialists = load_specialists(out_dir, device, generalist)
    info = {"generalist": fingerprint([generalist]), "specialists": fingerprint([s.model for s in specialists])}
    dirs = {float(t): out_dir / f"soft_T{t:g}" for t in temperatures}
    return cache_combination_targets(
        generalist, specialists, data.feats(data.train_set), data.cmvn(), data.frames, dirs, config, device, info, force
    )

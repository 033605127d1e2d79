"""Step 1 of section 5: the confusable senone groups, one per specialist.

:func:`find_groups` runs on the generalist's predictions over held-out (dev)
frames: :func:`dev_statistics` accumulates the covariance of its predicted
distributions and its confusions, and the senones are clustered by K-means on
the covariance columns (senones the generalist confuses rise and fall
together). :func:`write_groups` writes them as ``groups.json``: group id,
senone ids, their centre phones, the share of the generalist's dev errors each
group covers. :func:`group_senones` is the stage (``asrdistill specialists-groups``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from asrdistill.aligner.tree import ContextTree
from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig, FrameData
from asrdistill.data.lang import Lang
from asrdistill.data.shards import ShardManifest
from asrdistill.fileio import mark_done, stage_done, write_json_atomic
from asrdistill.nnet.ensemble import fingerprint, posterior_stream
from asrdistill.nnet.model import FrameDNN, load_model
from asrdistill.nnet.specialists.config import SpecialistConfig

__all__ = [
    "DevStats",
    "SenoneGroup",
    "dev_statistics",
    "find_groups",
    "group_senones",
    "kmeans",
    "pdf_phones",
    "read_groups",
    "write_groups",
]

log = logging.getLogger(__name__)

GROUPS_FILE = "groups.json"


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

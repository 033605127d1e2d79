"""Step 2 of section 5: one specialist per confusable group, and loading them back as a system.

:func:`train_specialist` makes a copy of the generalist whose output layer
covers its group plus one "dustbin" class (every other senone), fine-tuned on
batches that are ``group_fraction`` group frames and the rest other frames,
with hard labels or the generalist's targets merged to group + dustbin (the
paper's regulariser). The dustbin logit is then corrected for the
oversampling, as the paper does. :func:`train_specialists` is the stage
(``asrdistill specialists-train``); its ``specialists.json`` names the
generalist, so :func:`load_combination` loads the folder as one system.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from asrdistill.config import to_dict
from asrdistill.data.features import Cmvn
from asrdistill.data.frames import Batch, FrameConfig, FrameData, FrameStream, iter_utterances
from asrdistill.data.shards import ShardManifest, iter_shard
from asrdistill.fileio import atomic_path, mark_done, stage_done, write_json_atomic
from asrdistill.kd import kd_loss
from asrdistill.nnet.ensemble import fingerprint
from asrdistill.nnet.model import FrameDNN, ModelConfig, autocast, load_model
from asrdistill.nnet.specialists.config import SpecialistConfig
from asrdistill.nnet.specialists.groups import GROUPS_FILE, SenoneGroup, read_groups

__all__ = [
    "Specialist",
    "is_specialists_dir",
    "load_combination",
    "load_specialist",
    "load_specialists",
    "train_specialist",
    "train_specialists",
]

log = logging.getLogger(__name__)

SUMMARY_FILE = "specialists.json"


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
    with a new output layer over group + dustbin (:func:`_from_generalist`), on
    an enriched stream (:func:`_enriched`), and its dustbin is corrected for the
    oversampling afterwards (:func:`_correct_dustbin`).
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
    senones = torch.tensor(group.senones, dtype=torch.int64, device=device)
    generalist = generalist.to(device).eval().requires_grad_(False)
    model = _from_generalist(generalist, senones)
    stream = FrameStream(feats, labels, cmvn, frames, seed=config.seed + group.id, device=device)
    steps = _fit(model, generalist, senones, stream, config, group.id)
    if steps == 0:
        raise ValueError(
            f"{labels.path}: too few frames of group {group.id} ({len(senones)} senones) for one "
            f"batch of {frames.batch_size}"
        )
    share = _group_share(labels, _class_map(senones, generalist.num_classes).cpu() < len(senones))
    correction = _correct_dustbin(model, share, frames.batch_size, config)
    model.eval()
    result = {
        "group": group.id,
        "size": len(senones),
        "steps": steps,
        "train_group_share": share,
        "dustbin_correction": correction,
        **_dev_group_metrics(generalist, model, senones, dev_feats, dev_labels, cmvn, frames, device),
    }
    ckpt = {
        **model.describe(),
        "model": model.state_dict(),
        "senones": group.senones,
        "num_pdfs": generalist.num_classes,
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


def _from_generalist(generalist: FrameDNN, senones: Tensor) -> FrameDNN:
    """A new model over group + dustbin that starts near the generalist merged to the group.

    The hidden layers are the generalist's; the output rows are the group's
    rows, and the dustbin's is their log-sum-exp at the current bias,
    approximated by the mean of the other rows plus the log of their count.
    """
    model = FrameDNN(generalist.config, generalist.input_dim, len(senones) + 1).to(senones.device)
    rest = _class_map(senones, generalist.num_classes) == len(senones)
    with torch.no_grad():
        model.hidden.load_state_dict(generalist.hidden.state_dict())
        w, b = generalist.output.weight, generalist.output.bias
        model.output.weight.copy_(torch.cat([w[senones], w[rest].mean(0, keepdim=True)]))
        model.output.bias.copy_(torch.cat([b[senones], b[rest].mean(0, keepdim=True) + math.log(int(rest.sum()))]))
    return model


def _fit(
    model: FrameDNN, generalist: FrameDNN, senones: Tensor, stream: FrameStream, config: SpecialistConfig, group: int
) -> int:
    """``config.epochs`` passes of Adam over the group-enriched stream; the number of steps taken."""
    device = senones.device
    lut = _class_map(senones, generalist.num_classes)
    in_group = lut < len(senones)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    bf16 = device.type == "cuda"
    steps = 0
    for epoch in range(config.epochs):
        model.train()
        loss_sum, batches = torch.zeros((), device=device), 0
        for batch in _enriched(stream, epoch, in_group, config.group_fraction):
            with autocast(device, bf16):
                loss = _loss(model, generalist, senones, batch.x, lut[batch.y], config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            batches += 1
        steps += batches
        log.info(
            "specialist %d epoch %d: %d batches, train loss %.4f",
            group,
            epoch,
            batches,
            loss_sum.item() / max(batches, 1),
        )
    return steps


def _loss(
    model: FrameDNN, generalist: FrameDNN, senones: Tensor, x: Tensor, y: Tensor, config: SpecialistConfig
) -> Tensor:
    """The loss of one batch against labels ``y`` over group + dustbin: hard, or KD from the generalist.

    Soft targets are the generalist's distribution merged to group + dustbin at
    T = 1, then softened as logits (``softmax(merged / T)``): merging after
    softening would ask one dustbin logit to be a sum of many softened classes,
    which no logit also matches at T = 1 (the dustbin would come out inflated
    by up to its class count).
    """
    logits = model(x)
    if config.targets == "hard":
        return F.cross_entropy(logits.float(), y)
    with torch.no_grad():
        merged = _merge(torch.log_softmax(generalist(x).float(), -1), senones)
        teacher = torch.softmax(merged / config.temperature, -1)
    return kd_loss(
        logits,
        teacher_probs=teacher,
        labels=y,
        temperature=config.temperature,
        hard_weight=config.hard_weight,
        check_values=False,
    )


def _correct_dustbin(model: FrameDNN, share: float, batch_size: int, config: SpecialistConfig) -> float:
    """Undo the oversampling in the dustbin's bias, given the group's ``share`` of the training frames; the shift.

    The prior odds of dustbin vs group were (1 - r) / r in training, (1 - share) / share in the data. Soft targets
    carry the data's prior already, so only the hard term's share of the shift applies.
    """
    r = max(1, round(batch_size * config.group_fraction)) / batch_size
    correction = math.log((1 - share) / share) - math.log((1 - r) / r)
    if config.targets == "soft":
        correction *= config.hard_weight
    with torch.no_grad():
        model.output.bias[-1] += correction
    return correction


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

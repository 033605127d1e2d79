"""What a training run learns from: its labels (all, or a fixed hash-chosen fraction of the utterances), the
cached soft targets checked against the distillation config, and the identity of the distillation targets."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from asrdistill.config import from_dict, merge, role_section, with_flags
from asrdistill.data.features import Cmvn
from asrdistill.data.shards import FEATS_PREFIX, PDF_PREFIX, SOFT_PREFIX, ShardManifest, iter_shard, write_shard
from asrdistill.fileio import mark_done, stage_done
from asrdistill.nnet.ensemble import fingerprint, load_teachers, read_members
from asrdistill.nnet.model import FrameDNN
from asrdistill.nnet.transfer import load_transfer_sets, transfer_identity, transfer_stream
from asrdistill.results import COMBINED

if TYPE_CHECKING:
    from asrdistill.nnet.train import DistillConfig, TrainConfig

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class TrainData:
    """What one run trains on, is selected by and is distilled towards (built once by :func:`load_train_data`)."""

    cmvn: Cmvn
    feats: ShardManifest
    labels: ShardManifest  # the ``data_fraction`` subset (all of them at 1)
    dev_feats: ShardManifest
    dev_labels: ShardManifest
    num_classes: int
    input_dim: int
    passes: int  # passes over ``labels`` per epoch
    soft: ShardManifest | None  # cached soft targets
    teachers: list[FrameDNN]  # online teachers
    targets: dict  # identity of the distillation targets (see teacher_identity)
    # what the training stream reads: ``feats``, ``labels`` and ``soft``, followed by the ``train.transfer`` sets'
    # (asrdistill.nnet.transfer); the other fields stay the training set's (monitor sample, subset, identity)
    stream_feats: ShardManifest
    stream_labels: ShardManifest
    stream_soft: ShardManifest | None


def load_train_data(config: TrainConfig, out_dir: Path, device: torch.device, rank: int, world_size: int) -> TrainData:
    """Open a run's manifests, write its label subset (rank 0 first) and load its soft targets or teachers."""
    cmvn = Cmvn.load(config.cmvn)
    feats = ShardManifest.load(config.train_feats, FEATS_PREFIX)
    full = ShardManifest.load(config.train_labels, PDF_PREFIX)
    if not config.dev_feats or not config.dev_labels:
        raise ValueError("train: dev_feats and dev_labels are required (model selection uses dev frame accuracy)")
    dev_feats = ShardManifest.load(config.dev_feats, FEATS_PREFIX)
    dev_labels = ShardManifest.load(config.dev_labels, PDF_PREFIX)
    num_classes = label_classes(config, full)
    input_dim = config.frames.window * cmvn.dim
    full_frames = full.num_frames
    labels = rank_zero_first(lambda: subset_labels(full, config.data_fraction, out_dir / "subset"), rank, world_size)
    passes = config.fraction_passes or max(1, round(full_frames / labels.num_frames))
    if passes > 1:
        log.info(
            "data_fraction=%g: an epoch is %d passes over the subset (%d frames; the full data has %d)",
            config.data_fraction,
            passes,
            passes * labels.num_frames,
            full_frames,
        )
    soft = None
    teachers: list[FrameDNN] = []
    if config.distill is not None and config.distill.source == "cached":
        soft = soft_manifest(config.distill, num_classes)
    elif config.distill is not None:
        teachers = load_teachers(config.distill.teachers, device, expect=(input_dim, num_classes))
    targets = teacher_identity(config, soft, teachers)
    stream = feats, labels, soft
    if config.transfer:
        sets = load_transfer_sets(config, feats, dev_feats, soft, teachers, num_classes)
        stream = transfer_stream(feats, labels, soft, sets, out_dir / "stream", write=rank == 0)
        targets["transfer"] = transfer_identity(sets)
        log.info(
            "train.transfer: %d teacher-labelled frames besides the %d of the training set",
            stream[1].num_frames - labels.num_frames,
            labels.num_frames,
        )
    return TrainData(
        cmvn, feats, labels, dev_feats, dev_labels, num_classes, input_dim, passes, soft, teachers, targets, *stream
    )


def rank_zero_first(make: Callable[[], T], rank: int, world_size: int) -> T:
    """``make()`` on rank 0 (which writes what it makes) while the other ranks wait, then on the others (which
    find it written)."""
    if rank == 0:
        made = make()
    if world_size > 1:
        dist.barrier()
        if rank != 0:
            made = make()
    return made


def _utterance_selected(utt: str, fraction: float) -> bool:
    """Fixed pseudo-random choice of an utterance, independent of seed, rank and shard layout."""
    h = int.from_bytes(hashlib.sha1(utt.encode("utf-8")).digest()[:8], "big")
    return h < fraction * 2.0**64


class EmptySubset(ValueError):
    """A fraction of the utterances that selects none of them."""


def subset_labels(labels: ShardManifest, fraction: float, out_dir: Path) -> ShardManifest:
    """Label shards keeping only a ``fraction`` of utterances: the others get empty ``pdf`` (readers skip them)."""
    if fraction >= 1.0:
        return labels
    inputs = {"labels": [labels.path, labels.shard_paths], "fraction": fraction}
    if stage_done(out_dir, "subset", inputs) is not None:
        return ShardManifest.load(out_dir, PDF_PREFIX)
    subset = ShardManifest(
        out_dir, PDF_PREFIX, meta={**labels.meta, "subset_of": str(labels.path), "data_fraction": fraction}
    )
    empty = np.zeros(0, dtype=np.int32)
    for path, shard in zip(labels.shard_paths, labels.shards):
        samples = (
            (utt, {"pdf": s["pdf"] if _utterance_selected(utt, fraction) else empty}) for utt, s in iter_shard(path)
        )
        subset.shards.append(write_shard(out_dir / shard.name, samples))
    if subset.num_frames == 0:
        raise EmptySubset(f"{labels.path}: data_fraction={fraction} selects no labelled utterance")
    subset.save()
    mark_done(out_dir, "subset", {"source": str(labels.path), "fraction": fraction}, inputs)
    log.info("data_fraction=%g: %d of %d labelled frames", fraction, subset.num_frames, labels.num_frames)
    return subset


def label_classes(config: TrainConfig, labels: ShardManifest) -> int:
    if config.num_classes > 0:
        return config.num_classes
    n = labels.meta.get("num_pdfs")
    if n is None:
        raise ValueError(f"{labels.path}: meta has no 'num_pdfs'; set train.num_classes")
    return int(n)


def soft_manifest(distill: DistillConfig, num_classes: int) -> ShardManifest:
    soft = ShardManifest.load(distill.soft_targets, SOFT_PREFIX)
    t, c = soft.meta.get("temperature"), soft.meta.get("num_classes")
    if t is None or not math.isclose(float(t), distill.temperature):
        raise ValueError(
            f"{soft.path}: soft targets were computed at temperature {t}, distill.temperature is {distill.temperature}"
        )
    if c is not None and int(c) != num_classes:
        raise ValueError(f"{soft.path}: soft targets have {c} senones, the student {num_classes}")
    fidelity = soft.meta.get("fidelity")
    if distill.min_fidelity > 0 and (fidelity is None or float(fidelity) < distill.min_fidelity):
        told = "was not measured" if fidelity is None else f"is {100 * float(fidelity):.1f}%"
        log.warning(
            "!!! %s: the share of the exact soft loss this cache keeps %s (wanted >= %.0f%%): the student "
            "may not see the ensemble's distribution at T=%g. Rebuild it dense (ensemble.topk=0) or "
            "distill online. !!!",
            soft.path,
            told,
            100 * distill.min_fidelity,
            distill.temperature,
        )
    return soft


def teacher_identity(config: TrainConfig, soft: ShardManifest | None, teachers: Sequence[FrameDNN]) -> dict:
    """What the distillation targets were made from; a finished run is reused only if this still matches."""
    if soft is not None:
        return {k: soft.meta.get(k) for k in ("teachers_sha256", "feats_sha256", "k", "method", "temperature")}
    if teachers:
        return {"teachers_sha256": fingerprint(teachers)}
    return {}


def train_config(
    path: str | Path | None,
    role: str | None,
    overrides: Sequence[str],
    *,
    feats: str | Path,
    labels: str | Path,
    train_set: str,
    dev_set: str,
    soft: str | Path | None = None,
    online: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """One DNN run's :class:`~asrdistill.nnet.train.TrainConfig`.

    Section ``train``, refined by the role's section (``student``, ``fraction``), then ``--set``, then the typed
    ``flags`` (:func:`asrdistill.config.with_flags`; e.g. ``{"seed": 3, "distill.temperature": None}``). The data
    paths come from the feature and label roots (``<root>/<set>``, CMVN of the training set). The teachers:
    ``soft`` (cached soft targets) or ``online`` (an ensemble folder with members.txt); without either the run
    learns the hard labels, and the ``distill`` settings (YAML or flags) are dropped.
    """
    from asrdistill.nnet.train import TrainConfig

    if soft and online:
        raise ValueError("give --soft (cached soft targets) or --online (teachers run on each batch), not both")
    merged = role_section(path, "train", role, overrides)
    feats, labels = Path(feats), Path(labels)
    merged.update(
        train_feats=str(feats / train_set),
        train_labels=str(labels / train_set),
        dev_feats=str(feats / dev_set),
        dev_labels=str(labels / dev_set),
        cmvn=str(feats / train_set / "cmvn.json"),
    )
    flags = dict(flags or {})
    if soft or online:
        teacher = (
            {"source": "cached", "soft_targets": str(soft)}
            if soft
            else {"source": "online", "teachers": [str(m) for m in read_members(online)]}
        )
        merged["distill"] = merge(merged.get("distill") or {}, teacher)
    else:
        merged.pop("distill", None)
        flags = {k: v for k, v in flags.items() if not k.startswith("distill.")}
    return from_dict(TrainConfig, with_flags(merged, flags), f"{path}:train+{role or ''}")


def run_kind(config: TrainConfig, soft: ShardManifest | None = None) -> str:
    """What a run is in the results table, from its config (recorded in ``.train.done``, read by evaluation).

    ``config.kind`` if given (the recipe's ``sweep``), else: hard labels -> ``baseline``, soft targets ->
    ``student`` (``student_from_specialists`` from a generalist + specialists cache), and with
    ``data_fraction`` < 1 ``fraction_hard`` / ``fraction_soft``.
    """
    if config.kind:
        return config.kind
    if config.data_fraction < 1.0:
        return "fraction_soft" if config.distill is not None else "fraction_hard"
    if config.distill is None:
        return "baseline"
    return "student_from_specialists" if soft is not None and soft.meta.get("source") == COMBINED else "student"

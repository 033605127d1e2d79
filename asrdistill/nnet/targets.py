"""What a training run learns from: its labels (all, or a fixed hash-chosen fraction of the utterances), the
cached soft targets checked against the distillation config, and the identity of the distillation targets."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from asrdistill.data.shards import PDF_PREFIX, SOFT_PREFIX, ShardManifest, iter_shard, write_shard
from asrdistill.fileio import mark_done, stage_done
from asrdistill.nnet.ensemble import fingerprint
from asrdistill.nnet.model import FrameDNN

if TYPE_CHECKING:
    from asrdistill.nnet.train import DistillConfig, TrainConfig

log = logging.getLogger(__name__)


def _utterance_selected(utt: str, fraction: float) -> bool:
    """Fixed pseudo-random choice of an utterance, independent of seed, rank and shard layout."""
    h = int.from_bytes(hashlib.sha1(utt.encode("utf-8")).digest()[:8], "big")
    return h < fraction * 2.0**64


def _subset_labels(labels: ShardManifest, fraction: float, out_dir: Path) -> ShardManifest:
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
        raise ValueError(f"{labels.path}: data_fraction={fraction} selects no labelled utterance")
    subset.save()
    mark_done(out_dir, "subset", {"source": str(labels.path), "fraction": fraction}, inputs)
    log.info("data_fraction=%g: %d of %d labelled frames", fraction, subset.num_frames, labels.num_frames)
    return subset


def _num_classes(config: TrainConfig, labels: ShardManifest) -> int:
    if config.num_classes > 0:
        return config.num_classes
    n = labels.meta.get("num_pdfs")
    if n is None:
        raise ValueError(f"{labels.path}: meta has no 'num_pdfs'; set train.num_classes")
    return int(n)


def _soft_manifest(distill: DistillConfig, num_classes: int) -> ShardManifest:
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


def _teacher_identity(config: TrainConfig, soft: ShardManifest | None, teachers: Sequence[FrameDNN]) -> dict:
    """What the distillation targets were made from; a finished run is reused only if this still matches."""
    if soft is not None:
        return {k: soft.meta.get(k) for k in ("teachers_sha256", "feats_sha256", "k", "method", "temperature")}
    if teachers:
        return {"teachers_sha256": fingerprint(teachers)}
    return {}

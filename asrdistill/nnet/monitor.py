"""How close a training run is to an ensemble, measured each epoch (KL and top-1 agreement on fixed samples of dev
and train), against ``train.reference`` or a distilled run's own teachers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from asrdistill.data.features import Cmvn
from asrdistill.data.shards import ShardManifest
from asrdistill.nnet.ensemble import (
    fingerprint,
    frame_accuracy,
    load_teachers,
    read_members,
    reference_posteriors,
    system_checkpoints,
)
from asrdistill.nnet.model import FrameDNN
from asrdistill.nnet.targets import EmptySubset, rank_zero_first, subset_labels

if TYPE_CHECKING:
    from asrdistill.nnet.train import _Run

log = logging.getLogger(__name__)


def _reference_models(run: _Run, soft: ShardManifest | None) -> tuple[list[FrameDNN], str]:
    """The ensemble a run is measured against each epoch, and how it combines: ``train.reference`` if set, else a
    distilled run's own teachers (online: the checkpoints; cached: the ensemble folder holding the soft targets,
    if its weights are the ones the targets were made from). None for a hard-label run without a reference."""
    c = run.config
    input_dim, num_classes = run.model.input_dim, run.model.num_classes
    if c.reference:
        return load_teachers(system_checkpoints(c.reference), run.device, expect=(input_dim, num_classes)), "arithmetic"
    if run.teachers:
        return run.teachers, c.distill.method
    ensemble_dir = Path(soft.directory).parent if soft is not None else None
    if ensemble_dir is not None and (ensemble_dir / "members.txt").is_file():
        models = load_teachers(read_members(ensemble_dir), run.device, expect=(input_dim, num_classes))
        if fingerprint(models) == soft.meta.get("teachers_sha256"):
            return models, soft.meta.get("method", "arithmetic")
        log.warning(
            "%s: members.txt lists other weights than the soft targets were made from; no per-epoch "
            "agreement with the ensemble",
            ensemble_dir,
        )
    return [], ""


def monitor_sets(
    run: _Run, soft: ShardManifest | None, sets: dict[str, tuple[ShardManifest, ShardManifest]], cmvn: Cmvn
) -> dict[str, tuple[ShardManifest, ShardManifest, dict[str, Tensor]]]:
    """name -> (features, labels of a fixed sample of about ``monitor_frames`` frames, the reference's log
    posteriors there), computed once; empty when the run has no reference."""
    models, method = _reference_models(run, soft)
    if not models:
        return {}
    out = {}
    for name, (feats, labels) in sets.items():
        fraction = min(1.0, run.config.monitor_frames / max(1, labels.num_frames))
        out_dir = run.out_dir / f"monitor_{name}"
        sample = rank_zero_first(lambda: _sample_labels(labels, fraction, out_dir), run.rank, run.world_size)
        reference = reference_posteriors(
            models,
            feats,
            sample,
            cmvn,
            run.config.frames,
            method,
            run.device,
            run.bf16,
            rank=run.rank,
            world_size=run.world_size,
        )
        out[name] = (feats, sample, reference)
    log.info(
        "%s: each epoch measured against its reference ensemble (%d model(s)) on %s",
        run.out_dir,
        len(models),
        ", ".join(f"{n} ({s.num_frames} frames)" for n, (_, s, _) in out.items()),
    )
    return out


def _sample_labels(labels: ShardManifest, fraction: float, out_dir: Path) -> ShardManifest:
    """:func:`subset_labels`, or all of ``labels`` when the fraction picks no utterance (a tiny set)."""
    try:
        return subset_labels(labels, fraction, out_dir)
    except EmptySubset:  # only that: a broken shard must still fail the run
        return labels


def measure(run: _Run, monitor: dict, cmvn: Cmvn) -> dict:
    """KL to the reference and top-1 agreement with it (``<set>_kl``, ``<set>_agree``) on each monitored sample,
    and the frame accuracy on the train sample (``train_acc``: how well the run fits what it was taught)."""
    out = {}
    for name, (feats, labels, reference) in monitor.items():
        r = frame_accuracy(
            [run.model],
            feats,
            labels,
            cmvn,
            run.config.frames,
            device=run.device,
            bf16=run.bf16,
            rank=run.rank,
            world_size=run.world_size,
            reference=reference,
        )
        out.update({f"{name}_kl": r["kl"], f"{name}_agree": r["agree"]})
        if name == "train":
            out["train_acc"] = r["acc"]
    return out

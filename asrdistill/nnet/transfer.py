"""A transfer set enlarged with audio the teachers label: more of the ensemble's function for a student to match.

Distillation needs inputs, not transcripts (Hinton et al. 2015, section 2: the transfer set need not be the
labelled training set; Li et al. 2014: unlabelled audio labelled by the teacher improves a student acoustic
model). Two steps, each re-using the toolkit's own paths:

* :func:`label_transfer` (``asrdistill label-transfer``): the ensemble of ``<ensemble>/members.txt`` labels an
  extra feature set. Soft targets at each temperature are cached exactly as the training set's were
  (:func:`~asrdistill.nnet.ensemble.cache_soft_targets`, same form k and combination method, read from
  ``<ensemble>/soft_T<t>``), and ``pdf`` shards hold the ensemble's decision (argmax of its T = 1 posterior, as
  :func:`~asrdistill.nnet.ensemble.posterior_stream` gives it) so that the set streams like a labelled one; their
  manifest's meta says ``teacher_labels: true``: they are not alignments.
* :func:`transfer_stream` (``train.transfer``, ``asrdistill train --transfer DIR``): a distilled run checks each
  labelled set against its own targets (senones, teachers, temperature, cache form, features) and trains on the
  training set and the transfer sets together: ``<out>/stream/{feats,pdf,soft}.manifest.json`` list the shards of
  all of them, so an epoch covers both (``epoch_frames`` in ``metrics.jsonl``). Everything else (dev selection, the
  per-epoch agreement on a train sample) still reads the real training set. A hard-label run refuses a transfer
  set (:class:`~asrdistill.nnet.train.TrainConfig`): trained on the teachers' labels, a baseline would be a student.

Output of :func:`label_transfer` (``<out>``, e.g. ``exp/ensemble/transfer``)::

    pdf.manifest.json, pdf-NNNNNN.tar          teacher labels, aligned with the feature shards
    soft_T<t>/soft.manifest.json, soft-*.tar   soft targets at T (as exp/ensemble/soft_T<t>)
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from asrdistill.data.features import Cmvn
from asrdistill.data.frames import FrameConfig
from asrdistill.data.shards import FEATS_PREFIX, PDF_PREFIX, SOFT_PREFIX, ShardInfo, ShardManifest, write_shard
from asrdistill.fileio import mark_done, stage_done
from asrdistill.nnet.ensemble import cache_soft_targets, fingerprint, load_teachers, posterior_stream, read_members
from asrdistill.nnet.model import FrameDNN

if TYPE_CHECKING:
    from asrdistill.nnet.train import TrainConfig

__all__ = ["label_transfer", "TransferSet", "load_transfer_sets", "transfer_stream", "transfer_identity"]

log = logging.getLogger(__name__)

# what a transfer set's soft targets must share with the run's own cache to be streamed with it
_SAME_AS_TRAIN_CACHE = ("temperature", "k", "method", "num_classes", "teachers_sha256")
# and its features with the training set's (asrdistill.data.features writes them)
_SAME_AS_TRAIN_FEATS = ("dim", "frame_shift_ms", "config")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_new_audio(feats: ShardManifest, others: Sequence[ShardManifest]) -> None:
    """A transfer set must be other audio than the training and dev sets (the same utterance ids are not)."""
    keys = set(feats.keys)
    for other in others:
        shared = keys.intersection(other.keys)
        if shared:
            raise ValueError(
                f"{feats.path}: {len(shared)} utterance(s) also in {other.path} (e.g. {sorted(shared)[0]}): a "
                "transfer set must be other audio than the training and dev sets"
            )


def _train_caches(ensemble_dir: Path, temperatures: Sequence[float]) -> dict[float, ShardManifest]:
    """The ensemble's soft-target caches of the training set at each temperature (their form is copied)."""
    out = {}
    for t in temperatures:
        folder = ensemble_dir / f"soft_T{float(t):g}"
        if not ShardManifest.manifest_path(folder, SOFT_PREFIX).is_file():
            raise FileNotFoundError(
                f"{folder}: the ensemble has no soft targets at T={float(t):g} for the training set; cache them "
                "first (asrdistill ensemble --temperatures ...)"
            )
        out[float(t)] = ShardManifest.load(folder, SOFT_PREFIX)
    return out


def label_transfer(
    ensemble_dir: str | Path,
    feats: ShardManifest,
    cmvn: Cmvn,
    frame_config: FrameConfig,
    temperatures: Sequence[float],
    out_dir: str | Path,
    exclude: Sequence[ShardManifest] = (),
    device: str | torch.device = "cpu",
    force: bool = False,
) -> ShardManifest:
    """The ensemble's soft targets at ``temperatures`` and its decisions (``pdf``) on ``feats``, under ``out_dir``.

    ``cmvn`` is the training set's; ``exclude`` the sets ``feats`` must share no utterance with (train, dev).
    Each output is reused when made from the same teachers and features. Returns the teacher labels' manifest.
    """
    ensemble_dir, out_dir = Path(ensemble_dir), Path(out_dir)
    _check_new_audio(feats, exclude)
    caches = _train_caches(ensemble_dir, temperatures)
    teachers = load_teachers(read_members(ensemble_dir), device)
    sha = fingerprint(teachers)
    for cache in caches.values():
        if cache.meta.get("teachers_sha256") != sha:
            raise ValueError(
                f"{ensemble_dir / 'members.txt'}: lists other weights than {cache.path} was made from; rebuild the "
                "ensemble (asrdistill ensemble) before labelling a transfer set with it"
            )
    methods = {c.meta.get("method", "arithmetic") for c in caches.values()}
    if len(methods) != 1:
        raise ValueError(f"{ensemble_dir}: its soft-target caches combine the members differently: {sorted(methods)}")
    (method,) = methods
    cache_soft_targets(
        teachers,
        feats,
        cmvn,
        frame_config,
        {t: out_dir / f"soft_T{t:g}" for t in caches},
        {t: int(c.meta.get("k", 0)) for t, c in caches.items()},
        method,
        device,
        force,
        extra_meta={t: {"teacher_labels": True} for t in caches},
    )
    return _teacher_labels(teachers, feats, cmvn, frame_config, method, ensemble_dir, out_dir, device, force)


@torch.no_grad()
def _teacher_labels(
    teachers: Sequence[FrameDNN],
    feats: ShardManifest,
    cmvn: Cmvn,
    frame_config: FrameConfig,
    method: str,
    ensemble_dir: Path,
    out_dir: Path,
    device: str | torch.device,
    force: bool,
) -> ShardManifest:
    """``pdf`` shards aligned with ``feats``: the ensemble's most probable senone at T = 1 on every frame."""
    meta = {
        "teacher_labels": True,
        "labels": "the teacher ensemble's decision (argmax of its T=1 posterior), not an alignment",
        "num_pdfs": teachers[0].num_classes,
        "num_teachers": len(teachers),
        "teachers_sha256": fingerprint(teachers),
        "method": method,
        "ensemble": os.path.relpath(ensemble_dir, out_dir),
        "feats": os.path.relpath(feats.directory, out_dir),  # relative to the labels' folder
        "feats_sha256": _sha256(feats.path),
        "context": [frame_config.left, frame_config.right],
    }
    if stage_done(out_dir, "teacher_labels", meta, force) is not None:
        return ShardManifest.load(out_dir, PDF_PREFIX)
    manifest = ShardManifest(out_dir, PDF_PREFIX, meta=meta)
    bf16 = torch.device(device).type == "cuda"  # as the soft targets are computed
    for index, shard in enumerate(feats.shards):
        one = ShardManifest(feats.directory, feats.prefix, [shard], feats.meta)
        samples = [
            (utt, {"pdf": logp.argmax(-1).to(torch.int32).cpu().numpy()})
            for utt, logp, _ in posterior_stream(
                teachers, one, cmvn, frame_config, method=method, device=device, bf16=bf16
            )
        ]
        if [u for u, _ in samples] != shard.keys:
            raise ValueError(f"{feats.directory / shard.name}: utterances differ from {feats.path}")
        manifest.shards.append(write_shard(out_dir / manifest.shard_name(index), samples))
    manifest.save()
    mark_done(out_dir, "teacher_labels", meta, meta)
    log.info("%s: teacher labels for %d frames of %s", out_dir, manifest.num_frames, feats.path)
    return manifest


@dataclass
class TransferSet:
    """One labelled transfer set as a run streams it."""

    feats: ShardManifest
    labels: ShardManifest  # teacher labels (pdf)
    soft: ShardManifest | None  # its soft targets at the run's temperature (cached distillation), else None


def load_transfer_sets(
    config: TrainConfig,
    train_feats: ShardManifest,
    dev_feats: ShardManifest,
    soft: ShardManifest | None,
    teachers: Sequence[FrameDNN],
    num_classes: int,
) -> list[TransferSet]:
    """Open ``config.transfer``'s folders and check each against the run: labelled by its own teachers (those of
    its soft targets, or its online teachers) with its senones, from features like the training set's that share no
    utterance with train or dev, and (cached) soft targets of the same temperature, form and method as its own."""
    want = soft.meta.get("teachers_sha256") if soft is not None else fingerprint(teachers)
    sets = []
    for folder in map(Path, config.transfer):
        labels = ShardManifest.load(folder, PDF_PREFIX)
        meta = labels.meta
        if not meta.get("teacher_labels"):
            raise ValueError(f"{labels.path}: not teacher labels (asrdistill label-transfer writes them)")
        if int(meta.get("num_pdfs", -1)) != num_classes:
            raise ValueError(f"{labels.path}: {meta.get('num_pdfs')} senones, the run has {num_classes}")
        if meta.get("teachers_sha256") != want:
            raise ValueError(f"{labels.path}: labelled by other teachers than this run's targets come from")
        feats = ShardManifest.load(folder / meta["feats"], FEATS_PREFIX)
        if _sha256(feats.path) != meta.get("feats_sha256"):
            raise ValueError(f"{feats.path}: changed since {labels.path} was made; label the set again")
        for key in _SAME_AS_TRAIN_FEATS:
            if feats.meta.get(key) != train_feats.meta.get(key):
                raise ValueError(
                    f"{feats.path}: features with {key} {feats.meta.get(key)!r}, {train_feats.path} has "
                    f"{train_feats.meta.get(key)!r} (extract both with the same settings)"
                )
        _check_new_audio(feats, [train_feats, dev_feats])
        set_soft = None
        if soft is not None:
            set_soft = ShardManifest.load(folder / f"soft_T{config.distill.temperature:g}", SOFT_PREFIX)
            for key in _SAME_AS_TRAIN_CACHE:
                if set_soft.meta.get(key) != soft.meta.get(key):
                    raise ValueError(
                        f"{set_soft.path}: {key} is {set_soft.meta.get(key)!r}, the run's soft targets "
                        f"({soft.path}) have {soft.meta.get(key)!r}"
                    )
        sets.append(TransferSet(feats, labels, set_soft))
    return sets


def transfer_stream(
    feats: ShardManifest,
    labels: ShardManifest,
    soft: ShardManifest | None,
    sets: Sequence[TransferSet],
    out_dir: Path,
    write: bool = True,
) -> tuple[ShardManifest, ShardManifest, ShardManifest | None]:
    """The (features, labels, soft targets) manifests of the training set followed by the transfer sets, shards
    named relative to ``out_dir`` (where they are saved if ``write``: what the run trained on)."""
    parts = [(feats, labels, soft)] + [(s.feats, s.labels, s.soft) for s in sets]
    out: list[ShardManifest | None] = []
    for i, prefix in enumerate((FEATS_PREFIX, PDF_PREFIX, SOFT_PREFIX)):
        members = [p[i] for p in parts]
        if members[0] is None:
            out.append(None)
            continue
        combined = ShardManifest(out_dir, prefix, meta={**members[0].meta, "sets": [str(m.path) for m in members]})
        for m in members:
            combined.shards += [
                ShardInfo(os.path.relpath(m.directory / s.name, out_dir), s.keys, s.num_frames) for s in m.shards
            ]
        if write:
            combined.save()
        out.append(combined)
    return out[0], out[1], out[2]


def transfer_identity(sets: Sequence[TransferSet]) -> list[dict]:
    """What the transfer sets were made from: part of a run's distillation targets (a changed set redoes it)."""
    return [
        {
            "labels": str(s.labels.directory),
            "teachers_sha256": s.labels.meta.get("teachers_sha256"),
            "feats_sha256": s.labels.meta.get("feats_sha256"),
            "frames": s.labels.num_frames,
        }
        for s in sets
    ]

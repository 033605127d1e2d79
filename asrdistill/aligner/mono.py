"""Flat-start monophone GMM-HMM training (Kaldi ``train_mono.sh``), the first aligner stage.

Picks the shortest ``subset_utts`` utterances, fits the feature transform,
starts every pdf at the global mean/variance, spreads frames equally over each
transcript's states, then runs the shared loop (:func:`asrdistill.aligner.hmm.train_gmm_hmm`).

    model = train_mono(feats_manifest, text, lang, exp_dir, MonoConfig(...))   # -> exp_dir/final.pt
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from asrdistill.aligner.gmm import DiagGmmSet
from asrdistill.aligner.hmm import (
    FeatureTransform,
    HmmModel,
    LoopConfig,
    ShardPass,
    ShardRunner,
    UttAlignment,
    prepare_transcripts,
    save_trained,
    shard_jobs,
    train_gmm_hmm,
)
from asrdistill.aligner.topology import Topology
from asrdistill.aligner.utt_graph import MonophonePdfs, Transcript
from asrdistill.config import result_settings, to_dict
from asrdistill.data.lang import SIL, Lang
from asrdistill.data.shards import ShardManifest, iter_shard
from asrdistill.fileio import mark_done, stage_done
from asrdistill.logs import progress

__all__ = ["MonoConfig", "train_mono"]

log = logging.getLogger(__name__)


@dataclass
class MonoConfig(LoopConfig):
    """Flat-start monophone training (section ``mono``)."""

    subset_utts: int | None = 1000  # train on the shortest N utterances (None: all)
    states: int = 3
    silence_states: int = 5  # SIL and SPN (Kaldi's default)
    use_deltas: bool = True  # +delta +delta-delta (120 dims from 40)
    initial_self_loop: float = 0.75


def _utt_frames(feats: ShardManifest) -> dict[str, int]:
    out: dict[str, int] = {}
    for path in progress(feats.shard_paths, desc="scan features", unit="shard", leave=False):
        for utt, s in iter_shard(path):
            out[utt] = int(s["feats"].shape[0])
    return out


def train_mono(
    feats: ShardManifest,
    text: Mapping[str, str],
    lang: Lang,
    exp_dir: str | Path,
    config: MonoConfig = MonoConfig(),
    force: bool = False,
) -> HmmModel:
    """Flat-start monophone training on the shortest ``config.subset_utts`` utterances.

    Writes ``<exp_dir>/final.pt`` (:class:`HmmModel`), ``topo.json``,
    ``log/train.jsonl``, ``log/train.png``, ``skipped.tsv`` (utt -> reason:
    no usable transcript, or too few frames for the flat start or the last
    realignment; the others are trained on) and the ``.mono.done`` marker.
    """
    exp_dir = Path(exp_dir)
    inputs = {
        "config": result_settings(config),
        "feats": [feats.path, feats.shard_paths],
        "text": dict(text),
        "lang": lang,
    }
    if stage_done(exp_dir, "mono", inputs, force) is not None:
        return HmmModel.load(exp_dir / "final.pt")
    if config.silence_states < 1 or config.states < 1:
        raise ValueError("mono: states and silence_states must be >= 1")
    t0 = time.time()
    seqs, skipped = prepare_transcripts(text, lang)
    seqs = _shortest_utts(feats, seqs, config.subset_utts)
    model = _flat_start_model(feats, set(seqs), lang, config)
    init_ali = _equal_alignment(model, feats, seqs, config, skipped)
    loop_cfg = LoopConfig(**{k: getattr(config, k) for k in LoopConfig.__dataclass_fields__})
    model, ali, lost = train_gmm_hmm(
        model, feats, {u: seqs[u] for u in init_ali}, loop_cfg, exp_dir, alignment=init_ali
    )
    skipped.update(lost)
    save_trained(model, exp_dir, skipped)
    mark_done(
        exp_dir,
        "mono",
        {
            "config": to_dict(config),
            "num_utts": len(ali),
            "skipped": len(skipped),
            "seconds": round(time.time() - t0, 1),
        },
        inputs,
    )
    log.info(
        "monophone training done in %.1f s: %d Gaussians, %d pdfs, %d utterance(s) skipped%s",
        time.time() - t0,
        model.gmm.num_gauss,
        model.num_pdfs,
        len(skipped),
        f" (reasons in {exp_dir / 'skipped.tsv'})" if skipped else "",
    )
    return model


def _shortest_utts(
    feats: ShardManifest, seqs: Mapping[str, Transcript], subset_utts: int | None
) -> dict[str, Transcript]:
    """The ``subset_utts`` shortest utterances with features and a transcript (all with ``None``).

    Short utterances first, as Kaldi's ``utils/subset_data_dir.sh --shortest``:
    a flat start spreads frames evenly, which is least wrong on short ones.
    """
    frames = _utt_frames(feats)
    candidates = sorted((n, u) for u, n in frames.items() if u in seqs)
    if subset_utts is not None:
        candidates = candidates[:subset_utts]
    if not candidates:
        raise ValueError(f"{feats.path}: no utterance has both features and a usable transcript")
    chosen = {u for _, u in candidates}
    log.info("monophone flat start on %d utterances (%.2f h)", len(chosen), sum(n for n, _ in candidates) / 360000)
    return {u: seqs[u] for u in chosen}


def _flat_start_model(feats: ShardManifest, chosen: set[str], lang: Lang, config: MonoConfig) -> HmmModel:
    """The model before any training: every pdf one Gaussian at the global mean and variance of ``chosen``."""
    transform = FeatureTransform.fit(
        (s["feats"] for p in feats.shard_paths for u, s in iter_shard(p) if u in chosen), config.use_deltas
    )
    topology = Topology.uniform(
        lang.num_phones,
        config.states,
        config.silence_states,
        (lang.phone_id[SIL], lang.phone_id["SPN"]),
        config.initial_self_loop,
    )
    pdfs = MonophonePdfs.from_topology(topology)
    d = transform.dim
    # zero and one after normalisation (deltas near zero)
    gmm = DiagGmmSet.single(torch.zeros(pdfs.num_pdfs, d), torch.ones(pdfs.num_pdfs, d))
    return HmmModel(gmm, topology, transform, None, {"config": to_dict(config), "stage": "mono"})


def _equal_alignment(
    model: HmmModel, feats: ShardManifest, seqs: Mapping[str, Transcript], config: MonoConfig, skipped: dict[str, str]
) -> dict[str, UttAlignment]:
    """Frames spread equally over each transcript's states (Kaldi ``align-equal-compiled``): the loop's start.

    Utterances too short for it are added to ``skipped``.
    """
    init_ali: dict[str, UttAlignment] = {}
    with ShardRunner(config.nj, config.device) as runner:
        flat_start = ShardPass(
            equal=True, optional_prob=config.optional_silence_prob, boundary_silence=config.boundary_silence
        )
        for res in runner.map(shard_jobs(feats, seqs, config.nj), model, None, "equal align", flat_start):
            init_ali.update(res.alignments)
            skipped.update(res.skipped)
    return init_ali

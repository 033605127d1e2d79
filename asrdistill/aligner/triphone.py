"""Tied-state triphone GMM-HMM training (Kaldi ``train_deltas.sh`` / ``train_lda_mllt.sh``).

Steps: triphone statistics from a previous alignment grow the decision tree
(:func:`asrdistill.aligner.tree.build_tree`); each senone starts as the single
Gaussian of its pooled tree statistics; the previous alignment, mapped
through the tree, is the first alignment (Kaldi ``convert-ali``); then the
shared re-estimation loop (:func:`asrdistill.aligner.hmm.train_gmm_hmm`) runs
with mixture growth and, on ``realign_iters``, re-alignment against each
utterance's full training graph: pronunciation and silence are decided
afresh by the current model every time, with exact triphone contexts.

``feature_transform``: ``deltas`` (tri1) or ``lda_mllt`` (tri2b): spliced
frames projected by LDA (classes: the previous alignment's senones where it
has pdf shards, else its monophone states) and rotated by MLLT on
``mllt_iters`` (:mod:`asrdistill.aligner.lda_mllt`); the tree is grown on the
LDA features, as in Kaldi.

    tri = train_triphone(mono_ali, feats, text, lang, mono_model, "exp/tri", TreeConfig(), TriConfig())
    res = align_subset(feats_dev, text_dev, lang, tri, "exp/tri_ali/dev", AlignConfig())
    res.pdf   # pdf-NNNNNN.tar shards aligned with the feature shards
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from asrdistill.aligner.gmm import DiagGmmSet
from asrdistill.aligner.hmm import (
    FeatureTransform,
    HmmModel,
    LoopConfig,
    UttAlignment,
    prepare_transcripts,
    save_trained,
    train_gmm_hmm,
)
from asrdistill.aligner.lda_mllt import LdaStats, estimate_lda
from asrdistill.aligner.stats import frame_contexts
from asrdistill.aligner.tree import ContextTree, TreeConfig, build_tree, pdf_stats
from asrdistill.aligner.utt_graph import MonophonePdfs, Transcript
from asrdistill.config import result_settings, to_dict
from asrdistill.data.lang import Lang
from asrdistill.data.shards import PDF_PREFIX, ShardManifest, iter_aligned, iter_shard
from asrdistill.fileio import mark_done, read_skipped, stage_done

__all__ = ["TriConfig", "read_alignment", "train_triphone", "fit_lda"]

log = logging.getLogger(__name__)


def _tri_realign_iters() -> list[int]:
    return [10, 20, 30]


def _tri_mllt_iters() -> list[int]:
    return [2, 4, 6, 12]


@dataclass
class TriConfig(LoopConfig):
    """Tied-triphone training (section ``tri``); Kaldi ``train_deltas.sh`` schedule, ~8 Gaussians per senone."""

    num_iters: int = 35
    max_gaussians: int = 8000
    max_iter_inc: int = 25
    realign_iters: list[int] = field(default_factory=_tri_realign_iters)
    feature_transform: str = "deltas"  # deltas (Kaldi tri1) | lda_mllt (tri2b: spliced frames, LDA, MLLT)
    splice: int = 4  # lda_mllt: +-frames spliced
    lda_dim: int = 40  # lda_mllt: output dimension
    mllt_iters: list[int] = field(default_factory=_tri_mllt_iters)  # lda_mllt: MLLT re-estimation


def read_alignment(ali: ShardManifest, tree: ContextTree | None = None) -> dict[str, UttAlignment]:
    """Phone-level alignment shards -> utt -> :class:`UttAlignment`; pdfs mapped through ``tree`` (else -1).

    Utterances with empty arrays (not aligned) are left out. The tree is
    walked once per shard, for all its frames together: once per utterance
    it took minutes on 5 h with a 2,500-leaf tree.
    """
    out: dict[str, UttAlignment] = {}
    for path in ali.shard_paths:
        shard = [(utt, s["phone"].astype(np.int32), s["state"].astype(np.int32)) for utt, s in iter_shard(path)]
        shard = [(utt, phone, state) for utt, phone, state in shard if phone.size]
        if not shard:
            continue
        ends = np.cumsum([p.size for _, p, _ in shard])
        if tree is not None:
            ctx = [np.concatenate(parts) for parts in zip(*(frame_contexts(p, st) for _, p, st in shard))]
            pdfs = tree.pdfs(*ctx).astype(np.int32)
        else:
            pdfs = np.full(ends[-1], -1, dtype=np.int32)
        for (utt, phone, state), pdf in zip(shard, np.split(pdfs, ends[:-1])):
            out[utt] = UttAlignment(pdf, phone, state)
    return out


def fit_lda(
    ali: ShardManifest, feats: ShardManifest, lang: Lang, prev: HmmModel, config: TriConfig
) -> FeatureTransform:
    """Spliced-frame LDA transform from the alignment ``ali`` (silence frames left out, as Kaldi does).

    Classes are the senones of ``ali``'s pdf shards when the folder has them
    (a triphone alignment), else its (phone, state) pairs.
    """
    base = FeatureTransform(prev.transform.mean, prev.transform.var, use_deltas=False, splice=config.splice)
    has_pdf = ShardManifest.manifest_path(ali.directory, PDF_PREFIX).is_file()
    pdf_dir = ShardManifest.load(ali.directory, PDF_PREFIX) if has_pdf else None
    mono_pdfs = MonophonePdfs.from_topology(prev.topology)
    num_classes = int(pdf_dir.meta["num_pdfs"]) if pdf_dir is not None else mono_pdfs.num_pdfs
    stats = LdaStats.zeros(base.base_dim, num_classes)
    silence = np.array([lang.phone_id[p] for p in lang.silence_phones])
    paths = zip(feats.shard_paths, ali.shard_paths, pdf_dir.shard_paths if pdf_dir is not None else ali.shard_paths)
    for fpath, apath, ppath in paths:
        for utt, s in iter_aligned([fpath, apath] + ([ppath] if pdf_dir is not None else [])):
            if s["phone"].size == 0:
                continue
            cls = s["pdf"] if pdf_dir is not None else mono_pdfs.pdfs(0, s["phone"], 0, s["state"])
            keep = ~np.isin(s["phone"], silence)
            stats.add(base.apply(s["feats"]).numpy()[keep], np.asarray(cls, dtype=np.int64)[keep])
    log.info(
        "LDA: %d frames, %d classes with data, %d -> %d dims",
        int(stats.count.sum()),
        int((stats.count > 0).sum()),
        base.base_dim,
        config.lda_dim,
    )
    return dataclasses.replace(base, matrix=estimate_lda(stats, config.lda_dim))


def _initial_gmm(tree: ContextTree, counts: np.ndarray, s1: np.ndarray, s2: np.ndarray, var_floor: float) -> DiagGmmSet:
    """One Gaussian per senone from its tree statistics; senones without data get the global Gaussian."""
    total = counts.sum()
    gmean = s1.sum(0) / total
    gvar = np.maximum(s2.sum(0) / total - gmean**2, 1e-10)
    n = np.maximum(counts, 1e-10)[:, None]
    mean = np.where(counts[:, None] > 0, s1 / n, gmean)
    var = np.where(counts[:, None] > 0, np.maximum(s2 / n - (s1 / n) ** 2, var_floor * gvar), gvar)
    return DiagGmmSet.single(torch.from_numpy(mean).float(), torch.from_numpy(var).float())


def _unaligned(text: Mapping[str, str], alignment: Mapping[str, UttAlignment], prior: ShardManifest) -> dict[str, str]:
    """Transcribed utterances the prior alignment lacks -> reason, with the prior pass's own reason when it gave one."""
    reasons = read_skipped(prior.directory / "skipped.tsv")
    return {
        u: f"not aligned in {prior.directory}" + (f": {reasons[u]}" if reasons.get(u) else "")
        for u in text
        if u not in alignment
    }


def train_triphone(
    mono_ali: ShardManifest,
    feats: ShardManifest,
    text: Mapping[str, str],
    lang: Lang,
    mono: HmmModel,
    exp_dir: str | Path,
    tree_config: TreeConfig = TreeConfig(),
    config: TriConfig = TriConfig(),
    force: bool = False,
) -> HmmModel:
    """Build the tree from ``mono_ali`` (aligned with ``feats``) and train the tied-triphone GMM-HMM.

    ``mono_ali`` is any earlier phone-level alignment (the monophone one for
    tri1, a triphone one for an LDA+MLLT stage); ``mono`` gives the feature
    normalisation and topology. Utterances of ``text`` without that alignment
    are left out and listed, with those the loop's last realignment could
    not align, in ``skipped.tsv``.
    Writes to ``exp_dir``: ``tree.json``, ``tree_info.json``, ``final.pt``,
    ``topo.json`` (self-loops from the final alignment), ``skipped.tsv``,
    ``log/train.jsonl``, ``log/train.png`` and the ``.tri.done`` marker; a
    finished ``exp_dir`` is loaded, not retrained, unless ``force``.
    """
    exp_dir = Path(exp_dir)
    inputs = {
        "config": result_settings(config),
        "tree_config": result_settings(tree_config),
        "mono_ali": [mono_ali.path, mono_ali.shard_paths],
        "feats": [feats.path, feats.shard_paths],
        "text": dict(text),
        "lang": lang,
        "mono": mono.to_dict(),
    }
    if stage_done(exp_dir, "tri", inputs, force) is not None:
        return HmmModel.load(exp_dir / "final.pt")
    t0 = time.time()
    transform, config = _stage_transform(mono_ali, feats, lang, mono, config)
    model, counts = _tree_model(mono_ali, feats, lang, mono, transform, exp_dir, tree_config, config)
    seqs, alignment, skipped = _training_set(text, mono_ali, model.tree, lang)
    log.info(
        "triphone training: %d senones (%d with data), %d utterances, up to %d Gaussians",
        model.tree.num_pdfs,
        int((counts > 0).sum()),
        len(seqs),
        config.max_gaussians,
    )
    model, final_ali, lost = train_gmm_hmm(model, feats, seqs, config, exp_dir, alignment=alignment)
    skipped.update(lost)
    model.meta["num_utts"] = len(final_ali)
    save_trained(model, exp_dir, skipped)
    mark_done(
        exp_dir,
        "tri",
        {
            "config": to_dict(config),
            "tree_config": to_dict(tree_config),
            "num_pdfs": model.tree.num_pdfs,
            "num_gauss": model.gmm.num_gauss,
            "skipped": len(skipped),
            "seconds": round(time.time() - t0, 1),
        },
        inputs,
    )
    log.info(
        "triphone training done in %.1f s: %d senones, %d Gaussians, %d utterances; %d skipped%s",
        time.time() - t0,
        model.tree.num_pdfs,
        model.gmm.num_gauss,
        len(final_ali),
        len(skipped),
        f" (reasons in {exp_dir / 'skipped.tsv'})" if skipped else "",
    )
    return model


def _stage_transform(
    mono_ali: ShardManifest, feats: ShardManifest, lang: Lang, mono: HmmModel, config: TriConfig
) -> tuple[FeatureTransform, TriConfig]:
    """The stage's features (the previous model's deltas, or a new LDA) and its config (no MLLT on deltas)."""
    if config.feature_transform == "deltas":
        transform = mono.transform
    elif config.feature_transform == "lda_mllt":
        transform = fit_lda(mono_ali, feats, lang, mono, config)
    else:
        raise ValueError(f"tri.feature_transform must be 'deltas' or 'lda_mllt', got {config.feature_transform!r}")
    if config.feature_transform == "deltas":
        config = dataclasses.replace(config, mllt_iters=[])
    return transform, config


def _tree_model(
    mono_ali: ShardManifest,
    feats: ShardManifest,
    lang: Lang,
    mono: HmmModel,
    transform: FeatureTransform,
    exp_dir: Path,
    tree_config: TreeConfig,
    config: TriConfig,
) -> tuple[HmmModel, np.ndarray]:
    """The tree (written to ``exp_dir``) and the starting model: one Gaussian per senone; also the senone counts.

    The tree's statistics are taken on the stage's own features, so that an
    LDA+MLLT stage splits on what its Gaussians will see.
    """

    def gmm_features(utt: str, x: np.ndarray) -> np.ndarray:
        return transform.apply(x).numpy()

    tree, stats = build_tree(mono_ali, feats, lang, mono.topology, tree_config, exp_dir, gmm_features)
    counts, s1, s2 = pdf_stats(tree, stats)
    gmm = _initial_gmm(tree, counts, s1, s2, config.var_floor)
    meta = {"stage": "tri", "config": to_dict(config), "tree_config": to_dict(tree_config)}
    return HmmModel(gmm, mono.topology, transform, tree, meta), counts


def _training_set(
    text: Mapping[str, str], mono_ali: ShardManifest, tree: ContextTree, lang: Lang
) -> tuple[dict[str, Transcript], dict[str, UttAlignment], dict[str, str]]:
    """Transcripts and starting alignment (mapped through ``tree``) of the utterances the loop trains on.

    Also the others, with the reason: not in the prior alignment, or no usable transcript.
    """
    alignment = read_alignment(mono_ali, tree)
    skipped = _unaligned(text, alignment, mono_ali)
    seqs, bad = prepare_transcripts({u: text[u] for u in alignment if u in text}, lang)
    skipped.update(bad)
    alignment = {u: a for u, a in alignment.items() if u in seqs}
    return seqs, alignment, skipped

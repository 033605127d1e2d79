"""Tied-state triphone GMM-HMM training (Kaldi ``train_deltas.sh``) and senone labels for every subset.

Steps: triphone statistics from the monophone alignment grow the decision tree
(:func:`asrdistill.aligner.tree.build_tree`); each senone starts as the single
Gaussian of its pooled tree statistics; the monophone alignment, mapped
through the tree, is the first alignment (Kaldi ``convert-ali``); then the
shared re-estimation loop (:func:`asrdistill.aligner.hmm.train_gmm_hmm`) runs
with mixture growth and re-alignment on a schedule.

Triphone contexts must be the phones actually spoken, including whether an
optional silence was taken; a linear graph with optional silence cannot give
both variants their own contexts. So training graphs use the phone sequence
realised by the previous alignment (no optional phones), and
:func:`align_triphone` aligns in two passes when no earlier alignment is
given: transcripts with optional silence first, then the realised sequences
with exact contexts.

    tri = train_triphone(mono_ali, feats, text, lang, mono_model, "exp/tri", TreeConfig(), TriConfig())
    res = align_triphone(feats_dev, text_dev, lang, tri, "exp/tri_ali/dev", AlignConfig())
    res.pdf   # pdf-NNNNNN.tar shards aligned with the feature shards
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from asrdistill.aligner.align import AlignConfig, AlignResult, align_subset
from asrdistill.aligner.gmm import DiagGmmSet
from asrdistill.aligner.hmm import HmmModel, LoopConfig, PhoneSeq, UttAlignment, plot_convergence, train_gmm_hmm
from asrdistill.aligner.stats import frame_contexts, instance_starts
from asrdistill.aligner.tree import ContextTree, TreeConfig, build_tree, pdf_stats
from asrdistill.config import result_settings, to_dict
from asrdistill.fileio import clear_done, identity, is_done, mark_done, write_json_atomic
from asrdistill.data.lang import Lang
from asrdistill.data.shards import ShardManifest, iter_shard

__all__ = ["TriConfig", "read_alignment", "realised_sequences", "train_triphone", "align_triphone", "senone_counts"]

log = logging.getLogger(__name__)


def _tri_realign_iters() -> list[int]:
    return [10, 20, 30]


@dataclass
class TriConfig(LoopConfig):
    """Tied-triphone training (section ``tri``); Kaldi ``train_deltas.sh`` schedule, ~8 Gaussians per senone."""

    num_iters: int = 35
    max_gaussians: int = 8000
    max_iter_inc: int = 25
    realign_iters: list[int] = field(default_factory=_tri_realign_iters)


def read_alignment(ali: ShardManifest, tree: ContextTree | None = None) -> dict[str, UttAlignment]:
    """Phone-level alignment shards -> utt -> :class:`UttAlignment`; pdfs mapped through ``tree`` (else -1).

    Utterances with empty arrays (not aligned) are left out.
    """
    out: dict[str, UttAlignment] = {}
    for path in ali.shard_paths:
        for utt, s in iter_shard(path):
            phone, state = s["phone"].astype(np.int32), s["state"].astype(np.int32)
            if phone.size == 0:
                continue
            if tree is not None:
                l, c, r, st = frame_contexts(phone, state)
                pdf = tree.pdfs(l, c, r, st).astype(np.int32)
            else:
                pdf = np.full(phone.shape, -1, dtype=np.int32)
            out[utt] = UttAlignment(pdf, phone, state)
    return out


def realised_sequences(alignment: Mapping[str, UttAlignment]) -> dict[str, PhoneSeq]:
    """The phone sequence each alignment realised, silences included, as graphs without optional phones."""
    out = {}
    for utt, a in alignment.items():
        phones = a.phone[instance_starts(a.phone, a.state)].astype(np.int32)
        out[utt] = (phones, np.zeros(len(phones), dtype=bool))
    return out


def _initial_gmm(tree: ContextTree, counts: np.ndarray, s1: np.ndarray, s2: np.ndarray, var_floor: float) -> DiagGmmSet:
    """One Gaussian per senone from its tree statistics; senones without data get the global Gaussian."""
    total = counts.sum()
    gmean = s1.sum(0) / total
    gvar = np.maximum(s2.sum(0) / total - gmean**2, 1e-10)
    n = np.maximum(counts, 1e-10)[:, None]
    mean = np.where(counts[:, None] > 0, s1 / n, gmean)
    var = np.where(counts[:, None] > 0, np.maximum(s2 / n - (s1 / n) ** 2, var_floor * gvar), gvar)
    return DiagGmmSet.single(torch.from_numpy(mean).float(), torch.from_numpy(var).float())


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

    ``text`` is only used to report utterances without a monophone alignment.
    Writes to ``exp_dir``: ``tree.json``, ``tree_info.json``, ``final.pt``,
    ``topo.json`` (self-loops from the final alignment), ``log/train.jsonl``,
    ``log/train.png`` and the ``.tri.done`` marker; a finished ``exp_dir`` is
    loaded, not retrained, unless ``force``.
    """
    exp_dir = Path(exp_dir)
    ident = identity(result_settings(config), result_settings(tree_config), mono_ali.path, mono_ali.shard_paths,
                     feats.path, feats.shard_paths, dict(text), lang, mono.to_dict())
    if is_done(exp_dir, "tri") and not force:
        if is_done(exp_dir, "tri", ident):
            log.info("%s: triphone model already trained (force to redo)", exp_dir)
            return HmmModel.load(exp_dir / "final.pt")
        log.info("%s: config or inputs changed since the triphone training; training again", exp_dir)
    clear_done(exp_dir, "tri")
    t0 = time.time()
    transform = mono.transform

    def gmm_features(utt: str, x: np.ndarray) -> np.ndarray:
        return transform.apply(x).numpy()

    tree, stats = build_tree(mono_ali, feats, lang, mono.topology, tree_config, exp_dir, gmm_features)
    counts, s1, s2 = pdf_stats(tree, stats)
    gmm = _initial_gmm(tree, counts, s1, s2, config.var_floor)
    model = HmmModel(gmm, mono.topology, transform, tree,
                     {"stage": "tri", "config": to_dict(config), "tree_config": to_dict(tree_config)})
    alignment = read_alignment(mono_ali, tree)
    missing = [u for u in text if u not in alignment]
    if missing:
        log.warning("%d transcribed utterance(s) have no monophone alignment and are not used, e.g. %s",
                    len(missing), missing[:3])
    seqs = realised_sequences(alignment)
    log.info("triphone training: %d senones (%d with data), %d utterances, up to %d Gaussians",
             tree.num_pdfs, int((counts > 0).sum()), len(seqs), config.max_gaussians)
    model, final_ali = train_gmm_hmm(model, feats, seqs, config, exp_dir, alignment=alignment)
    model.meta["num_utts"] = len(final_ali)
    model.save(exp_dir / "final.pt")
    model.topology.save(exp_dir / "topo.json")
    plot_convergence(exp_dir / "log" / "train.jsonl", exp_dir / "log" / "train.png")
    mark_done(exp_dir, "tri", {"config": to_dict(config), "tree_config": to_dict(tree_config),
                               "num_pdfs": tree.num_pdfs, "num_gauss": model.gmm.num_gauss,
                               "seconds": round(time.time() - t0, 1)}, identity=ident)
    log.info("triphone training done in %.1f s: %d senones, %d Gaussians", time.time() - t0, tree.num_pdfs,
             model.gmm.num_gauss)
    return model


def senone_counts(pdf: ShardManifest, num_pdfs: int) -> np.ndarray:
    """Frames per senone over label shards (e.g. training labels: also the hybrid decoder's priors)."""
    counts = np.zeros(num_pdfs, dtype=np.int64)
    for path in pdf.shard_paths:
        for _, s in iter_shard(path):
            if s["pdf"].size:
                counts += np.bincount(s["pdf"], minlength=num_pdfs)
    return counts


def align_triphone(
    feats: ShardManifest,
    text: Mapping[str, str],
    lang: Lang,
    model: HmmModel,
    out_dir: str | Path,
    config: AlignConfig = AlignConfig(),
    prior_ali: ShardManifest | None = None,
    force: bool = False,
) -> AlignResult:
    """Senone labels for one subset: ``out_dir/pdf-NNNNNN.tar`` and ``ali-NNNNNN.tar`` aligned with ``feats``.

    Phone sequences with exact triphone contexts come from ``prior_ali`` (an
    earlier phone-level alignment of the same subset) where it has the
    utterance, otherwise from a first pass with optional silence (written to
    ``out_dir/pass1`` and removed afterwards). Unalignable utterances get
    empty arrays and a line in ``skipped.tsv``. Also writes
    ``senone_counts.json`` (frames per senone, number of senones used).
    """
    if model.tree is None:
        raise ValueError("align_triphone needs a tree (triphone) model; use align_subset for monophones")
    out_dir = Path(out_dir)
    ident = identity(result_settings(config), feats.path, feats.shard_paths, dict(text), lang, model.to_dict(),
                     (prior_ali.path, prior_ali.shard_paths) if prior_ali is not None else None)
    if is_done(out_dir, "align", ident) and not force:
        return align_subset(feats, text, lang, model, out_dir, config, marker_identity=ident)
    t0 = time.time()
    seqs: dict[str, PhoneSeq] = {}
    if prior_ali is not None:
        seqs = realised_sequences(read_alignment(prior_ali))
    todo = {u: t for u, t in text.items() if u not in seqs}
    if todo:
        pass1_dir = out_dir / "pass1"
        first = align_subset(feats, todo, lang, model, pass1_dir, AlignConfig(**{**to_dict(config), "write_pdf": False}),
                             force=True)
        seqs.update(realised_sequences(read_alignment(first.ali)))
    res = align_subset(feats, text, lang, model, out_dir,
                       AlignConfig(**{**to_dict(config), "write_pdf": True}), seqs=seqs, force=True,
                       marker_identity=ident)
    if todo:
        shutil.rmtree(out_dir / "pass1", ignore_errors=True)
    counts = senone_counts(res.pdf, model.num_pdfs)
    write_json_atomic(out_dir / "senone_counts.json", {
        "num_pdfs": model.num_pdfs, "num_used": int((counts > 0).sum()), "counts": counts.tolist()})
    log.info("%s: %d of %d senones used, %d frames labelled in %.1f s (%d utterance(s) skipped)", out_dir,
             int((counts > 0).sum()), model.num_pdfs, res.num_frames, time.time() - t0, len(res.skipped))
    return AlignResult(res.ali, res.pdf, res.skipped, res.num_frames, time.time() - t0)

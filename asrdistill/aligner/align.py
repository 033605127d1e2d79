"""Align a whole subset with a trained GMM-HMM and write label shards aligned with the feature shards.

For feature shard ``feats-NNNNNN.tar`` this writes ``ali-NNNNNN.tar``
(``<utt>.phone.npy``, ``<utt>.state.npy``, (T,) int32) and, for a tree model
(or when asked), ``pdf-NNNNNN.tar`` (``<utt>.pdf.npy``, (T,) int32 senone ids),
with the same keys in the same order (docs/CONTRACTS.md). An utterance that
cannot be aligned (no transcript, OOV without ``<UNK>``, fewer frames than its
transcript's states, no finite path) keeps its place with empty arrays and is
listed with the reason in ``skipped.tsv``; labels never differ in length from
the features. Shards are aligned in parallel (``nj`` processes) or on a GPU.

    res = align_subset(feats_manifest, datadir.text, lang, HmmModel.load(".../final.pt"), out_dir,
                       AlignConfig(nj=2))
    res.ali, res.pdf  # ShardManifests (prefix "ali" / "pdf"), res.skipped: utt -> reason
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from tqdm import tqdm

from asrdistill.aligner.gmm import DiagGmmSet
from asrdistill.aligner.hmm import FEATS_CACHE, HmmModel, PhoneSeq, UttAlignment, shard_feats, prepare_transcripts, \
    process_shard
from asrdistill.config import result_settings, to_dict
from asrdistill.fileio import atomic_open, clear_done, identity, is_done, mark_done
from asrdistill.data.lang import Lang
from asrdistill.data.shards import ALI_PREFIX, PDF_PREFIX, ShardInfo, ShardManifest, write_shard
from asrdistill.parallel import Executor

__all__ = ["AlignConfig", "AlignResult", "align_subset"]

log = logging.getLogger(__name__)



@dataclass
class AlignConfig:
    """Alignment settings (section ``align``)."""

    optional_silence_prob: float = 0.5
    boundary_silence: bool = True
    nj: int = 2
    device: str = "cpu"
    write_pdf: bool | None = None   # None: only for tree (triphone) models
    max_cells: int = 20_000_000
    chunk_frames: int = 20_000


@dataclass
class AlignResult:
    ali: ShardManifest
    pdf: ShardManifest | None
    skipped: dict[str, str]
    num_frames: int        # frames that received labels
    seconds: float


def _label_name(feat_name: str, feats_prefix: str, prefix: str) -> str:
    if not feat_name.startswith(feats_prefix):
        raise ValueError(f"feature shard {feat_name!r} does not start with the manifest prefix {feats_prefix!r}")
    return prefix + feat_name[len(feats_prefix):]


def _align_piece(args: tuple) -> tuple[int, dict[str, UttAlignment], dict[str, str]]:
    """Worker: align some utterances of one feature shard; checks every alignment's length against the features."""
    index, shard, seqs, state, kwargs = args
    model = HmmModel(DiagGmmSet.from_state_dict(state["gmm"]), state["topology"], state["transform"], state["tree"])
    res = process_shard(shard, seqs, model, realign=True, accumulate_stats=False, **kwargs)
    feats = shard_feats(shard, cache=True)
    for utt, a in res.alignments.items():   # never write labels whose length differs from the features
        if not (a.pdf.shape[0] == a.phone.shape[0] == a.state.shape[0] == feats[utt].shape[0]):
            raise RuntimeError(f"{shard}: {utt}: alignment has {a.pdf.shape[0]} frames, features {feats[utt].shape[0]}")
    return index, res.alignments, res.skipped


def _write_labels(out_dir: Path, keys: list[str], ali_name: str, pdf_name: str | None,
                  alignments: dict[str, UttAlignment], skipped: dict[str, str]) -> tuple[ShardInfo, ShardInfo | None, int]:
    empty = np.zeros(0, dtype=np.int32)
    ali_rows, pdf_rows, frames = [], [], 0
    for utt in keys:
        a = alignments.get(utt)
        if a is None:
            ali_rows.append((utt, {"phone": empty, "state": empty}))
            pdf_rows.append((utt, {"pdf": empty}))
        else:
            frames += a.pdf.shape[0]
            ali_rows.append((utt, {"phone": a.phone.astype(np.int32), "state": a.state.astype(np.int32)}))
            pdf_rows.append((utt, {"pdf": a.pdf.astype(np.int32)}))
    ali_info = write_shard(out_dir / ali_name, ali_rows, frames_field="phone")
    pdf_info = write_shard(out_dir / pdf_name, pdf_rows, frames_field="pdf") if pdf_name else None
    return ali_info, pdf_info, frames


def _init_worker() -> None:
    torch.set_num_threads(1)


def align_subset(feats: ShardManifest, text: Mapping[str, str], lang: Lang, model: HmmModel, out_dir: str | Path,
                 config: AlignConfig = AlignConfig(), seqs: Mapping[str, PhoneSeq] | None = None,
                 force: bool = False, marker_identity: str | None = None) -> AlignResult:
    """Viterbi-align every utterance of ``feats`` to its transcript in ``text``; write label shards to ``out_dir``.

    ``seqs`` (utt -> (phones, optional flags)) overrides the transcripts, e.g.
    the phone sequences realised by an earlier alignment for exact triphone
    contexts. A finished ``out_dir`` (marker ``.align.done``) is reused unless
    ``force`` or its identity (config, inputs, model; ``marker_identity`` if
    given, for a caller that derived ``seqs``) changed.
    """
    out_dir = Path(out_dir)
    write_pdf = model.tree is not None if config.write_pdf is None else config.write_pdf
    ident = marker_identity or identity(result_settings(config), feats.path, feats.shard_paths, dict(text), lang,
                                        model.to_dict(), dict(seqs) if seqs is not None else None)
    if is_done(out_dir, "align") and not force:
        if is_done(out_dir, "align", ident):
            log.info("%s: already aligned, skipping (force to redo)", out_dir)
            skipped = _read_skipped(out_dir / "skipped.tsv")
            ali = ShardManifest.load(out_dir, ALI_PREFIX)
            pdf = ShardManifest.load(out_dir, PDF_PREFIX) if write_pdf else None
            return AlignResult(ali, pdf, skipped, ali.num_frames, 0.0)
        log.info("%s: config, inputs or model changed since the alignment; aligning again", out_dir)
    clear_done(out_dir, "align")
    t0 = time.time()
    pre_seqs, pre_skipped = prepare_transcripts(text, lang, config.optional_silence_prob > 0, config.boundary_silence)
    if seqs is not None:
        pre_seqs.update(seqs)
    state = model.state()
    kwargs = {"optional_prob": config.optional_silence_prob, "device": config.device,
              "max_cells": config.max_cells, "chunk_frames": config.chunk_frames}
    pieces = max(1, config.nj) if len(feats.shards) < 2 * config.nj else 1
    jobs, waiting = [], []
    for i, info in enumerate(feats.shards):
        mine = [u for u in info.keys if u in pre_seqs]
        parts = [p for p in (mine[k::pieces] for k in range(pieces)) if p]
        waiting.append(len(parts))
        jobs += [(i, feats.shard_paths[i], {u: pre_seqs[u] for u in p}, state, kwargs) for p in parts]
    out_dir.mkdir(parents=True, exist_ok=True)
    got: list[dict[str, UttAlignment]] = [{} for _ in feats.shards]
    results: list = [None] * len(feats.shards)
    skipped: dict[str, str] = {}
    frames = 0

    def finish(i: int) -> None:
        nonlocal frames
        info = feats.shards[i]
        for utt in info.keys:
            if utt not in got[i]:
                skipped[utt] = skipped.get(utt) or pre_skipped.get(utt) or "no transcript"
        ali_name = _label_name(info.name, feats.prefix, ALI_PREFIX)
        pdf_name = _label_name(info.name, feats.prefix, PDF_PREFIX) if write_pdf else None
        ali_info, pdf_info, n = _write_labels(out_dir, info.keys, ali_name, pdf_name, got[i], skipped)
        results[i] = (ali_info, pdf_info)
        frames += n
        got[i] = {}
        bar.update(info.num_frames)

    use_pool = config.nj > 1 and len(jobs) > 1 and not config.device.startswith("cuda")
    bar = tqdm(total=feats.num_frames, desc=f"align {out_dir.name}", unit="frame", unit_scale=True)
    executor = Executor(min(config.nj, len(jobs)) if use_pool else 1, initializer=_init_worker if use_pool else None)
    try:
        for i in [i for i, n in enumerate(waiting) if n == 0]:
            finish(i)
        it = executor.map(_align_piece, jobs, ordered=False)
        for i, alis, skip in it:
            got[i].update(alis)
            skipped.update(skip)
            waiting[i] -= 1
            if waiting[i] == 0:
                finish(i)
    finally:
        bar.close()
        executor.close()
        FEATS_CACHE.clear()
    meta = {"model": model.meta, "num_pdfs": model.num_pdfs, "config": to_dict(config)}
    ali = ShardManifest(out_dir, ALI_PREFIX, [r[0] for r in results], meta)
    ali.save()
    pdf = None
    if write_pdf:
        pdf = ShardManifest(out_dir, PDF_PREFIX, [r[1] for r in results], meta)
        pdf.save()
    with atomic_open(out_dir / "skipped.tsv") as f:
        f.writelines(f"{u}\t{reason}\n" for u, reason in sorted(skipped.items()))
    seconds = time.time() - t0
    mark_done(out_dir, "align", {"config": to_dict(config), "frames": frames, "skipped": len(skipped)}, identity=ident)
    log.info("%s: aligned %d frames in %.1f s (%.0f frames/s), %d utterance(s) skipped%s", out_dir, frames, seconds,
             frames / max(seconds, 1e-9), len(skipped),
             f", e.g. {list(skipped.items())[:3]}" if skipped else "")
    return AlignResult(ali, pdf, skipped, frames, seconds)


def _read_skipped(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    rows = (line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {r[0]: (r[1] if len(r) > 1 else "") for r in rows}

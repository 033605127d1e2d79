"""Align a whole subset with a trained GMM-HMM and write label shards aligned with the feature shards.

For feature shard ``feats-NNNNNN.tar`` this writes ``ali-NNNNNN.tar``
(``<utt>.phone.npy``, ``<utt>.state.npy``, (T,) int32) and, for a tree model
(or when asked), ``pdf-NNNNNN.tar`` (``<utt>.pdf.npy``, (T,) int32 senone ids),
with the same keys in the same order (docs/CONTRACTS.md). Each utterance is
aligned to its full training graph (every pronunciation, optional silence,
exact triphone contexts), and the chosen pronunciations are written to
``prons.txt`` (Kaldi's ``prons``: ``utt start_frame num_frames WORD PHONE...``),
from which ``lexiconp.txt`` (Kaldi ``dict_dir_add_pronprobs.sh``: counts plus
one, divided by the word's most frequent) is estimated. An utterance that
cannot be aligned (no transcript, OOV without ``<UNK>``, fewer frames than its
transcript's states, no finite path) keeps its place with empty arrays and is
listed with the reason in ``skipped.tsv``; labels never differ in length from
the features. The search is exact (:mod:`asrdistill.aligner.viterbi`), so there
is no beam to widen and retry with. Shards are aligned in parallel (``nj``
processes) or on a GPU.

    res = align_subset(feats_manifest, datadir.text, lang, HmmModel.load(".../final.pt"), out_dir,
                       AlignConfig(nj=2))
    res.ali, res.pdf  # ShardManifests (prefix "ali" / "pdf"), res.skipped: utt -> reason
    probs = read_pron_probs(out_dir / "lexiconp.txt")   # (word, phones) -> probability
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from asrdistill.aligner.gmm import DiagGmmSet
from asrdistill.aligner.hmm import (
    FEATS_CACHE,
    HmmModel,
    ShardPass,
    UttAlignment,
    prepare_transcripts,
    process_shard,
    shard_feats,
)
from asrdistill.aligner.utt_graph import Transcript
from asrdistill.config import result_settings, to_dict
from asrdistill.data.lang import UNK, Lang
from asrdistill.data.lexicon import read_pron_probs
from asrdistill.data.shards import ALI_PREFIX, PDF_PREFIX, ShardInfo, ShardManifest, iter_shard, write_shard
from asrdistill.fileio import atomic_open, mark_done, read_skipped, stage_done, write_json_atomic, write_skipped
from asrdistill.logs import progress
from asrdistill.parallel import Executor

__all__ = [
    "AlignConfig",
    "AlignResult",
    "align_subset",
    "pron_records",
    "estimate_pron_probs",
    "write_lexiconp",
    "senone_counts",
]

log = logging.getLogger(__name__)


@dataclass
class AlignConfig:
    """Alignment settings (section ``align``)."""

    optional_silence_prob: float = 0.5
    boundary_silence: bool = True
    nj: int = 2
    device: str = "cpu"
    write_pdf: bool | None = None  # None: only for tree (triphone) models
    max_cells: int = 20_000_000
    chunk_frames: int = 20_000
    pron_probs: str | None = None  # a lexiconp.txt weighting the pronunciations (None: all equally allowed)


@dataclass
class AlignResult:
    ali: ShardManifest
    pdf: ShardManifest | None
    skipped: dict[str, str]
    num_frames: int  # frames that received labels
    seconds: float


def _label_name(feat_name: str, feats_prefix: str, prefix: str) -> str:
    if not feat_name.startswith(feats_prefix):
        raise ValueError(f"feature shard {feat_name!r} does not start with the manifest prefix {feats_prefix!r}")
    return prefix + feat_name[len(feats_prefix) :]


def _align_piece(args: tuple) -> tuple[int, dict[str, UttAlignment], dict[str, str]]:
    """Worker: align some utterances of one feature shard; checks every alignment's length against the features."""
    index, shard, seqs, state, how = args
    model = HmmModel(DiagGmmSet.from_state_dict(state["gmm"]), state["topology"], state["transform"], state["tree"])
    res = process_shard(shard, seqs, model, how)
    feats = shard_feats(shard, cache=True)
    for utt, a in res.alignments.items():  # never write labels whose length differs from the features
        if not (a.pdf.shape[0] == a.phone.shape[0] == a.state.shape[0] == feats[utt].shape[0]):
            raise RuntimeError(f"{shard}: {utt}: alignment has {a.pdf.shape[0]} frames, features {feats[utt].shape[0]}")
    return index, res.alignments, res.skipped


def _write_labels(
    out_dir: Path,
    keys: list[str],
    ali_name: str,
    pdf_name: str | None,
    alignments: dict[str, UttAlignment],
    skipped: dict[str, str],
) -> tuple[ShardInfo, ShardInfo | None, int]:
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


def align_subset(
    feats: ShardManifest,
    text: Mapping[str, str],
    lang: Lang,
    model: HmmModel,
    out_dir: str | Path,
    config: AlignConfig = AlignConfig(),
    force: bool = False,
) -> AlignResult:
    """Viterbi-align every utterance of ``feats`` to its transcript in ``text``; write label shards to ``out_dir``.

    Also writes ``skipped.tsv``, ``prons.txt``, ``lexiconp.txt``,
    ``oov_counts.tsv`` (words mapped to ``<UNK>``, with counts) and, with pdf
    shards, ``senone_counts.json``. A finished ``out_dir`` (marker
    ``.align.done``) is reused unless ``force`` or its config, inputs or
    model changed.
    """
    out_dir = Path(out_dir)
    write_pdf = model.tree is not None if config.write_pdf is None else config.write_pdf
    inputs = {
        "config": result_settings(config),
        "feats": [feats.path, feats.shard_paths],
        "text": dict(text),
        "lang": lang,
        "model": model.to_dict(),
    }
    if stage_done(out_dir, "align", inputs, force) is not None:
        skipped = read_skipped(out_dir / "skipped.tsv")
        ali = ShardManifest.load(out_dir, ALI_PREFIX)
        pdf = ShardManifest.load(out_dir, PDF_PREFIX) if write_pdf else None
        return AlignResult(ali, pdf, skipped, ali.num_frames, 0.0)
    t0 = time.time()
    probs = read_pron_probs(config.pron_probs) if config.pron_probs else None
    pre_seqs, pre_skipped = prepare_transcripts(text, lang, probs)
    oov = oov_counts(text.values(), {w for w, _ in lang.lexicon})
    jobs, waiting = _align_jobs(feats, pre_seqs, model, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = _LabelWriter(feats, out_dir, write_pdf, pre_seqs, pre_skipped, lang.phones)
    _run_align_jobs(jobs, waiting, labels, config)
    ali, pdf = _write_summaries(labels, model, config, lang, oov)
    seconds = time.time() - t0
    frames, skipped = labels.frames, labels.skipped
    mark_done(out_dir, "align", {"config": to_dict(config), "frames": frames, "skipped": len(skipped)}, inputs)
    log.info(
        "%s: aligned %d frames in %.1f s (%.0f frames/s), %d utterance(s) skipped%s",
        out_dir,
        frames,
        seconds,
        frames / max(seconds, 1e-9),
        len(skipped),
        f" (reasons in skipped.tsv), e.g. {list(skipped.items())[:3]}" if skipped else "",
    )
    return AlignResult(ali, pdf, skipped, frames, seconds)


def _align_jobs(
    feats: ShardManifest, seqs: Mapping[str, Transcript], model: HmmModel, config: AlignConfig
) -> tuple[list[tuple], list[int]]:
    """Worker jobs ``(shard index, shard, utterances, model state, pass)`` and the number of jobs per shard.

    With fewer than ``2 * nj`` shards each shard's utterances are dealt into
    ``nj`` jobs so that every worker has work; a shard's labels are written
    once all its jobs are back.
    """
    state = model.state()
    how = ShardPass(
        realign=True,
        optional_prob=config.optional_silence_prob,
        boundary_silence=config.boundary_silence,
        device=config.device,
        max_cells=config.max_cells,
        chunk_frames=config.chunk_frames,
    )
    pieces = max(1, config.nj) if len(feats.shards) < 2 * config.nj else 1
    jobs, waiting = [], []
    for i, info in enumerate(feats.shards):
        mine = [u for u in info.keys if u in seqs]
        parts = [p for p in (mine[k::pieces] for k in range(pieces)) if p]
        waiting.append(len(parts))
        jobs += [(i, feats.shard_paths[i], {u: seqs[u] for u in p}, state, how) for p in parts]
    return jobs, waiting


class _LabelWriter:
    """Collects a shard's alignments as its jobs come back and writes its label shards once it is complete.

    Writing shard by shard keeps memory to the shards in flight, not the
    whole subset's alignments.
    """

    def __init__(
        self,
        feats: ShardManifest,
        out_dir: Path,
        write_pdf: bool,
        seqs: Mapping[str, Transcript],
        pre_skipped: Mapping[str, str],
        phones: list[str],
    ):
        self.feats, self.out_dir, self.write_pdf = feats, out_dir, write_pdf
        self.seqs, self.pre_skipped, self.phones = seqs, pre_skipped, phones
        self.got: list[dict[str, UttAlignment]] = [{} for _ in feats.shards]
        self.results: list = [None] * len(feats.shards)
        self.skipped: dict[str, str] = {}
        self.prons: list[str] = []
        self.frames = 0

    def finish(self, i: int) -> None:
        """Write shard ``i``'s labels (empty arrays for the utterances it could not align) and its prons lines."""
        info, got = self.feats.shards[i], self.got[i]
        self.prons.extend(
            line for utt in info.keys if utt in got for line in pron_records(utt, got[utt], self.seqs[utt], self.phones)
        )
        for utt in info.keys:
            if utt not in got:
                self.skipped[utt] = self.skipped.get(utt) or self.pre_skipped.get(utt) or "no transcript"
        ali_name = _label_name(info.name, self.feats.prefix, ALI_PREFIX)
        pdf_name = _label_name(info.name, self.feats.prefix, PDF_PREFIX) if self.write_pdf else None
        ali_info, pdf_info, n = _write_labels(self.out_dir, info.keys, ali_name, pdf_name, got, self.skipped)
        self.results[i] = (ali_info, pdf_info)
        self.frames += n
        self.got[i] = {}


def _run_align_jobs(jobs: list[tuple], waiting: list[int], labels: _LabelWriter, config: AlignConfig) -> None:
    """Run the jobs (a process pool on the CPU with ``nj > 1``, else in-process), finishing each shard in turn."""
    feats = labels.feats
    use_pool = config.nj > 1 and len(jobs) > 1 and not config.device.startswith("cuda")
    bar = progress(total=feats.num_frames, desc=f"align {labels.out_dir.name}", unit="frame", unit_scale=True)
    executor = Executor(min(config.nj, len(jobs)) if use_pool else 1, initializer=_init_worker if use_pool else None)
    try:
        for i in [i for i, n in enumerate(waiting) if n == 0]:
            labels.finish(i)
            bar.update(feats.shards[i].num_frames)
        it = executor.map(_align_piece, jobs, ordered=False)
        for i, alis, skip in it:
            labels.got[i].update(alis)
            labels.skipped.update(skip)
            waiting[i] -= 1
            if waiting[i] == 0:
                labels.finish(i)
                bar.update(feats.shards[i].num_frames)
    finally:
        bar.close()
        executor.close()
        FEATS_CACHE.clear()


def _write_summaries(
    labels: _LabelWriter, model: HmmModel, config: AlignConfig, lang: Lang, oov: Counter[str]
) -> tuple[ShardManifest, ShardManifest | None]:
    """The label manifests, then senone counts, ``skipped.tsv``, ``prons.txt``, ``lexiconp.txt``, ``oov_counts.tsv``.

    In this order, after every label shard: the manifests are what a reader
    looks for, and ``.align.done`` (written by the caller) comes last of all.
    """
    out_dir = labels.out_dir
    meta = {"model": model.meta, "num_pdfs": model.num_pdfs, "config": to_dict(config)}
    ali = ShardManifest(out_dir, ALI_PREFIX, [r[0] for r in labels.results], meta)
    ali.save()
    pdf = None
    if labels.write_pdf:
        pdf = ShardManifest(out_dir, PDF_PREFIX, [r[1] for r in labels.results], meta)
        pdf.save()
        counts = senone_counts(pdf, model.num_pdfs)
        write_json_atomic(
            out_dir / "senone_counts.json",
            {"num_pdfs": model.num_pdfs, "num_used": int((counts > 0).sum()), "counts": counts.tolist()},
        )
    write_skipped(out_dir / "skipped.tsv", labels.skipped)
    with atomic_open(out_dir / "prons.txt") as f:
        f.writelines(labels.prons)
    write_lexiconp(out_dir / "lexiconp.txt", lang, estimate_pron_probs(labels.prons, lang))
    with atomic_open(out_dir / "oov_counts.tsv") as f:
        f.writelines(f"{w}\t{n}\n" for w, n in oov.most_common())
    if oov:
        log.warning(
            "%s: %d word token(s) of %d type(s) have no pronunciation and were aligned as %s, e.g. %s",
            out_dir,
            sum(oov.values()),
            len(oov),
            UNK,
            oov.most_common(5),
        )
    return ali, pdf


def oov_counts(lines: Iterable[str], vocab: set[str]) -> Counter[str]:
    """Transcript words with no pronunciation in the lexicon, with their token counts."""
    return Counter(w for line in lines for w in line.split() if w not in vocab)


def pron_records(utt: str, ali: UttAlignment, transcript: Transcript, phones: list[str]) -> list[str]:
    """Kaldi ``prons`` lines of one alignment: ``utt start_frame num_frames WORD PHONE...`` per word."""
    out = []
    w = ali.word
    starts = np.flatnonzero(np.concatenate([[True], w[1:] != w[:-1]]))
    ends = np.concatenate([starts[1:], [len(w)]])
    for s, e in zip(starts, ends):
        if w[s] < 0:
            continue
        pron = transcript.prons[w[s]][ali.pron[s]]
        out.append(f"{utt} {s} {e - s} {transcript.words[w[s]]} {' '.join(phones[p] for p in pron)}\n")
    return out


def estimate_pron_probs(
    prons: Iterable[str], lang: Lang, smoothing: float = 1.0
) -> dict[tuple[str, tuple[str, ...]], float]:
    """Pronunciation probabilities from ``prons`` lines: (count + smoothing), divided by the word's largest.

    Kaldi's ``dict_dir_add_pronprobs.sh`` (max-normalised, so the commonest
    pronunciation of each word costs nothing); every lexicon entry gets one.
    """
    counts: Counter[tuple[str, tuple[str, ...]]] = Counter()
    for line in prons:
        parts = line.split()
        counts[(parts[3], tuple(parts[4:]))] += 1
    out: dict[tuple[str, tuple[str, ...]], float] = {}
    for word, ps in lang.pronunciations().items():
        c = {p: counts[(word, p)] + smoothing for p in dict.fromkeys(ps)}
        top = max(c.values())
        out.update({(word, p): v / top for p, v in c.items()})
    return out


def write_lexiconp(path: Path, lang: Lang, probs: Mapping[tuple[str, tuple[str, ...]], float]) -> None:
    """``WORD PROB PHONE...`` per lexicon entry, in lexicon order (Kaldi ``lexiconp.txt``)."""
    seen = set()
    with atomic_open(path) as f:
        for word, pron in lang.lexicon:
            if (word, pron) not in seen:
                seen.add((word, pron))
                f.write(f"{word} {probs[(word, pron)]:.6f} {' '.join(pron)}\n")


def senone_counts(pdf: ShardManifest, num_pdfs: int) -> np.ndarray:
    """Frames per senone over label shards (e.g. training labels: also the hybrid decoder's priors)."""
    counts = np.zeros(num_pdfs, dtype=np.int64)
    for path in pdf.shard_paths:
        for _, s in iter_shard(path):
            if s["pdf"].size:
                counts += np.bincount(s["pdf"], minlength=num_pdfs)
    return counts

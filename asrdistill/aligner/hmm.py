"""The GMM-HMM re-estimation/alignment loop shared by monophone and triphone training.

Kaldi's ``gmm-acc-stats-ali`` / ``gmm-est`` / ``gmm-align-compiled`` loop in
torch: features are globally mean/variance normalised (statistics kept in the
model) plus deltas and delta-deltas (or spliced frames and an LDA+MLLT matrix,
:mod:`asrdistill.aligner.lda_mllt`); each iteration (optionally) re-aligns with
Viterbi against each utterance's full training graph (every pronunciation,
optional silence: :mod:`asrdistill.aligner.utt_graph`), accumulates Viterbi GMM statistics, re-estimates, and
splits mixtures towards ``max_gaussians``. Self-loop probabilities are re-estimated from the
alignment.

The loop (:func:`train_gmm_hmm`) is generic over the pdf map: a
:class:`HmmModel` with ``tree=None`` is a monophone system (pdf = (phone,
state) index), with a ``ContextTree`` it is a tied-triphone system, and
nothing else changes. Work is split by feature shard: over ``nj`` CPU
processes (one torch thread each), or in-process on a GPU when ``device`` is
one. Per-iteration log-likelihood goes to ``<exp>/log/train.jsonl``
(:func:`plot_convergence` draws it).

Public API::

    seqs, skipped = prepare_transcripts(text, lang)          # utt -> Transcript (every pronunciation)
    model, ali, skipped = train_gmm_hmm(model, feats_manifest, seqs, cfg, exp_dir, alignment=None)
    HmmModel.load(path) / model.save(path)                  # defined in hmm_model, importable from here

The per-shard pass (:func:`process_shard`, :class:`ShardPass`, :class:`ShardRunner`) lives in
:mod:`asrdistill.aligner.shard_pass` and is importable from here too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch

from asrdistill.aligner.gmm import DiagGmmSet, GmmStats
from asrdistill.aligner.hmm_model import FeatureTransform, HmmModel, UttAlignment, add_deltas, splice_frames
from asrdistill.aligner.lda_mllt import MlltStats, estimate_mllt
from asrdistill.aligner.shard_pass import (
    FEATS_CACHE,
    ShardPass,
    ShardResult,
    ShardRunner,
    equal_alignment,
    process_shard,
    shard_feats,
    shard_jobs,
)
from asrdistill.aligner.topology import Topology
from asrdistill.aligner.utt_graph import Transcript
from asrdistill.data.lang import SIL, UNK, Lang
from asrdistill.data.lexicon import map_oov
from asrdistill.data.shards import ShardManifest
from asrdistill.fileio import atomic_path, json_safe, write_skipped, write_text_atomic

__all__ = [
    "LoopConfig",
    "FeatureTransform",
    "HmmModel",
    "UttAlignment",
    "add_deltas",
    "splice_frames",
    "prepare_transcripts",
    "equal_alignment",
    "estimate_self_loops",
    "ShardPass",
    "process_shard",
    "shard_feats",
    "FEATS_CACHE",
    "ShardRunner",
    "shard_jobs",
    "train_gmm_hmm",
    "plot_convergence",
    "save_trained",
]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- config


def _kaldi_realign_iters() -> list[int]:
    return list(range(1, 11)) + list(range(12, 40, 2))


@dataclass
class LoopConfig:
    """Re-estimation loop settings shared by monophone and triphone training."""

    num_iters: int = 40
    max_gaussians: int = 1000
    max_iter_inc: int = 30  # Gaussians grow linearly until this iteration
    realign_iters: list[int] = field(default_factory=_kaldi_realign_iters)
    optional_silence_prob: float = 0.5  # Kaldi's sil_prob: silence between words (0: none, 1: always)
    boundary_silence: bool = True  # optional silence before the first / after the last word
    mllt_iters: list[int] = field(default_factory=list)  # re-estimate the MLLT rotation (LDA+MLLT models only)
    var_floor: float = 0.01  # fraction of the global variance
    min_gaussian_occ: float = 10.0  # components with fewer frames are dropped
    mixup_power: float = 0.2  # Gaussians per pdf ~ occupancy ** power
    self_loop_floor: float = 0.05  # self-loop probabilities stay in [floor, 1 - floor]
    nj: int = 2  # CPU worker processes (ignored on a GPU)
    device: str = "cpu"
    max_cells: int = 20_000_000  # Viterbi batch size in (utterances x frames x states)
    chunk_frames: int = 20_000  # frames scored per GMM evaluation


# ---------------------------------------------------------------------- transcripts


def prepare_transcripts(
    text: Mapping[str, str], lang: Lang, pron_probs: Mapping[tuple[str, tuple[str, ...]], float] | None = None
) -> tuple[dict[str, Transcript], dict[str, str]]:
    """Every transcript with all pronunciations of its words; OOV words become ``<UNK>``.

    ``pron_probs`` ((word, phones) -> probability, e.g. a ``lexiconp.txt``
    from :func:`asrdistill.aligner.align.estimate_pron_probs`) weights the
    pronunciations; without it all are equally allowed (Kaldi's
    ``lexicon.txt``: probability 1 each). Returns ``(transcripts,
    skipped)``: ``skipped`` maps an utterance to the reason it has none
    (empty transcript, or an OOV word while ``<UNK>`` has no pronunciation).
    """
    pid = lang.phone_id
    table: dict[str, tuple[list[tuple[int, ...]], list[float]]] = {}
    for w, ps in lang.pronunciations().items():
        uniq = list(dict.fromkeys(ps))
        probs = [pron_probs.get((w, p), 0.0) if pron_probs is not None else 1.0 for p in uniq]
        with np.errstate(divide="ignore"):
            table[w] = ([tuple(pid[x] for x in p) for p in uniq], [float(v) for v in np.log(probs)])
    vocab = set(table)
    seqs: dict[str, Transcript] = {}
    skipped: dict[str, str] = {}
    for utt, line in text.items():
        words = map_oov(line, vocab).split()
        if not words:
            skipped[utt] = "empty transcript"
        elif any(w not in table for w in words):
            bad = sorted({w for w in line.split() if w not in vocab})
            skipped[utt] = f"words {bad[:5]} not in the lexicon and {UNK} has no pronunciation"
        else:
            seqs[utt] = Transcript(words, [table[w][0] for w in words], [table[w][1] for w in words], pid[SIL])
    return seqs, skipped


def estimate_self_loops(alignments: Iterable[UttAlignment], topology: Topology, floor: float = 0.05) -> Topology:
    """Self-loop probability of each (phone, state) from frame alignments; unseen states keep theirs."""
    width = topology.max_states
    stay = np.zeros((len(topology.num_states), width))
    total = np.zeros_like(stay)
    for a in alignments:
        if a.phone.size == 0:
            continue
        same = (a.phone[1:] == a.phone[:-1]) & (a.state[1:] == a.state[:-1])
        np.add.at(total, (a.phone[:-1], a.state[:-1]), 1.0)
        np.add.at(stay, (a.phone[:-1][same], a.state[:-1][same]), 1.0)
    loops = [list(x) for x in topology.self_loop]
    for p in range(1, len(loops)):
        for s in range(topology.num_states[p]):
            if total[p, s] > 0:
                loops[p][s] = float(np.clip(stay[p, s] / total[p, s], floor, 1 - floor))
    return Topology(list(topology.num_states), loops)


# -------------------------------------------------------------------------- training


def _write_jsonl(path: Path, records: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(json_safe(r), sort_keys=True, allow_nan=False) + "\n" for r in records))


def train_gmm_hmm(
    model: HmmModel,
    feats: ShardManifest,
    seqs: Mapping[str, Transcript],
    config: LoopConfig,
    exp_dir: str | Path,
    alignment: Mapping[str, UttAlignment] | None = None,
    log_name: str = "train",
) -> tuple[HmmModel, dict[str, UttAlignment], dict[str, str]]:
    """Iterate Viterbi re-estimation (Kaldi ``train_mono.sh`` / ``train_deltas.sh`` loop) from ``model``.

    Iteration ``i`` (0-based) re-aligns when ``i in config.realign_iters`` or
    no ``alignment`` is given yet, accumulates statistics on the alignment,
    re-estimates the GMMs and self-loops, then splits mixtures towards
    ``config.max_gaussians`` (linearly until ``max_iter_inc``). On
    ``config.mllt_iters`` (a model with an LDA matrix) the MLLT rotation is
    re-estimated first and folded into the features and the means (Kaldi
    ``train_lda_mllt.sh``). Each
    iteration appends ``{iter, loglik_per_frame, ...}`` to
    ``<exp_dir>/log/<log_name>.jsonl``. Returns the final model, the last
    alignment, and the utterances its last alignment pass could not align
    (utt -> reason; absent from the alignment), for the caller's ``skipped.tsv``.
    """
    jobs = shard_jobs(feats, seqs, config.nj)
    if not jobs:
        raise ValueError(f"{feats.path}: none of the {len(seqs)} transcribed utterances is in the features")
    log_path = Path(exp_dir) / "log" / f"{log_name}.jsonl"
    records: list[dict] = []
    start_gauss = model.gmm.num_gauss
    inc = max(0, config.max_gaussians - start_gauss) / max(config.max_iter_inc, 1)
    ali: dict[str, UttAlignment] = dict(alignment) if alignment is not None else {}
    skipped: dict[str, str] = {}
    with ShardRunner(config.nj, config.device) as runner:
        for it in range(config.num_iters):
            t0 = time.time()
            realign = alignment is None and it == 0 or it in config.realign_iters
            mllt = it in config.mllt_iters and model.transform.matrix is not None
            how = _loop_pass(config, realign, mllt)
            acc = _sum_pass(runner.map(jobs, model, None if realign else ali, f"iter {it}", how), model.gmm, mllt)
            if realign:
                ali = acc.alignments
            skipped = {} if realign else skipped
            skipped.update(acc.skipped)
            if acc.stats.frames == 0:
                raise ValueError(
                    f"iteration {it}: no utterance could be aligned ({len(skipped)} skipped, e.g. "
                    f"{next(iter(skipped.items()), None)})"
                )
            target = int(min(config.max_gaussians, start_gauss + inc * (it + 1)))
            model = _reestimate(model, acc.stats, acc.mllt, ali, config, target, it)
            records.append(_iteration_record(it, acc, model.gmm.num_gauss, realign, len(skipped), t0))
            _write_jsonl(log_path, records)
            _log_iteration(records[-1])
    FEATS_CACHE.clear()
    if skipped:
        log.warning(
            "%d utterance(s) could not be aligned in the last alignment pass, e.g. %s",
            len(skipped),
            list(skipped.items())[:3],
        )
    return model, ali, skipped


def _iteration_record(it: int, acc: ShardResult, num_gauss: int, realign: bool, skipped: int, t0: float) -> dict:
    """One line of ``train.jsonl``: what :func:`plot_convergence` draws and a reader checks convergence with."""
    rec = {
        "iter": it,
        "loglik_per_frame": acc.stats.loglik_per_frame,
        "frames": acc.stats.frames,
        "num_gauss": num_gauss,
        "realigned": realign,
        "skipped": skipped,
        "seconds": round(time.time() - t0, 2),
    }
    if realign and acc.frames:
        rec["viterbi_per_frame"] = acc.viterbi_score / acc.frames
    return rec


def _log_iteration(rec: dict) -> None:
    """The iteration's record in one log line, so that a long run shows its progress as it goes."""
    log.info(
        "iter %d: loglik/frame %.3f over %d frames, %d Gaussians%s (%.1f s)",
        rec["iter"],
        rec["loglik_per_frame"],
        rec["frames"],
        rec["num_gauss"],
        ", realigned" if rec["realigned"] else "",
        rec["seconds"],
    )


def _loop_pass(config: LoopConfig, realign: bool, mllt: bool) -> ShardPass:
    """One iteration's shard pass: statistics always, a fresh alignment and MLLT statistics when scheduled."""
    return ShardPass(
        realign=realign,
        accumulate_stats=True,
        mllt_stats=mllt,
        optional_prob=config.optional_silence_prob,
        boundary_silence=config.boundary_silence,
        max_cells=config.max_cells,
        chunk_frames=config.chunk_frames,
    )


def _sum_pass(results: Iterable[ShardResult], gmm: DiagGmmSet, mllt: bool) -> ShardResult:
    """The shards' results summed into one, in the order the runner yields them."""
    total = ShardResult(GmmStats.zeros(gmm.num_gauss, gmm.dim), {}, {}, mllt=MlltStats.zeros(gmm.dim) if mllt else None)
    for res in results:
        total.stats.add(res.stats)
        if total.mllt is not None:
            total.mllt.add(res.mllt)
        total.alignments.update(res.alignments)
        total.skipped.update(res.skipped)
        total.viterbi_score, total.frames = total.viterbi_score + res.viterbi_score, total.frames + res.frames
    return total


def _reestimate(
    model: HmmModel,
    stats: GmmStats,
    mllt: MlltStats | None,
    ali: Mapping[str, UttAlignment],
    config: LoopConfig,
    target: int,
    it: int,
) -> HmmModel:
    """The next model: Gaussians from ``stats`` (rotated by a new MLLT with ``mllt``), split to ``target``, and
    self-loops from ``ali``.

    The mixture split weighs pdfs by the occupancy under the *previous* model's
    components, which is why this takes the old model rather than its GMMs.
    """
    gmm = DiagGmmSet.from_stats(stats, model.gmm, config.var_floor, config.min_gaussian_occ)
    transform = model.transform
    if mllt is not None:  # rotate the space the new Gaussians live in (Kaldi est-mllt, gmm-transform-means)
        rot, gain = estimate_mllt(mllt)
        transform = dataclasses.replace(transform, matrix=rot @ transform.matrix)
        gmm = DiagGmmSet(
            gmm.means @ torch.from_numpy(rot.T).float(), gmm.vars, gmm.log_weights, gmm.comp2pdf, gmm.num_pdfs
        )
        log.info("iter %d: MLLT objective gain %.4f per frame", it, gain)
    pdf_occ = torch.zeros(gmm.num_pdfs, dtype=torch.float64).index_add_(0, model.gmm.comp2pdf.cpu(), stats.occ)
    gmm = gmm.split(target, pdf_occ, config.mixup_power)
    topo = estimate_self_loops(ali.values(), model.topology, config.self_loop_floor)
    return HmmModel(gmm, topo, transform, model.tree, model.meta)


def plot_convergence(jsonl: str | Path, png: str | Path) -> Path:
    """Plot log-likelihood per frame against iteration (re-alignment iterations marked) to ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in Path(jsonl).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not recs:
        raise ValueError(f"{jsonl}: no iterations logged")
    its = [r["iter"] for r in recs]
    ll = [r["loglik_per_frame"] for r in recs]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(its, ll, marker=".", label="GMM log-likelihood / frame")
    re = [(r["iter"], r["loglik_per_frame"]) for r in recs if r.get("realigned")]
    if re:
        ax.scatter(*zip(*re), color="C3", s=18, zorder=3, label="after re-alignment")
    ax.set_xlabel("iteration")
    ax.set_ylabel("log-likelihood per frame")
    ax.grid(alpha=0.3)
    ax.legend()
    png = Path(png)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return png


def save_trained(model: HmmModel, exp_dir: Path, skipped: Mapping[str, str]) -> None:
    """What a training stage leaves besides its marker: ``final.pt``, ``topo.json``, ``skipped.tsv``, the plot.

    One place for mono and triphone training, so that both stages write the same files in the same order.
    """
    model.save(exp_dir / "final.pt")
    model.topology.save(exp_dir / "topo.json")
    write_skipped(exp_dir / "skipped.tsv", skipped)
    plot_convergence(exp_dir / "log" / "train.jsonl", exp_dir / "log" / "train.png")

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
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from asrdistill.aligner.gmm import DiagGmmSet, GmmStats, accumulate
from asrdistill.aligner.hmm_model import FeatureTransform, HmmModel, UttAlignment, add_deltas, splice_frames
from asrdistill.aligner.lda_mllt import MlltStats, accumulate_mllt, estimate_mllt
from asrdistill.aligner.topology import Topology
from asrdistill.aligner.utt_graph import Transcript, UttGraph, build_utt_graphs
from asrdistill.aligner.viterbi import viterbi_batch
from asrdistill.data.lang import SIL, UNK, Lang
from asrdistill.data.lexicon import map_oov
from asrdistill.data.shards import ShardManifest, iter_shard
from asrdistill.fileio import atomic_path, json_safe, write_text_atomic
from asrdistill.logs import progress
from asrdistill.parallel import Executor

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


def equal_alignment(graph: UttGraph, num_frames: int) -> np.ndarray | None:
    """Graph state per frame spreading frames equally over ``graph.default_path`` (Kaldi ``align-equal``).

    That path takes each word's first pronunciation, no silence between words
    and the leading and trailing silences (utterances usually start and end in
    silence). ``None`` if there are fewer frames than states.
    """
    states = graph.default_path
    if num_frames < len(states):
        return None
    return states[(np.arange(num_frames) * len(states)) // num_frames].astype(np.int32)


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


# ---------------------------------------------------------------- per-shard worker

FEATS_CACHE: "OrderedDict[str, dict[str, np.ndarray]]" = OrderedDict()
_CACHE_BYTES = 1 << 30  # per process: re-reading a shard each iteration is the fallback, not an error


def shard_feats(path: Path, cache: bool) -> dict[str, np.ndarray]:
    """Raw features of one shard, kept in a per-process LRU cache (bounded by ``_CACHE_BYTES``)."""
    key = str(path)
    if key in FEATS_CACHE:
        FEATS_CACHE.move_to_end(key)
        return FEATS_CACHE[key]
    feats = {utt: s["feats"] for utt, s in iter_shard(path)}
    if cache:
        FEATS_CACHE[key] = feats
        size = lambda d: sum(a.nbytes for a in d.values())  # noqa: E731
        while len(FEATS_CACHE) > 1 and sum(size(d) for d in FEATS_CACHE.values()) > _CACHE_BYTES:
            FEATS_CACHE.popitem(last=False)
    return feats


@dataclass
class ShardResult:
    """What one shard pass returns: statistics (if accumulated), alignments (if aligned), skips."""

    stats: GmmStats | None
    alignments: dict[str, UttAlignment]
    skipped: dict[str, str]
    viterbi_score: float = 0.0  # summed best-path scores of the aligned utterances
    frames: int = 0  # frames of the aligned utterances
    mllt: MlltStats | None = None  # with ``mllt_stats``


@dataclass(frozen=True)
class ShardPass:
    """What one pass of :func:`process_shard` does over a shard, with which training graphs and search limits."""

    realign: bool = False  # align afresh (else the given alignment supplies the pdfs)
    equal: bool = False  # flat start: equal alignment along the default path instead of Viterbi
    accumulate_stats: bool = False  # GMM statistics on the (new or given) alignment
    mllt_stats: bool = False  # MLLT statistics too
    optional_prob: float = 0.5  # training graphs: probability of the optional silence between words
    boundary_silence: bool = True  # ... and optional silence at both ends
    device: str = "cpu"
    max_cells: int = 20_000_000  # Viterbi: trellis cells per batch of utterances
    chunk_frames: int = 20_000  # frames scored per GMM call
    cache: bool = True  # keep the shard's features in memory for the next pass


def process_shard(
    shard: Path,
    seqs: Mapping[str, Transcript],
    model: HmmModel,
    how: ShardPass,
    alignment: Mapping[str, UttAlignment] | None = None,
) -> ShardResult:
    """Align (Viterbi, or equally with ``how.equal``) and/or accumulate statistics for one feature shard.

    Only utterances in ``seqs`` are used; each is aligned to its full training
    graph (every pronunciation, optional silence; triphone contexts exact for
    a tree model), so pronunciation and silence are decided afresh. Without
    ``how.realign`` the given ``alignment`` supplies the pdfs. An utterance whose
    frame count cannot fit its graph, or that has no finite path, is reported
    in ``skipped``.
    """
    realign, equal, device = how.realign, how.equal, how.device
    feats = shard_feats(Path(shard), how.cache)
    gmm = model.gmm.to(device) if model.gmm.device != torch.device(device) else model.gmm
    utts = [u for u in feats if u in seqs]
    skipped: dict[str, str] = {}
    out_ali: dict[str, UttAlignment] = {}
    score_sum, ali_frames = 0.0, 0
    xs = {u: model.transform.apply(feats[u]) for u in utts}
    if realign or equal:
        graphs: dict[str, UttGraph] = {}
        built = build_utt_graphs(
            [seqs[u] for u in utts],
            model.topology,
            model.pdf_of,
            how.optional_prob,
            how.boundary_silence,
            context=model.tree is not None,
        )
        for u, g in zip(utts, built):
            if xs[u].shape[0] < g.min_frames:
                skipped[u] = (
                    f"{xs[u].shape[0]} frames, fewer than the {g.min_frames} HMM states on the shortest "
                    "path through its transcript's graph (one frame per state at least)"
                )
            else:
                graphs[u] = g
        todo = list(graphs)
        if equal:
            for u in todo:
                path = equal_alignment(graphs[u], xs[u].shape[0])
                if path is None:
                    skipped[u] = (
                        f"{xs[u].shape[0]} frames, fewer than the {len(graphs[u].default_path)} HMM "
                        "states of the flat-start path (first pronunciations, silence at both ends)"
                    )
                    continue
                out_ali[u] = UttAlignment.from_path(graphs[u], path)
        else:
            # score chunks of utterances at once (bigger matmuls), only the pdfs their graphs use
            start = 0
            budget = max(1000, min(how.chunk_frames, 20_000_000 // max(1, gmm.num_gauss)))
            while start < len(todo):
                end, n = start, 0
                while end < len(todo) and (n == 0 or n + xs[todo[end]].shape[0] <= budget):
                    n += xs[todo[end]].shape[0]
                    end += 1
                chunk = todo[start:end]
                pdfs = np.unique(np.concatenate([graphs[u].pdf for u in chunk]))
                ll = gmm.loglik(torch.cat([xs[u] for u in chunk]).to(device), torch.from_numpy(pdfs))
                lls, offs = [], 0
                for u in chunk:
                    t = xs[u].shape[0]
                    idx = torch.from_numpy(np.searchsorted(pdfs, graphs[u].pdf)).to(ll.device)
                    lls.append(ll[offs : offs + t][:, idx])
                    offs += t
                paths, scores = viterbi_batch(lls, [graphs[u] for u in chunk], device, how.max_cells)
                for u, path, sc in zip(chunk, paths, scores):
                    if path is None:
                        skipped[u] = "every path through its transcript's graph has zero probability"
                        continue
                    out_ali[u] = UttAlignment.from_path(graphs[u], path)
                    score_sum += sc
                    ali_frames += len(path)
                start = end
        alignment = out_ali
    stats, mllt = None, None
    if how.accumulate_stats or how.mllt_stats:
        stats = GmmStats.zeros(gmm.num_gauss, gmm.dim)
        mllt = MlltStats.zeros(gmm.dim) if how.mllt_stats else None
        if alignment:
            used = [u for u in utts if u in alignment and alignment[u].pdf.size]
            for u in used:
                if alignment[u].pdf.shape[0] != xs[u].shape[0]:
                    raise ValueError(
                        f"{shard}: {u}: alignment has {alignment[u].pdf.shape[0]} frames, features {xs[u].shape[0]}"
                    )
            if used:
                x = torch.cat([xs[u] for u in used])
                pdf = torch.from_numpy(np.concatenate([alignment[u].pdf for u in used]).astype(np.int64))
                accumulate(gmm, x, pdf, stats)
                if mllt is not None:
                    accumulate_mllt(gmm, x, pdf, mllt)
        stats = GmmStats(stats.occ.cpu(), stats.x.cpu(), stats.xx.cpu(), stats.loglik, stats.frames)
        stats = stats if how.accumulate_stats else None
    return ShardResult(stats, out_ali, skipped, score_sum, ali_frames, mllt)


def _worker_init() -> None:
    torch.set_num_threads(1)


def _worker(args: tuple) -> ShardResult:
    shard, seqs, state, alignment, how = args
    model = HmmModel(DiagGmmSet.from_state_dict(state["gmm"]), state["topology"], state["transform"], state["tree"])
    return process_shard(shard, seqs, model, how, alignment)


class ShardRunner:
    """Runs :func:`process_shard` over shards: a process pool (CPU, ``nj > 1``) or in-process (GPU or ``nj = 1``)."""

    def __init__(self, nj: int, device: str = "cpu"):
        self.device = device
        gpu = str(device).startswith("cuda")
        self.executor = Executor(1 if gpu else nj, initializer=None if gpu else _worker_init)

    def map(
        self,
        jobs: Sequence[tuple[Path, Mapping[str, Transcript]]],
        model: HmmModel,
        alignment: Mapping[str, UttAlignment] | None,
        desc: str,
        how: ShardPass,
    ) -> Iterable[ShardResult]:
        """Yield one :class:`ShardResult` per job (``how`` on this runner's device), in any order, with a progress
        bar."""
        how = dataclasses.replace(how, device=self.device)
        state = model.state()
        args = [
            (p, seqs, state, {u: alignment[u] for u in seqs if u in alignment} if alignment is not None else None, how)
            for p, seqs in jobs
        ]
        it = self.executor.map(_worker, args, ordered=False)
        yield from progress(it, total=len(args), desc=desc, unit="shard", leave=False)

    def close(self) -> None:
        self.executor.close()

    def __enter__(self) -> "ShardRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.executor.close()


# -------------------------------------------------------------------------- training


def shard_jobs(
    feats: ShardManifest, seqs: Mapping[str, Transcript], pieces: int = 1
) -> list[tuple[Path, dict[str, Transcript]]]:
    """(shard, utterances) work items; each shard's utterances are dealt into ``pieces`` items.

    Splitting within shards keeps ``nj`` workers busy when the corpus has
    fewer shards than workers (a 5 h corpus is one 200 MB shard).
    """
    jobs = []
    for info, path in zip(feats.shards, feats.shard_paths):
        mine = [u for u in info.keys if u in seqs]
        for k in range(pieces):
            part = {u: seqs[u] for u in mine[k::pieces]}
            if part:
                jobs.append((path, part))
    return jobs


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
    exp_dir = Path(exp_dir)
    jobs = shard_jobs(feats, seqs, config.nj)
    if not jobs:
        raise ValueError(f"{feats.path}: none of the {len(seqs)} transcribed utterances is in the features")
    log_path = exp_dir / "log" / f"{log_name}.jsonl"
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
            stats = GmmStats.zeros(model.gmm.num_gauss, model.gmm.dim)
            mllt_acc = MlltStats.zeros(model.gmm.dim) if mllt else None
            new_ali: dict[str, UttAlignment] = {}
            skipped = {} if realign else skipped
            score, frames = 0.0, 0
            how = ShardPass(
                realign=realign,
                accumulate_stats=True,
                mllt_stats=mllt,
                optional_prob=config.optional_silence_prob,
                boundary_silence=config.boundary_silence,
                max_cells=config.max_cells,
                chunk_frames=config.chunk_frames,
            )
            for res in runner.map(jobs, model, None if realign else ali, f"iter {it}", how):
                stats.add(res.stats)
                if mllt_acc is not None:
                    mllt_acc.add(res.mllt)
                new_ali.update(res.alignments)
                skipped.update(res.skipped)
                score, frames = score + res.viterbi_score, frames + res.frames
            if realign:
                ali = new_ali
            if stats.frames == 0:
                raise ValueError(
                    f"iteration {it}: no utterance could be aligned ({len(skipped)} skipped, e.g. "
                    f"{next(iter(skipped.items()), None)})"
                )
            gmm = DiagGmmSet.from_stats(stats, model.gmm, config.var_floor, config.min_gaussian_occ)
            transform = model.transform
            if mllt_acc is not None:  # rotate the space the new Gaussians live in (Kaldi est-mllt, gmm-transform-means)
                rot, gain = estimate_mllt(mllt_acc)
                transform = dataclasses.replace(transform, matrix=rot @ transform.matrix)
                gmm = DiagGmmSet(
                    gmm.means @ torch.from_numpy(rot.T).float(), gmm.vars, gmm.log_weights, gmm.comp2pdf, gmm.num_pdfs
                )
                log.info("iter %d: MLLT objective gain %.4f per frame", it, gain)
            target = int(min(config.max_gaussians, start_gauss + inc * (it + 1)))
            pdf_occ = torch.zeros(gmm.num_pdfs, dtype=torch.float64).index_add_(0, model.gmm.comp2pdf.cpu(), stats.occ)
            gmm = gmm.split(target, pdf_occ, config.mixup_power)
            topo = estimate_self_loops(ali.values(), model.topology, config.self_loop_floor)
            model = HmmModel(gmm, topo, transform, model.tree, model.meta)
            rec = {
                "iter": it,
                "loglik_per_frame": stats.loglik_per_frame,
                "frames": stats.frames,
                "num_gauss": gmm.num_gauss,
                "realigned": realign,
                "skipped": len(skipped),
                "seconds": round(time.time() - t0, 2),
            }
            if realign and frames:
                rec["viterbi_per_frame"] = score / frames
            records.append(rec)
            _write_jsonl(log_path, records)
            log.info(
                "iter %d: loglik/frame %.3f over %d frames, %d Gaussians%s (%.1f s)",
                it,
                rec["loglik_per_frame"],
                stats.frames,
                gmm.num_gauss,
                ", realigned" if realign else "",
                rec["seconds"],
            )
    FEATS_CACHE.clear()
    if skipped:
        log.warning(
            "%d utterance(s) could not be aligned in the last alignment pass, e.g. %s",
            len(skipped),
            list(skipped.items())[:3],
        )
    return model, ali, skipped


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

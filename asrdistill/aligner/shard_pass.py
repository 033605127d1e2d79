"""One pass over a feature shard: align (flat start or Viterbi) and/or accumulate GMM and MLLT statistics.

The unit of work of every aligner stage: the re-estimation loop
(:func:`asrdistill.aligner.hmm.train_gmm_hmm`), the monophone flat start and
the label pass (:mod:`asrdistill.aligner.align`) each describe a pass with a
:class:`ShardPass` and run :func:`process_shard` per shard, through a
:class:`ShardRunner` (a process pool on the CPU, in-process on a GPU) or
their own executor. A shard's features stay in a per-process cache
(:data:`FEATS_CACHE`) between the loop's iterations.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from asrdistill.aligner.gmm import DiagGmmSet, GmmStats, accumulate
from asrdistill.aligner.hmm_model import HmmModel, UttAlignment
from asrdistill.aligner.lda_mllt import MlltStats, accumulate_mllt
from asrdistill.aligner.utt_graph import Transcript, UttGraph, build_utt_graphs
from asrdistill.aligner.viterbi import viterbi_batch
from asrdistill.data.shards import ShardManifest, iter_shard
from asrdistill.logs import progress
from asrdistill.parallel import Executor

__all__ = [
    "FEATS_CACHE",
    "ShardPass",
    "ShardResult",
    "ShardRunner",
    "equal_alignment",
    "process_shard",
    "shard_feats",
    "shard_jobs",
]

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
    feats = shard_feats(Path(shard), how.cache)
    gmm = model.gmm.to(how.device) if model.gmm.device != torch.device(how.device) else model.gmm
    utts = [u for u in feats if u in seqs]
    xs = {u: model.transform.apply(feats[u]) for u in utts}
    res = ShardResult(None, {}, {})
    if how.realign or how.equal:
        graphs = _fitting_graphs(utts, seqs, xs, model, how, res.skipped)
        if how.equal:
            _align_equally(graphs, xs, res)
        else:
            _align_viterbi(graphs, xs, gmm, how, res)
        alignment = res.alignments
    if how.accumulate_stats or how.mllt_stats:
        stats, res.mllt = _accumulate_shard(shard, utts, xs, gmm, alignment, how.mllt_stats)
        res.stats = stats if how.accumulate_stats else None
    return res


def _fitting_graphs(
    utts: list[str],
    seqs: Mapping[str, Transcript],
    xs: Mapping[str, torch.Tensor],
    model: HmmModel,
    how: ShardPass,
    skipped: dict[str, str],
) -> dict[str, UttGraph]:
    """Training graph of each utterance that has at least one frame per state of its shortest path.

    The check comes before any search: an utterance too short for its
    transcript has no alignment at all, flat start or Viterbi, and is listed in
    ``skipped`` (with the reason) instead.
    """
    built = build_utt_graphs(
        [seqs[u] for u in utts],
        model.topology,
        model.pdf_of,
        how.optional_prob,
        how.boundary_silence,
        context=model.tree is not None,
    )
    graphs: dict[str, UttGraph] = {}
    for u, g in zip(utts, built):
        if xs[u].shape[0] < g.min_frames:
            skipped[u] = (
                f"{xs[u].shape[0]} frames, fewer than the {g.min_frames} HMM states on the shortest "
                "path through its transcript's graph (one frame per state at least)"
            )
        else:
            graphs[u] = g
    return graphs


def _align_equally(graphs: Mapping[str, UttGraph], xs: Mapping[str, torch.Tensor], res: ShardResult) -> None:
    """Flat start: frames spread equally over each graph's default path (no model is good enough to search yet)."""
    for u, g in graphs.items():
        path = equal_alignment(g, xs[u].shape[0])
        if path is None:
            res.skipped[u] = (
                f"{xs[u].shape[0]} frames, fewer than the {len(g.default_path)} HMM "
                "states of the flat-start path (first pronunciations, silence at both ends)"
            )
            continue
        res.alignments[u] = UttAlignment.from_path(g, path)


def _align_viterbi(
    graphs: Mapping[str, UttGraph], xs: Mapping[str, torch.Tensor], gmm: DiagGmmSet, how: ShardPass, res: ShardResult
) -> None:
    """Viterbi alignment of every graph, scoring chunks of utterances at once (bigger matmuls).

    Each chunk is scored only on the pdfs its graphs use, so a triphone model's
    thousands of senones cost no more than the few a chunk needs.
    """
    todo = list(graphs)
    budget = max(1000, min(how.chunk_frames, 20_000_000 // max(1, gmm.num_gauss)))
    start = 0
    while start < len(todo):
        end, n = start, 0
        while end < len(todo) and (n == 0 or n + xs[todo[end]].shape[0] <= budget):
            n += xs[todo[end]].shape[0]
            end += 1
        chunk = todo[start:end]
        lls = _chunk_logliks([xs[u] for u in chunk], [graphs[u] for u in chunk], gmm, how.device)
        paths, scores = viterbi_batch(lls, [graphs[u] for u in chunk], how.device, how.max_cells)
        for u, path, sc in zip(chunk, paths, scores):
            if path is None:
                res.skipped[u] = "every path through its transcript's graph has zero probability"
                continue
            res.alignments[u] = UttAlignment.from_path(graphs[u], path)
            res.viterbi_score += sc
            res.frames += len(path)
        start = end


def _chunk_logliks(xs: list[torch.Tensor], graphs: list[UttGraph], gmm: DiagGmmSet, device: str) -> list[torch.Tensor]:
    """Per utterance, (T, graph states) log-likelihoods from one GMM evaluation over the whole chunk."""
    pdfs = np.unique(np.concatenate([g.pdf for g in graphs]))
    ll = gmm.loglik(torch.cat(xs).to(device), torch.from_numpy(pdfs))
    lls, offs = [], 0
    for x, g in zip(xs, graphs):
        t = x.shape[0]
        idx = torch.from_numpy(np.searchsorted(pdfs, g.pdf)).to(ll.device)
        lls.append(ll[offs : offs + t][:, idx])
        offs += t
    return lls


def _accumulate_shard(
    shard: Path,
    utts: list[str],
    xs: Mapping[str, torch.Tensor],
    gmm: DiagGmmSet,
    alignment: Mapping[str, UttAlignment] | None,
    mllt_stats: bool,
) -> tuple[GmmStats, MlltStats | None]:
    """GMM (and with ``mllt_stats`` MLLT) statistics of the aligned frames, the GMM ones moved to the CPU.

    A label count that differs from the frame count is a corrupt alignment:
    refused here rather than silently misaligning the statistics.
    """
    stats = GmmStats.zeros(gmm.num_gauss, gmm.dim)
    mllt = MlltStats.zeros(gmm.dim) if mllt_stats else None
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
    return GmmStats(stats.occ.cpu(), stats.x.cpu(), stats.xx.cpu(), stats.loglik, stats.frames), mllt


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

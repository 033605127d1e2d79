"""Batched Viterbi over utterance state graphs (:class:`~asrdistill.aligner.utt_graph.UttGraph`).

Utterances are sorted by length and packed into batches of padded tensors
(B, T, S); each time step takes, per state, the max over its ``K``
predecessors (self-loop, previous state, last states of the phones that may
precede it: other pronunciations, optional silence) for the whole batch at
once, as one gather. Backpointers are stored as int8 predecessor slots, so
memory is one byte per (frame, state). Works on any torch device.

The search is exact: every state of every frame is kept, nothing is pruned,
so the path found is the best one and an utterance with no complete path (too
few frames for its graph, or only -inf scores) has none at any beam. It gets
``None`` rather than a made-up alignment, and the callers list it with its
reason in ``skipped.tsv``. Kaldi's beam-pruned ``gmm-align-compiled`` retries
a failed utterance with ``--retry-beam``; here there is nothing to retry.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from asrdistill.aligner.utt_graph import UttGraph

__all__ = ["viterbi_batch", "viterbi"]


def _pad(rows: Sequence[np.ndarray], width: int, fill: float, dtype: torch.dtype, device) -> Tensor:
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=dtype)
    return out.to(device)


def viterbi(
    logliks: Sequence[Tensor], graphs: Sequence[UttGraph], device: str | torch.device | None = None
) -> tuple[list[np.ndarray | None], list[float]]:
    """Best state path of each utterance, all in one padded batch.

    ``logliks[b]`` is (T_b, S_b): the score of each frame in each state of
    ``graphs[b]`` (e.g. ``gmm.loglik(x)[:, graph.pdf]``). Returns per
    utterance the state index per frame (int32, (T_b,)) or ``None`` when no
    path exists, and the path score (``-inf`` when none).
    """
    if len(logliks) != len(graphs):
        raise ValueError(f"{len(logliks)} score matrices for {len(graphs)} graphs")
    if not graphs:
        return [], []
    device = torch.device(device) if device is not None else logliks[0].device
    dtype = logliks[0].dtype if logliks[0].is_floating_point() else torch.float32
    B = len(graphs)
    lengths = [int(ll.shape[0]) for ll in logliks]
    for ll, g in zip(logliks, graphs):
        if ll.ndim != 2 or ll.shape[1] != g.num_states:
            raise ValueError(f"scores of shape {tuple(ll.shape)} do not match a graph of {g.num_states} states")
    T, S = max(lengths), max(g.num_states for g in graphs)
    neg = -math.inf
    am = torch.full((B, T, S), neg, dtype=dtype, device=device)
    for b, ll in enumerate(logliks):
        if lengths[b]:
            am[b, : lengths[b], : ll.shape[1]] = ll.to(device, dtype)
    K = max(g.pred.shape[1] for g in graphs)
    if K > 127:
        raise ValueError(f"a state has {K} predecessors; int8 backpointers hold at most 127")
    pred = torch.zeros((B, S, K), dtype=torch.int64)
    pred_lp = torch.full((B, S, K), neg, dtype=dtype)
    for b, g in enumerate(graphs):
        pred[b, : g.num_states, : g.pred.shape[1]] = torch.from_numpy(g.pred)
        pred_lp[b, : g.num_states, : g.pred.shape[1]] = torch.from_numpy(g.pred_logp)
    pred, pred_lp = pred.to(device), pred_lp.to(device)
    flat_pred = pred.view(B, S * K)
    init = _pad([g.init_logp for g in graphs], S, neg, dtype, device)
    final = _pad([g.final_logp for g in graphs], S, neg, dtype, device)
    ends = torch.tensor([max(n - 1, 0) for n in lengths], device=device)
    end_at: dict[int, list[int]] = {}
    for b, n in enumerate(lengths):
        if n:
            end_at.setdefault(n - 1, []).append(b)

    bp = torch.zeros((T, B, S), dtype=torch.int8, device=device)
    last = torch.full((B, S), neg, dtype=dtype, device=device)
    delta = init + am[:, 0]
    for t in range(T):
        if t > 0:
            cand = delta.gather(1, flat_pred).view(B, S, K) + pred_lp  # (B, S, K)
            best, choice = cand.max(2)
            delta = best + am[:, t]
            bp[t] = choice.to(torch.int8)
        if t in end_at:
            idx = torch.tensor(end_at[t], device=device)
            last[idx] = delta[idx]
    scores, cur = (last + final).max(1)

    rows = torch.arange(B, device=device)
    path = torch.zeros((B, T), dtype=torch.int64, device=device)
    for t in range(T - 1, -1, -1):
        path[:, t] = cur
        if t == 0:
            break
        prev = pred[rows, cur, bp[t, rows, cur].long()]
        cur = torch.where(t <= ends, prev, cur)
    path_np = path.cpu().numpy().astype(np.int32)
    out: list[np.ndarray | None] = []
    score_list: list[float] = []
    for b, n in enumerate(lengths):
        sc = float(scores[b])
        ok = n >= graphs[b].min_frames and n > 0 and math.isfinite(sc)
        out.append(path_np[b, :n].copy() if ok else None)
        score_list.append(sc if ok else neg)
    return out, score_list


def viterbi_batch(
    logliks: Sequence[Tensor],
    graphs: Sequence[UttGraph],
    device: str | torch.device | None = None,
    max_cells: int = 20_000_000,
) -> tuple[list[np.ndarray | None], list[float]]:
    """:func:`viterbi` over any number of utterances, batched by similar length.

    Batches are cut so that ``B * T_max * S_max`` stays under ``max_cells``
    (memory: ~5 bytes per cell for float32 scores plus int8 backpointers).
    Results come back in input order.
    """
    order = sorted(range(len(graphs)), key=lambda i: (logliks[i].shape[0], graphs[i].num_states))
    paths: list[np.ndarray | None] = [None] * len(graphs)
    scores = [-math.inf] * len(graphs)
    start = 0
    while start < len(order):
        end = start + 1
        t_max, s_max = logliks[order[start]].shape[0], graphs[order[start]].num_states
        while end < len(order):
            t2 = max(t_max, logliks[order[end]].shape[0])
            s2 = max(s_max, graphs[order[end]].num_states)
            if (end - start + 1) * max(t2, 1) * s2 > max_cells:
                break
            t_max, s_max, end = t2, s2, end + 1
        idx = order[start:end]
        p, s = viterbi([logliks[i] for i in idx], [graphs[i] for i in idx], device)
        for i, pi, si in zip(idx, p, s):
            paths[i], scores[i] = pi, si
        start = end
    return paths, scores

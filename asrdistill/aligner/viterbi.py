"""Batched Viterbi over utterance state graphs (:class:`~asrdistill.aligner.utt_graph.UttGraph`).

Utterances are sorted by length and packed into batches of padded tensors
(B, T, S); each time step takes, per state, the max over its three possible
predecessors (stay, advance, skip an optional phone) for the whole batch at
once. Backpointers are stored as int8 choices (0 stay, 1 advance, 2 skip), so
memory is one byte per (frame, state). Works on any torch device.

An utterance with no complete path (too few frames for its graph, or only
-inf scores) gets ``None`` rather than a made-up alignment.
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


def viterbi(logliks: Sequence[Tensor], graphs: Sequence[UttGraph], device: str | torch.device | None = None
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
    self_lp = _pad([g.self_logp for g in graphs], S, neg, dtype, device)
    adv_lp = _pad([g.adv_logp for g in graphs], S, neg, dtype, device)
    skip_lp = _pad([g.skip_logp for g in graphs], S, neg, dtype, device)
    init = _pad([g.init_logp for g in graphs], S, neg, dtype, device)
    final = _pad([g.final_logp for g in graphs], S, neg, dtype, device)
    skip_from = _pad([np.maximum(g.skip_from, 0) for g in graphs], S, 0, torch.int64, device)
    ends = torch.tensor([max(n - 1, 0) for n in lengths], device=device)
    end_at: dict[int, list[int]] = {}
    for b, n in enumerate(lengths):
        if n:
            end_at.setdefault(n - 1, []).append(b)

    bp = torch.zeros((T, B, S), dtype=torch.int8, device=device)
    last = torch.full((B, S), neg, dtype=dtype, device=device)
    neg_col = torch.full((B, 1), neg, dtype=dtype, device=device)
    delta = init + am[:, 0]
    for t in range(T):
        if t > 0:
            cand = torch.stack([delta + self_lp,
                                torch.cat([neg_col, delta[:, :-1]], 1) + adv_lp,
                                delta.gather(1, skip_from) + skip_lp])
            best, choice = cand.max(0)
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
        choice = bp[t, rows, cur].long()
        prev = torch.where(choice == 0, cur, torch.where(choice == 1, cur - 1, skip_from[rows, cur]))
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


def viterbi_batch(logliks: Sequence[Tensor], graphs: Sequence[UttGraph], device: str | torch.device | None = None,
                  max_cells: int = 20_000_000) -> tuple[list[np.ndarray | None], list[float]]:
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

"""H, the HMM side of HCLG: what each context window's HMM is, and H o D expanded on arrays.

There are no transition-ids (see :mod:`~asrdistill.decoding.hclg`): H's labels stand for
``(phone, HMM state, senone)``, and context windows whose label sequences are equal share
an HMM id (:func:`hmm_labels`). :func:`~asrdistill.decoding.hclg.build_graph` determinises
CLG over those ids (D), and :func:`expand_hmm` then replaces each of D's arcs by its HMM's
labels, the arcs of a state sharing their common prefixes as determinising H o CLG would
make them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asrdistill.aligner.topology import Topology
from asrdistill.aligner.tree import ContextTree
from asrdistill.decoding.const_fst import FstArrays, make_arrays

__all__ = ["HmmLabels", "hmm_labels", "expand_hmm"]


@dataclass
class HmmLabels:
    """What H maps each context window to (:func:`hmm_labels`)."""

    window_id: np.ndarray  # (windows,) HMM id of each context window (disambiguation windows: first_disambig..)
    seqs: np.ndarray  # (first_disambig, max states) each HMM id's labels, padded with 0
    label_cost: np.ndarray  # (labels + 1,) cost of leaving each label's HMM state
    triples: list[tuple[int, int, int]]  # (phone, HMM state, senone) of labels 1..N
    first_disambig: int  # HMM ids from here on are disambiguation symbols


def hmm_labels(
    ilabels: list[list[int]], tree: ContextTree, topo: Topology, num_phones: int, self_loop_scale: float
) -> HmmLabels:
    """What H maps each context window to: the labels of its HMM states, as an HMM id.

    Labels ``1..N`` stand for ``(phone, state, senone)`` triples (returned, in
    label order: first use by window, then state). Windows whose label
    sequences are equal (the tree ties them) share an HMM id ``1..K``, numbered
    in lexicographic order of the sequences; windows that are disambiguation
    symbols (Kaldi's ``#-1`` and ``#k``) get ids ``K+1..`` so they survive
    determinisation, and the epsilon window keeps 0 (``first_disambig`` = K+1).
    A label's cost is that of leaving its HMM state, so a path's
    total is the HMM's transition cost however many self-loops it takes. Senones
    come from :meth:`ContextTree.pdfs`.
    """
    sizes = np.array([len(w) for w in ilabels], dtype=np.int64)
    bad = np.flatnonzero((sizes != 0) & (sizes != 1) & (sizes != 3))
    if len(bad):
        raise ValueError(f"context window {ilabels[bad[0]]} is not a triphone")
    tri_idx = np.flatnonzero(sizes == 3)
    windows = np.array([ilabels[i] for i in tri_idx], dtype=np.int64).reshape(-1, 3)
    left, center, right = windows.T
    bad = np.flatnonzero((center < 1) | (center > num_phones))
    if len(bad):
        raise ValueError(f"context window {windows[bad[0]].tolist()} has no real centre phone")
    max_s = max(topo.num_states)
    loops = np.full((len(topo.num_states), max_s), np.nan)
    for c, probs in enumerate(topo.self_loop):
        loops[c, : len(probs)] = probs
    n = np.asarray(topo.num_states, dtype=np.int64)[center]  # HMM states per window
    win = np.repeat(np.arange(len(windows)), n)  # one row per (window, state)
    state = np.arange(len(win)) - np.repeat(np.cumsum(n) - n, n)
    c = center[win]
    loop = loops[c, state]
    bad = np.flatnonzero(~((loop >= 0.0) & (loop < 1.0)))
    if len(bad):
        raise ValueError(
            f"topology: self-loop probability {loop[bad[0]]} of phone {c[bad[0]]} state {state[bad[0]]} not in [0, 1)"
        )
    pdf = tree.pdfs(left[win], c, right[win], state)
    bad = np.flatnonzero((pdf < 0) | (pdf >= tree.num_pdfs))
    if len(bad):
        b = bad[0]
        raise ValueError(
            f"tree gives senone {pdf[b]} for {(left[win[b]], c[b], right[win[b]], state[b])}; num_pdfs={tree.num_pdfs}"
        )
    key = (c * max_s + state) * tree.num_pdfs + pdf
    uniq, first_use, inverse = np.unique(key, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first_use, kind="stable")] = np.arange(len(uniq))
    label = rank[inverse] + 1
    by_label = uniq[np.argsort(rank)]
    triples = [
        (int(k // tree.num_pdfs // max_s), int(k // tree.num_pdfs % max_s), int(k % tree.num_pdfs)) for k in by_label
    ]
    label_cost = np.zeros(len(triples) + 1)
    label_cost[label] = -self_loop_scale * np.log1p(-loop)
    rows = np.zeros((len(windows), max_s), dtype=np.int32)  # each window's label sequence
    rows[win, state] = label
    seqs, hmm = np.unique(rows, axis=0, return_inverse=True)  # lexicographic order
    seqs = np.concatenate([np.zeros((1, max_s), dtype=np.int32), seqs])
    first_disambig = len(seqs)
    window_id = np.zeros(len(ilabels), dtype=np.int32)
    window_id[tri_idx] = hmm.reshape(-1) + 1
    window_id[sizes == 1] = first_disambig + np.arange(int((sizes == 1).sum()))
    return HmmLabels(window_id, seqs, label_cost, triples, first_disambig)


def expand_hmm(fst: FstArrays, seqs: np.ndarray, label_cost: np.ndarray) -> FstArrays:
    """H o D on arrays: each arc with HMM id ``k`` becomes the chain of its labels ``seqs[k]``.

    ``fst`` (D) is CLG over HMM ids, determinised and minimised. A state's arcs
    share their common label prefixes (a trie: what determinising H o CLG makes
    of them, as the label sequences form a prefix-free code); a shared arc
    carries the log-sum of the weights of the paths below it (Kaldi
    determinises in the log semiring), and an arc's output label and the rest
    of its weight sit on its first label of its own. The chain after that is
    shared by every arc with the same HMM into the same state. Epsilon-input
    arcs stay as they are. Every path keeps its weight: the parts telescope.
    """
    num_states, width, start = len(fst.states), seqs.shape[1], fst.start
    final = fst.states["final"].copy()
    pieces, src, hmm, olabel, dst, total = _arcs_by_hmm(fst, seqs, label_cost)
    del fst  # the caller's was the only other reference: D is freed here
    lens = (seqs > 0).sum(axis=1).astype(np.int8)
    n = lens[hmm]
    num = len(hmm)
    same = np.zeros(num, dtype=bool)  # same state and same labels so far as the arc before
    same[1:] = src[1:] == src[:-1]
    came_from = src.astype(np.int32)  # each arc's node at this depth
    del src
    pushed = np.zeros(num)  # weight already on the shared arcs above it
    depth = np.full(num, -1, dtype=np.int8)  # depth of the arc's own label
    own_from = np.empty(num, dtype=np.int32)
    own_weight = np.empty(num, dtype=np.float32)
    next_id = num_states
    for j in range(width):
        live = depth < 0
        if j and not live.any():
            break
        lab = seqs[hmm, j]
        same[1:] &= lab[1:] == lab[:-1]
        starts = np.flatnonzero(~same)
        run = np.cumsum(~same, dtype=np.int32) - 1
        size = np.diff(np.append(starts, num)).astype(np.int32)[run]
        shared = live & (size >= 2) & (j < n - 1)
        own = live & ~shared
        depth[own] = j
        own_from[own] = came_from[own]
        own_weight[own] = (total - pushed)[own]
        logsum = -np.logaddexp.reduceat(-total, starts)[run]
        head = shared & ~same  # one arc per shared run, to a new trie node
        # runs are contiguous: each arc of a shared run gets its head's new node
        node = np.maximum.accumulate(np.where(head, next_id + np.cumsum(head, dtype=np.int32) - 1, 0))
        next_id += int(head.sum())
        pieces.append(
            [
                came_from[head],
                lab[head],
                np.zeros(int(head.sum()), dtype=np.int32),
                (logsum - pushed)[head].astype(np.float32),
                node[head].astype(np.int32),
            ]
        )
        pushed = np.where(shared, logsum, pushed)
        came_from = np.where(shared, node, came_from)
    del same, came_from, pushed, total, lab, starts, run, size, live, shared, own, logsum, head, node
    # the chain after an own label: one per (next state, HMM), from the shallowest depth an arc needs
    need = depth < n - 1
    pairs, inverse = np.unique(dst[need].astype(np.int64) * len(seqs) + hmm[need], return_inverse=True)
    first = np.full(len(pairs), width, dtype=np.int64)
    np.minimum.at(first, inverse, depth[need] + 1)
    pair_dst, pair_hmm = pairs // len(seqs), pairs % len(seqs)
    count = lens[pair_hmm] - first
    base = next_id + np.cumsum(count) - count - first  # state of (pair, j) is base + j
    to = dst.copy()
    to[need] = base[inverse] + depth[need] + 1
    pieces.append([own_from, seqs[hmm, depth], olabel, own_weight, to])
    del need, inverse, to, own_from, own_weight, olabel, dst
    pieces.append(_chain_arcs(seqs, lens, base, count, first, pair_dst, pair_hmm))
    total_states = next_id + int(count.sum())
    del pairs, first, pair_dst, pair_hmm, base, count, hmm, n, depth
    final = np.concatenate([final, np.full(total_states - num_states, np.inf, dtype=np.float32)])
    return make_arrays(total_states, start, *_concatenate(pieces), final)


def _chain_arcs(
    seqs: np.ndarray,
    lens: np.ndarray,
    base: np.ndarray,
    count: np.ndarray,
    first: np.ndarray,
    pair_dst: np.ndarray,
    pair_hmm: np.ndarray,
) -> list[np.ndarray]:
    """The arcs of :func:`expand_hmm`'s shared chains, as one piece: chain ``i`` (into state ``pair_dst[i]``, HMM
    ``pair_hmm[i]``) has ``count[i]`` arcs from depth ``first[i]`` on, its state at depth ``j`` being
    ``base[i] + j``; its last arc enters ``pair_dst[i]``. Its own function so its index arrays are freed on return."""
    p = np.repeat(np.arange(len(count)), count)
    j = np.arange(len(p)) - np.repeat(np.cumsum(count) - count, count) + first[p]
    return [
        (base[p] + j).astype(np.int32),
        seqs[pair_hmm[p], j],
        np.zeros(len(p), dtype=np.int32),
        np.zeros(len(p), dtype=np.float32),
        np.where(j == lens[pair_hmm[p]] - 1, pair_dst[p], base[p] + j + 1).astype(np.int32),
    ]


def _arcs_by_hmm(fst: FstArrays, seqs: np.ndarray, label_cost: np.ndarray) -> tuple[list[list[np.ndarray]], ...]:
    """D's arcs for :func:`expand_hmm`: ``[epsilon-input arcs]`` (the first piece of the result, as they are), then
    the others as columns ``src, hmm, olabel, dst`` sorted by state, then HMM id (arcs that share a label prefix
    are runs), and ``total``: each one's weight plus its HMM's label costs."""
    ilabel = fst.arcs["ilabel"]
    sources = fst.sources()
    order = np.lexsort((ilabel, sources))  # by state, then HMM: prefix groups are runs
    order = order[ilabel[order] > 0]
    eps = np.flatnonzero(ilabel == 0)
    pieces = [[sources[eps], ilabel[eps], fst.arcs["olabel"][eps], fst.arcs["weight"][eps], fst.arcs["nextstate"][eps]]]
    src, hmm = sources[order], ilabel[order]
    olabel, dst = fst.arcs["olabel"][order], fst.arcs["nextstate"][order]
    total = fst.arcs["weight"][order].astype(np.float64) + label_cost[seqs].sum(axis=1)[hmm]
    return pieces, src, hmm, olabel, dst, total


def _concatenate(pieces: list[list[np.ndarray | None]]) -> list[np.ndarray]:
    """The five arc columns of all pieces joined, column by column, each piece's part freed once copied (the pieces
    are left empty): the arcs are never held twice over."""
    cols = []
    for i in range(5):
        cols.append(np.concatenate([piece[i] for piece in pieces]))
        for piece in pieces:
            piece[i] = None
    return cols

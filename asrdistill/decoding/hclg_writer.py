"""HCLG.fst written: self-loops added, states numbered breadth-first, labels mapped to senones.

The last step of :func:`~asrdistill.decoding.hclg.build_graph`, done while writing: the
graph with self-loops is larger than the one without (copies of split states, a loop arc
per HMM state), so it is never built in memory. Its states and arcs go straight into the
ConstFst records (:mod:`~asrdistill.decoding.const_fst`), one chunk of states at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asrdistill.decoding.const_fst import ARC, STATE, FstArrays, const_header

__all__ = ["write_hclg"]

_CHUNK = 1 << 20  # states or arcs per step of the array passes (bounds their temporaries)


def write_hclg(fst: FstArrays, loop_cost: np.ndarray, label2pdf: np.ndarray, path: Path) -> tuple[int, int]:
    """Add self-loops, map labels to senones and write the ConstFst, streaming one chunk of states at a time.

    Self-loops as Kaldi's ``add-self-loops``: a state entered by one label (and
    not the start, nor by epsilon) gets that label's loop in place; otherwise it
    is copied once per entering label, so a loop never applies to a path that did
    not enter its HMM state. A copy keeps its original's arcs; an original whose
    entering arcs all went to copies is unreachable and left out (every state of
    ``fst`` must be reachable from the start). ``loop_cost[label]`` is inf for HMM
    states without a loop. States are numbered breadth-first from the start (see
    :func:`_breadth_first`); arcs are sorted by senone label within each state and
    written straight to ``path``: the graph with loops is never held in memory.
    Returns (states, arcs).
    """
    base, loop_label, dst, start = _self_loop_states(fst)
    order = _breadth_first(start, fst.states["pos"][base], fst.states["narcs"][base], dst)
    base, loop_label = base[order], loop_label[order]  # here, not in a helper: the old arrays are freed now
    new_id = np.empty(len(order), dtype=np.int32)
    new_id[order] = np.arange(len(order), dtype=np.int32)
    del order
    for lo in range(0, len(dst), _CHUNK):
        dst[lo : lo + _CHUNK] = new_id[dst[lo : lo + _CHUNK]]
    start = int(new_id[start])
    del new_id
    return _write_records(fst, start, base, dst, loop_label, loop_cost, label2pdf, path)


def _self_loop_states(fst: FstArrays) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The states of the graph with self-loops, as ``(base, loop_label, dst, start)``.

    ``base[q]``: the state of ``fst`` that state ``q`` is (or copies); ``loop_label[q]``:
    the label of its self-loop (0: none); ``dst``: (A,) each arc's next state in the new
    numbering (an arc into a split state goes to the copy for its label); ``start``: the
    new start. Kept states come first in their old order, then the copies by (state, label).
    """
    num_states, arcs = len(fst.states), fst.arcs
    nextstate, ilabel = arcs["nextstate"], arcs["ilabel"]
    labelled = ilabel > 0
    low = np.full(num_states, np.iinfo(np.int32).max, dtype=np.int32)  # smallest and largest label entering
    high = np.zeros(num_states, dtype=np.int32)
    np.minimum.at(low, nextstate[labelled], ilabel[labelled])
    np.maximum.at(high, nextstate[labelled], ilabel[labelled])
    eps_in = np.zeros(num_states, dtype=bool)
    eps_in[nextstate[~labelled]] = True
    eps_in[fst.start] = True
    split = (high > 0) & ((low < high) | eps_in)  # entered by a label and by anything else: copies
    keep = ~split | eps_in
    loop_label = np.where((high > 0) & ~split, high, 0)[keep]  # the in-place loops
    del low, high
    new_id = (np.cumsum(keep, dtype=np.int64) - 1).astype(np.int32)
    num_kept, start = int(keep.sum()), int(new_id[fst.start])
    dst = new_id[nextstate]  # (A,) int32; arcs into split states below
    del new_id
    into_split = np.flatnonzero(labelled & split[nextstate])
    del labelled, eps_in
    width = np.int64(ilabel.max(initial=0)) + 1
    pairs = np.unique(nextstate[into_split].astype(np.int64) * width + ilabel[into_split])  # (state, label)
    for lo in range(0, len(into_split), _CHUNK):
        sel = into_split[lo : lo + _CHUNK]
        dst[sel] = num_kept + np.searchsorted(pairs, nextstate[sel].astype(np.int64) * width + ilabel[sel])
    del into_split, split
    base = np.concatenate([np.flatnonzero(keep).astype(np.int32), (pairs // width).astype(np.int32)])
    loop_label = np.concatenate([loop_label, (pairs % width).astype(np.int32)])
    del keep, pairs
    return base, loop_label, dst, start


def _write_records(
    fst: FstArrays,
    start: int,
    base: np.ndarray,
    dst: np.ndarray,
    loop_label: np.ndarray,
    loop_cost: np.ndarray,
    label2pdf: np.ndarray,
    path: Path,
) -> tuple[int, int]:
    """Write the ConstFst whose state ``q`` is ``fst``'s state ``base[q]`` with its arcs going to ``dst``, plus a
    self-loop labelled ``loop_label[q]`` where that label's ``loop_cost`` is finite; labels mapped by ``label2pdf``,
    each state's arcs sorted by them. State records first, then arcs, a chunk of states at a time. Returns
    (states, arcs)."""
    arcs = fst.arcs
    has_loop = loop_label > 0
    has_loop[has_loop] = np.isfinite(loop_cost[loop_label[has_loop]])
    old_narcs = fst.states["narcs"][base]
    narcs = old_narcs + has_loop
    num_arcs = int(narcs.sum(dtype=np.uint64))
    with open(path, "wb") as f:
        f.write(const_header(start, len(base), num_arcs))
        pos = np.uint64(0)
        for lo in range(0, len(base), _CHUNK):  # the state records
            hi = min(lo + _CHUNK, len(base))
            states = np.zeros(hi - lo, dtype=STATE)
            states["final"] = fst.states["final"][base[lo:hi]]
            states["narcs"] = narcs[lo:hi]
            states["pos"] = pos + np.cumsum(narcs[lo:hi], dtype=np.uint64) - narcs[lo:hi]
            states["niepsilons"] = fst.states["niepsilons"][base[lo:hi]]
            states["noepsilons"] = fst.states["noepsilons"][base[lo:hi]] + has_loop[lo:hi]  # a loop outputs epsilon
            pos += np.uint64(narcs[lo:hi].sum(dtype=np.uint64))
            states.tofile(f)
        for lo in range(0, len(base), _CHUNK):  # the arcs, each state's sorted by label
            hi = min(lo + _CHUNK, len(base))
            n = old_narcs[lo:hi].astype(np.int64)
            take = _arc_range(fst.states["pos"][base[lo:hi]], n)
            loops = np.flatnonzero(has_loop[lo:hi]) + lo
            chunk = np.empty(len(take) + len(loops), dtype=ARC)
            chunk[: len(take)] = arcs[take]
            chunk["nextstate"][: len(take)] = dst[take]
            chunk["ilabel"][len(take) :] = loop_label[loops]
            chunk["olabel"][len(take) :] = 0
            chunk["weight"][len(take) :] = loop_cost[loop_label[loops]]
            chunk["nextstate"][len(take) :] = loops
            chunk["ilabel"] = label2pdf[chunk["ilabel"]]
            owner = np.concatenate([np.repeat(np.arange(lo, hi), n), loops])
            chunk[np.lexsort((chunk["ilabel"], owner))].tofile(f)
    return len(base), num_arcs


def _arc_range(first_arc: np.ndarray, narcs: np.ndarray) -> np.ndarray:
    """Indices of the arcs of some states, state by state: ``first_arc[i] .. first_arc[i] + narcs[i] - 1``."""
    n = narcs.astype(np.int64)
    return np.repeat(first_arc.astype(np.int64) - np.cumsum(n) + n, n) + np.arange(int(n.sum()))


def _breadth_first(start: int, first_arc: np.ndarray, narcs: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """States in breadth-first order from ``start``, each state's successors in the order of its arcs.

    State ``q``'s arcs go to ``dst[first_arc[q]:first_arc[q] + narcs[q]]``.
    Expanding H numbers its trie and chain states after all of D's, so a
    state's successors would lie far from it; the decoder reads a state's
    arcs and then its successors', and in this order they are near each other
    in memory (on the 26k-word rehearsal graph the search was 27% slower than
    on the old builder's graph without this order, 3% with it; BENCHMARKS.md).
    One vectorised round per level; states not reached from the start come
    last, in their own order.
    """
    seen = np.zeros(len(narcs), dtype=bool)
    seen[start] = True
    frontier = np.array([start], dtype=np.int32)
    levels = [frontier]
    while len(frontier):
        succ = dst[_arc_range(first_arc[frontier], narcs[frontier])]
        succ = succ[~seen[succ]]
        _, first = np.unique(succ, return_index=True)
        frontier = succ[np.sort(first)].astype(np.int32)  # in order of first appearance
        seen[frontier] = True
        levels.append(frontier)
    levels.append(np.flatnonzero(~seen))
    return np.concatenate(levels)

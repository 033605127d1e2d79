"""The HCLG decoding graph: HMM (H) o context (C) o lexicon (L) o grammar (G).

Built the Kaldi way (``mkgraph.sh``) from the pieces the toolkit already has:

* L: the lexicon with optional silence between words and disambiguation
  symbols ``#1..`` on homophones and prefix pronunciations (``#0`` passes G's
  back-off arcs through), as Kaldi's ``add_lex_disambig.pl`` + ``make_lexicon_fst.py``;
* G: the ARPA LM via ``kaldilm.arpa2fst`` with ``#0`` on back-off arcs;
* C: ``kaldifst.compose_context`` (triphone windows, 0 = utterance edge);
* H: every window -> its HMM states' senones via the decision tree
  (:meth:`ContextTree.pdf`), with transition costs from :class:`Topology`.

``kaldi_decoder.DecodableCtc`` reads the score of input label ``i`` from
column ``i - 1`` of a plain matrix: there are no transition-ids. So H is built
over labels that identify ``(phone, HMM state, senone)`` (enough to know the
self-loop probability); the graph is determinised and minimised on those,
disambiguation symbols are removed, self-loops are added as explicit arcs on
states entered by one such label (splitting states where needed, as Kaldi's
``add-self-loops``), and only then are labels mapped to ``senone + 1``. Every
input label consumes one frame; epsilon-input arcs (left by disambiguation
removal) are checked to form no cycle.

OpenFst (kaldifst) does compose, determinise, minimise, rmepsilon, connect and
arcsort; the passes it lacks (building L and H, the disambiguation clean-up,
self-loops, senone relabelling, the epsilon-cycle check) run on numpy arrays in
OpenFst's ConstFst record layout (16 bytes an arc), and each intermediate FST
is freed once used. Before building, the peak memory is estimated from the LM
and lexicon sizes and checked against ``max_memory_gb``.
"""

from __future__ import annotations

import ctypes
import gzip
import json
import logging
import math
import resource
import shutil
import struct
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import kaldifst
import kaldilm
import numpy as np

from asrdistill.aligner.topology import Topology
from asrdistill.aligner.tree import ContextTree, tree_sha256
from asrdistill.config import to_dict
from asrdistill.fileio import atomic_open, atomic_path, mark_done, write_json_atomic
from asrdistill.data.lang import SIL, Lang
from asrdistill.decoding.lm import arpa_vocabulary, ngram_counts

__all__ = ["GraphConfig", "build_graph", "add_lex_disambig", "pdf_sequence", "load_graph_info", "check_labels_match_graph",
           "estimate_graph_memory_gb"]

log = logging.getLogger(__name__)

GRAPH_EXTRA_WORDS = ["#0", "<s>", "</s>"]  # appended to words.txt for G (never output by HCLG)


@dataclass
class GraphConfig:
    sil_prob: float = 0.5          # optional silence between words (0: none)
    self_loop_scale: float = 0.1   # scale of HMM transition log-probs (Kaldi's hybrid default)
    arpa_warnings: int = 5         # kaldilm warnings shown for n-grams with unknown words
    max_memory_gb: float = 0.0     # refuse to build when the estimated peak is above this (0: memory available now)
    pron_probs: str = ""           # a lexiconp.txt (the aligner writes one per set): -log prob on each pronunciation
                                   # ("": every pronunciation free, as in a plain lexicon.txt)


def add_lex_disambig(lexicon: list[tuple[str, tuple[str, ...]]]) -> tuple[list[tuple[str, tuple[str, ...], int]], int]:
    """Tag pronunciations that are homophones or prefixes of others with ``#k`` (k >= 1).

    Returns ``[(word, phones, k or 0)]`` and the largest ``k`` used; without
    them L o G could not be determinised (Kaldi's ``add_lex_disambig.pl``).
    """
    count: dict[tuple[str, ...], int] = defaultdict(int)
    prefixes: set[tuple[str, ...]] = set()
    for _, pron in lexicon:
        count[pron] += 1
        prefixes.update(pron[:i] for i in range(1, len(pron)))
    used: dict[tuple[str, ...], int] = defaultdict(int)
    out = []
    for word, pron in lexicon:
        k = 0
        if count[pron] > 1 or pron in prefixes:
            used[pron] += 1
            k = used[pron]
        out.append((word, pron, k))
    return out, max(used.values(), default=0)


# --- FSTs as numpy arrays: OpenFst's ConstFst file layout (states and arcs as fixed-size records) ---

_STATE = np.dtype([("final", "<f4"), ("pos", "<u4"), ("narcs", "<u4"), ("niepsilons", "<u4"), ("noepsilons", "<u4")])
_ARC = np.dtype([("ilabel", "<i4"), ("olabel", "<i4"), ("weight", "<f4"), ("nextstate", "<i4")])
_MAGIC = 2125659606
_EXPANDED = 0x1  # the only property claimed: OpenFst works out the rest when it needs them
_CHUNK = 1 << 20  # states or arcs per step of the array passes (bounds their temporaries)


@dataclass
class _Arrays:
    """An FST as arrays: arcs grouped by source state (``states["pos"]`` is each state's first arc)."""

    start: int
    states: np.ndarray  # (S,) _STATE; final = inf for non-final states
    arcs: np.ndarray    # (A,) _ARC

    def sources(self) -> np.ndarray:
        """(A,) source state of every arc."""
        return np.repeat(np.arange(len(self.states), dtype=np.int32), self.states["narcs"])


def _save_const(fst: kaldifst.StdFst, path: Path) -> Path:
    """Write ``fst`` as a ConstFst file, so that the caller can free it before :func:`_read_arrays`."""
    kaldifst.StdConstFst(fst).write(str(path))
    return path


def _read_arrays(path: Path) -> _Arrays:
    """Arrays of a ConstFst file, which is then removed."""
    with open(path, "rb") as f:
        head = f.read(4096)
    offset = 4
    for _ in range(2):  # fst type and arc type strings
        (n,) = struct.unpack_from("<i", head, offset)
        offset += 4 + n
    if struct.unpack_from("<i", head, 0)[0] != _MAGIC or head[8:13] != b"const":
        raise ValueError(f"{path}: not a ConstFst file")
    _version, flags, _props, start, num_states, num_arcs = struct.unpack_from("<iiQqqq", head, offset)
    if flags & 0x4:  # aligned files pad between sections; kaldifst writes unaligned ones
        raise ValueError(f"{path}: aligned ConstFst files are not supported")
    offset += 40
    states = np.fromfile(path, dtype=_STATE, count=num_states, offset=offset)
    arcs = np.fromfile(path, dtype=_ARC, count=num_arcs, offset=offset + num_states * _STATE.itemsize)
    path.unlink()
    return _Arrays(int(start), states, arcs)


def _write_const(fst: _Arrays, path: Path) -> Path:
    """Write arrays as a ConstFst file (so the arrays can be freed before OpenFst reads it)."""
    states, arcs = fst.states, fst.arcs
    header = b"".join([struct.pack("<i", _MAGIC), struct.pack("<i", 5), b"const", struct.pack("<i", 8), b"standard",
                       struct.pack("<iiQqqq", 2, 0, _EXPANDED, fst.start, len(states), len(arcs))])
    with open(path, "wb") as f:
        f.write(header)
        states.tofile(f)
        arcs.tofile(f)
    return path


def _read_vector(path: Path) -> kaldifst.StdVectorFst:
    """A VectorFst from a ConstFst file, which is then removed."""
    out = kaldifst.StdVectorFst(kaldifst.StdConstFst.read(str(path)))
    path.unlink()
    return out


def _from_arrays(fst: _Arrays, tmp: Path) -> kaldifst.StdVectorFst:
    """A VectorFst from arrays (through a ConstFst file in ``tmp``)."""
    return _read_vector(_write_const(fst, tmp / "from_arrays.fst"))


def _make_arrays(num_states: int, start: int, src: np.ndarray, ilabel: np.ndarray, olabel: np.ndarray,
                 weight: np.ndarray, dst: np.ndarray, final: np.ndarray) -> _Arrays:
    """Arrays from per-arc columns in any order (sorted by source, stably) and (S,) final weights."""
    src = np.asarray(src)
    order = np.argsort(src, kind="stable") if len(src) and np.any(src[1:] < src[:-1]) else None
    arcs = np.empty(len(src), dtype=_ARC)
    for name, col in (("ilabel", ilabel), ("olabel", olabel), ("weight", weight), ("nextstate", dst)):
        col = np.asarray(col)
        arcs[name] = col if order is None else col[order]
    del order
    states = np.zeros(num_states, dtype=_STATE)
    states["final"] = final
    states["narcs"] = np.bincount(src, minlength=num_states)
    states["pos"][1:] = np.cumsum(states["narcs"][:-1], dtype=np.uint64)
    srcs = np.repeat(np.arange(num_states), states["narcs"])
    states["niepsilons"] = np.bincount(srcs, weights=arcs["ilabel"] == 0, minlength=num_states)
    states["noepsilons"] = np.bincount(srcs, weights=arcs["olabel"] == 0, minlength=num_states)
    return _Arrays(start, states, arcs)


def _make_fst(num_states: int, start: int, arcs: list[tuple[int, int, int, float, int]] | np.ndarray,
              finals: dict[int, float], tmp: Path) -> kaldifst.StdVectorFst:
    """A VectorFst from ``(src, ilabel, olabel, cost, dst)`` rows."""
    a = np.asarray(arcs, dtype=np.float64).reshape(-1, 5)
    final = np.full(num_states, np.inf, dtype=np.float32)
    final[list(finals)] = list(finals.values())
    cols = [a[:, i].astype(np.int64) for i in (0, 1, 2, 4)]
    return _from_arrays(_make_arrays(num_states, start, cols[0], cols[1], cols[2], a[:, 3], cols[3], final), tmp)


def _lexicon_fst(entries: list[tuple[str, tuple[str, ...], int]], phone_id: dict[str, int],
                 word_id: dict[str, int], disambig0: int, word_disambig0: int, sil_prob: float,
                 tmp: Path, pron_costs: np.ndarray | None = None) -> kaldifst.StdVectorFst:
    """L with optional silence: start -> (SIL) -> loop; each word loop -> phones -> loop or silence.

    Built on arrays: one row per pronunciation label, each word's chain of states numbered
    after the fixed ones. ``pron_costs`` (one per entry, -log of its probability) go on the
    pronunciation's first arc, as Kaldi's ``make_lexicon_fst.py`` with a ``lexiconp.txt``.
    """
    if not 0.0 <= sil_prob < 1.0:
        raise ValueError(f"sil_prob must be in [0, 1), got {sil_prob}")
    if sil_prob > 0:
        start, loop, sil = 0, 1, 2
        no_sil_cost, sil_cost = -math.log(1.0 - sil_prob), -math.log(sil_prob)
        fixed = [(start, 0, 0, no_sil_cost, loop), (start, 0, 0, sil_cost, sil), (sil, phone_id[SIL], 0, 0.0, loop)]
        first = 3
    else:
        start = loop = 0
        no_sil_cost = 0.0
        fixed, first = [], 1
    lens = np.array([len(p) + (k > 0) for _, p, k in entries], dtype=np.int64)
    labels = np.fromiter((lab for _, pron, k in entries
                          for lab in [*(phone_id[p] for p in pron), *([disambig0 + k] if k else [])]),
                         dtype=np.int64, count=int(lens.sum()))
    ends = np.cumsum(lens)
    begins = ends - lens
    pos = np.arange(len(labels)) - np.repeat(begins, lens)       # position of each label in its word
    last = pos == np.repeat(lens - 1, lens)
    # word e's internal states: first + (begins[e] - e) + 0 .. lens[e]-2
    state0 = first + begins - np.arange(len(entries))
    chain = np.repeat(state0, lens) + pos
    src = np.where(pos == 0, loop, chain - 1)
    dst = np.where(last, loop, chain)
    olabel = np.where(pos == 0, np.repeat([word_id[w] for w, _, _ in entries], lens), 0)
    cost = np.where(last, no_sil_cost, 0.0)
    if pron_costs is not None:
        cost = cost + np.where(pos == 0, np.repeat(pron_costs, lens), 0.0)
    num_states = first + int((lens - 1).sum())
    extra = np.array(fixed + [(loop, disambig0, word_disambig0, 0.0, loop)], dtype=np.float64)  # #0 passes G's back-off
    cols = [src, labels, olabel, cost, dst]
    if sil_prob > 0:  # a word's last label also goes to the silence state
        cols = [np.concatenate([c, c[last]]) for c in cols]
        cols[3][-int(last.sum()):] = sil_cost
        cols[4][-int(last.sum()):] = sil
    rows = np.concatenate([np.stack(cols, axis=1).astype(np.float64), extra])
    fst = _make_fst(num_states, start, rows, {loop: 0.0}, tmp)
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


def _pron_costs(entries: list[tuple[str, tuple[str, ...], int]], lexiconp: str) -> np.ndarray | None:
    """-log probability of each lexicon entry from ``lexiconp`` (None without one); an entry it lacks is an error."""
    if not lexiconp:
        return None
    from asrdistill.aligner.align import read_pron_probs

    probs = read_pron_probs(lexiconp)
    missing = [(w, p) for w, p, _ in entries if (w, p) not in probs]
    if missing:
        w, p = missing[0]
        raise ValueError(f"{lexiconp}: no probability for {len(missing)} lexicon entries, e.g. {w} {' '.join(p)} "
                         "(made for another lexicon?)")
    return -np.log(np.array([probs[(w, p)] for w, p, _ in entries], dtype=np.float64))


def _grammar_fst(arpa: Path, words_txt: Path, tmp: Path, warnings: int) -> kaldifst.StdVectorFst:
    if arpa.suffix == ".gz":
        plain = tmp / "lm.arpa"
        with gzip.open(arpa, "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        arpa = plain
    g_path = tmp / "G.fst"
    kaldilm.arpa2fst(str(arpa), str(g_path), disambig_symbol="#0", read_symbol_table=str(words_txt),
                     max_arpa_warnings=warnings)
    if not g_path.is_file():
        raise ValueError(f"{arpa}: kaldilm.arpa2fst wrote no G.fst")
    return kaldifst.StdVectorFst.read(str(g_path))


def _hmm_fst(ilabels: list[list[int]], tree: ContextTree, topo: Topology, num_phones: int,
             self_loop_scale: float, tmp: Path) -> tuple[kaldifst.StdVectorFst, list[tuple[int, int, int]], int]:
    """H: each context window -> a chain over its HMM states (no self-loops yet).

    Input labels ``1..N`` stand for ``(phone, state, senone)`` triples (returned,
    in label order: first use by window, then state); windows that are
    disambiguation symbols (Kaldi's ``#-1`` and ``#k``) get input labels
    ``N+1..`` so they survive determinisation. The cost of leaving state ``s``
    sits on the arc entering it, so a path's total is the HMM's transition cost
    however many self-loops it takes. Built on arrays, senones by :meth:`ContextTree.pdfs`.
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
        loops[c, :len(probs)] = probs
    n = np.asarray(topo.num_states, dtype=np.int64)[center]                  # HMM states per window
    win = np.repeat(np.arange(len(windows)), n)                            # one row per (window, state)
    state = np.arange(len(win)) - np.repeat(np.cumsum(n) - n, n)
    c = center[win]
    loop = loops[c, state]
    bad = np.flatnonzero(~((loop >= 0.0) & (loop < 1.0)))
    if len(bad):
        raise ValueError(f"topology: self-loop probability {loop[bad[0]]} of phone {c[bad[0]]} state "
                         f"{state[bad[0]]} not in [0, 1)")
    pdf = tree.pdfs(left[win], c, right[win], state)
    bad = np.flatnonzero((pdf < 0) | (pdf >= tree.num_pdfs))
    if len(bad):
        b = bad[0]
        raise ValueError(f"tree gives senone {pdf[b]} for {(left[win[b]], c[b], right[win[b]], state[b])}; "
                         f"num_pdfs={tree.num_pdfs}")
    key = (c * max_s + state) * tree.num_pdfs + pdf
    uniq, first_use, inverse = np.unique(key, return_index=True, return_inverse=True)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[np.argsort(first_use, kind="stable")] = np.arange(len(uniq))
    label = rank[inverse] + 1
    by_label = uniq[np.argsort(rank)]
    triples = [(int(k // tree.num_pdfs // max_s), int(k // tree.num_pdfs % max_s), int(k % tree.num_pdfs))
               for k in by_label]
    base = 1 + np.cumsum(n - 1) - (n - 1)                                  # first internal state per window
    src = np.where(state == 0, 0, base[win] + state - 1)
    dst = np.where(state == n[win] - 1, 0, base[win] + state)
    olabel = np.where(state == 0, tri_idx[win], 0)
    cost = -self_loop_scale * np.log1p(-loop)
    first_disambig = len(triples) + 1
    disambig_windows = np.flatnonzero(sizes == 1)
    zeros = np.zeros(len(disambig_windows), dtype=np.int64)
    num_states = 1 + int((n - 1).sum())
    final = np.full(num_states, np.inf, dtype=np.float32)
    final[0] = 0.0
    fst = _from_arrays(_make_arrays(
        num_states, 0, np.concatenate([src, zeros]),
        np.concatenate([label, first_disambig + np.arange(len(disambig_windows))]),
        np.concatenate([olabel, disambig_windows]), np.concatenate([cost, zeros]),
        np.concatenate([dst, zeros]), final), tmp)
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst, triples, first_disambig


def _add_self_loops(fst: _Arrays, loop_cost: np.ndarray) -> _Arrays:
    """Add each HMM state's self-loop to the graph states entered by its label (Kaldi's add-self-loops).

    A state entered by one label (and not the start, nor by epsilon) gets the
    loop in place; otherwise it is copied once per entering label (copies
    numbered after the existing states, by state then label) so the loop never
    applies to a path that did not enter that HMM state. ``loop_cost[label]``
    is ``inf`` for states without a self-loop. The original of a copied state
    keeps its arcs; it stays reachable only through epsilon or as the start.
    """
    num_states = len(fst.states)
    arcs = fst.arcs
    labelled = arcs["ilabel"] > 0
    width = np.int64(arcs["ilabel"].max(initial=0)) + 1
    key = arcs["nextstate"].astype(np.int64) * width + arcs["ilabel"]      # (A,) (entered state, label)
    pairs = np.unique(key[labelled])
    pair_state = pairs // width
    pair_label = pairs % width
    eps_in = np.zeros(num_states, dtype=bool)
    eps_in[arcs["nextstate"][~labelled]] = True
    eps_in[fst.start] = True
    in_place = (np.bincount(pair_state, minlength=num_states) == 1) & ~eps_in
    pair_in_place = in_place[pair_state]
    copied = ~pair_in_place
    pair_target = pair_state.copy()
    pair_target[copied] = num_states + np.arange(int(copied.sum()))
    base = np.concatenate([np.arange(num_states), pair_state[copied]])     # (Q,) state each new state copies
    loop_label = np.zeros(len(base), dtype=np.int64)
    loop_label[pair_state[pair_in_place]] = pair_label[pair_in_place]
    loop_label[num_states:] = pair_label[copied]
    dst = arcs["nextstate"].copy()                                         # (A,) int32, remapped in chunks
    for lo in range(0, len(arcs), _CHUNK):
        hi = min(lo + _CHUNK, len(arcs))
        sel = np.flatnonzero(labelled[lo:hi]) + lo
        dst[sel] = pair_target[np.searchsorted(pairs, key[sel])]
    del key, labelled, pairs, pair_state, pair_label, pair_in_place, copied, eps_in, in_place, pair_target
    has_loop = loop_label > 0
    has_loop[has_loop] = np.isfinite(loop_cost[loop_label[has_loop]])
    old_narcs = fst.states["narcs"][base]
    states = np.zeros(len(base), dtype=_STATE)
    states["final"] = fst.states["final"][base]
    states["narcs"] = old_narcs + has_loop
    states["pos"][1:] = np.cumsum(states["narcs"][:-1], dtype=np.uint64)
    states["niepsilons"] = fst.states["niepsilons"][base]
    states["noepsilons"] = fst.states["noepsilons"][base] + has_loop   # the loop's output is epsilon
    out = np.empty(int(states["narcs"].sum(dtype=np.uint64)), dtype=_ARC)
    for lo in range(0, len(base), _CHUNK):  # bounded temporaries: one chunk of states at a time
        hi = min(lo + _CHUNK, len(base))
        n = old_narcs[lo:hi].astype(np.int64)
        within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        take = np.repeat(fst.states["pos"][base[lo:hi]].astype(np.int64), n) + within
        put = np.repeat(states["pos"][lo:hi].astype(np.int64), n) + within
        for name in ("ilabel", "olabel", "weight"):
            out[name][put] = arcs[name][take]
        out["nextstate"][put] = dst[take]
        loops = np.flatnonzero(has_loop[lo:hi]) + lo
        at = states["pos"][loops].astype(np.int64) + old_narcs[loops]
        out["ilabel"][at] = loop_label[loops]
        out["olabel"][at] = 0
        out["weight"][at] = loop_cost[loop_label[loops]]
        out["nextstate"][at] = loops
    return _Arrays(fst.start, states, out)


def _accessible_sorted(fst: _Arrays) -> _Arrays:
    """The states a path from the start reaches, renumbered in order, each with its arcs sorted by input label.

    What OpenFst's connect + arcsort do, without a VectorFst copy of the graph.
    After :func:`_add_self_loops` every state is coaccessible (a copy keeps its
    original's arcs), but an original whose entering arcs all went to copies is
    no longer reachable: accessibility is all that connect would change.
    """
    states, arcs = fst.states, fst.arcs
    pos, narcs = states["pos"].astype(np.int64), states["narcs"].astype(np.int64)

    def arcs_of(ids: np.ndarray) -> np.ndarray:
        n = narcs[ids]
        return np.repeat(pos[ids] - np.cumsum(n) + n, n) + np.arange(int(n.sum()))

    reach = np.zeros(len(states), dtype=bool)
    reach[fst.start] = True
    frontier = np.array([fst.start], dtype=np.int64)
    while len(frontier):  # breadth-first, one vectorised step per level
        dst = arcs["nextstate"][arcs_of(frontier)]
        frontier = np.unique(dst[~reach[dst]]).astype(np.int64)
        reach[frontier] = True
    keep = np.flatnonzero(reach)
    new_id = (np.cumsum(reach) - 1).astype(np.int32)
    del reach
    out_states = states[keep]
    out_states["pos"][0] = 0
    out_states["pos"][1:] = np.cumsum(out_states["narcs"][:-1], dtype=np.uint64)
    out_arcs = np.empty(int(out_states["narcs"].sum(dtype=np.uint64)), dtype=_ARC)
    for lo in range(0, len(keep), _CHUNK):  # bounded temporaries: one chunk of states at a time
        ids = keep[lo:lo + _CHUNK]
        chunk = arcs[arcs_of(ids)]
        chunk = chunk[np.lexsort((chunk["ilabel"], np.repeat(np.arange(len(ids)), narcs[ids])))]
        chunk["nextstate"] = new_id[chunk["nextstate"]]
        at = int(out_states["pos"][lo])
        out_arcs[at:at + len(chunk)] = chunk
    return _Arrays(int(new_id[fst.start]), out_states, out_arcs)


def _check_no_epsilon_cycles(fst: _Arrays) -> None:
    """Raise if epsilon-input arcs form a cycle (the decoder would loop without consuming frames).

    Kahn's algorithm on the epsilon sub-graph, one vectorised round per level.
    """
    eps = fst.arcs["ilabel"] == 0
    src, dst = fst.sources()[eps], fst.arcs["nextstate"][eps]
    num_states = len(fst.states)
    indeg = np.bincount(dst, minlength=num_states)
    alive = np.ones(len(src), dtype=bool)
    while alive.any():
        leaving = alive & (indeg[src] == 0)
        if not leaving.any():
            raise ValueError(f"HCLG has a cycle of epsilon-input arcs (through or after state {src[alive][0]})")
        indeg -= np.bincount(dst[leaving], minlength=num_states)
        alive &= ~leaving


# Peak RSS model fitted to builds of benchmarks/bench_graph.py (BENCHMARKS.md, "HCLG at real size") with a
# 70k-word CMUdict lexicon (74,740 pronunciations, 475,497 phones) and a 2,091-leaf tree: 1M n-grams -> 3.93 GB,
# 2M -> 6.85 GB (the determinisation of H o CLG is the peak), over the ~0.52 GB the interpreter and its libraries
# (torch among them) hold before building; per phone from the intercept. Rounded up: an estimate that errs high.
_BYTES_PER_NGRAM = 3000.0
_BYTES_PER_LEXICON_PHONE = 1100.0
_BASE_BYTES = 520e6


def estimate_graph_memory_gb(num_ngrams: int, lexicon_phones: int) -> float:
    """Estimated peak memory (GB) of :func:`build_graph` from the LM's n-grams and the lexicon's phones."""
    return (_BASE_BYTES + _BYTES_PER_NGRAM * num_ngrams + _BYTES_PER_LEXICON_PHONE * lexicon_phones) / 1e9


def _available_memory_gb() -> float:
    """MemAvailable from /proc/meminfo (inf where there is none)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return math.inf


def _trim_heap() -> None:
    """Return the heap memory freed with an OpenFst graph to the OS (glibc's ``malloc_trim``).

    Otherwise glibc keeps it, and the numpy arrays of the next pass (their own
    mappings, not the heap) stack on top of it: measured on a 2M-n-gram build,
    ~2 GB of a freed VectorFst stayed resident under the self-loop pass.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_graph(lang_dir: str | Path, tree_path: str | Path, topo_path: str | Path, arpa_path: str | Path,
                out_dir: str | Path, config: GraphConfig) -> Path:
    """Build ``out_dir/HCLG.fst`` (input labels senone + 1, output labels word ids).

    Also writes ``words.txt`` (the lang's words plus ``#0 <s> </s>``) and
    ``graph.json`` (``num_pdfs`` for the decoder's width check, sizes, counts
    of LM words missing from the lexicon, build time, peak memory), then marks
    ``out_dir`` done (``graph``). Returns ``out_dir``.
    """
    t0, c0 = time.perf_counter(), _cpu_seconds()
    lang_dir, out_dir, arpa_path = Path(lang_dir), Path(out_dir), Path(arpa_path)
    lang = Lang.load(lang_dir)
    tree = ContextTree.load(tree_path)
    topo = Topology.load(topo_path)
    if len(topo.num_states) != len(lang.phones):
        raise ValueError(f"{topo_path}: topology covers {len(topo.num_states) - 1} phones, "
                         f"{lang_dir}/phones.txt has {lang.num_phones}")
    if not arpa_path.is_file():
        raise FileNotFoundError(f"{arpa_path}: ARPA language model not found")
    for extra in GRAPH_EXTRA_WORDS:
        if extra in lang.word_id:
            raise ValueError(f"{lang_dir}/words.txt already contains the reserved symbol {extra!r}")

    entries, max_disambig = add_lex_disambig(lang.lexicon)
    disambig0 = len(lang.phones)                       # phone id of #0; #k is disambig0 + k
    disambig_phones = list(range(disambig0, disambig0 + max_disambig + 1))
    words = lang.words + GRAPH_EXTRA_WORDS
    word_id = {w: i for i, w in enumerate(words)}

    lex_words = {w for w, _ in lang.lexicon}
    lm_words = arpa_vocabulary(arpa_path) - {"<s>", "</s>"}
    missing = sorted(lm_words - lex_words)
    if missing:
        log.warning("%s: %d of %d LM words are not in the lexicon; their n-grams are skipped (e.g. %s)",
                    arpa_path, len(missing), len(lm_words), missing[0])

    ngrams = sum(ngram_counts(arpa_path))
    estimate_gb = estimate_graph_memory_gb(ngrams, sum(len(p) for _, p in lang.lexicon))
    limit_gb = config.max_memory_gb or _available_memory_gb()
    log.info("%s: %d n-grams, %d pronunciations, %d senones: estimated peak memory %.1f GB (limit %.1f GB)",
             arpa_path, ngrams, len(lang.lexicon), tree.num_pdfs, estimate_gb, limit_gb)
    if estimate_gb > limit_gb:
        raise MemoryError(f"{arpa_path}: building HCLG for {ngrams:,} n-grams and {len(lang.lexicon):,} "
                          f"pronunciations needs about {estimate_gb:.1f} GB, more than the {limit_gb:.1f} GB "
                          f"{'allowed (graph.max_memory_gb)' if config.max_memory_gb else 'available'}; "
                          f"use a pruned LM or raise graph.max_memory_gb")
    stats: dict[str, object] = {"config": to_dict(config), "num_pdfs": tree.num_pdfs, "lm_ngrams": ngrams,
                                "lm_words": len(lm_words), "lm_words_missing_from_lexicon": len(missing),
                                "max_disambig": max_disambig, "estimated_peak_gb": round(estimate_gb, 2)}
    with tempfile.TemporaryDirectory(prefix="asrdistill-graph-") as tmp_name:
        tmp = Path(tmp_name)
        words_txt = tmp / "words.txt"
        words_txt.write_text("".join(f"{w} {i}\n" for i, w in enumerate(words)), encoding="utf-8")
        L = _lexicon_fst(entries, lang.phone_id, word_id, disambig0, word_id["#0"], config.sil_prob, tmp,
                         _pron_costs(entries, config.pron_probs))
        G = _grammar_fst(arpa_path, words_txt, tmp, config.arpa_warnings)
        stats["G_states"] = G.num_states

        t = time.perf_counter()
        LG = kaldifst.compose(L, G)
        del L, G
        _trim_heap()
        kaldifst.determinize_star(LG, use_log=True)
        kaldifst.minimize_encoded(LG)
        kaldifst.arcsort(LG, sort_type="ilabel")
        stats["LG_states"] = LG.num_states
        log.info("LG: %d states (%.1f s, peak RSS %.0f MB)", LG.num_states, time.perf_counter() - t, _peak_rss_mb())

        t = time.perf_counter()
        CLG, ilabels = kaldifst.compose_context(disambig_phones, 3, 1, LG)
        del LG
        _trim_heap()
        kaldifst.arcsort(CLG, sort_type="ilabel")
        stats["CLG_states"] = CLG.num_states
        stats["context_windows"] = len(ilabels)
        log.info("CLG: %d states, %d context windows (%.1f s, peak RSS %.0f MB)", CLG.num_states, len(ilabels),
                 time.perf_counter() - t, _peak_rss_mb())

        t = time.perf_counter()
        H, triples, first_disambig = _hmm_fst(ilabels, tree, topo, lang.num_phones, config.self_loop_scale, tmp)
        del ilabels
        HCLG = kaldifst.compose(H, CLG)
        del H, CLG
        _trim_heap()
        kaldifst.determinize_star(HCLG, use_log=True)
        path = _save_const(HCLG, tmp / "HCLG_det.fst")
        del HCLG
        _trim_heap()
        arrays = _read_arrays(path)
        arrays.arcs["ilabel"][arrays.arcs["ilabel"] >= first_disambig] = 0   # disambiguation symbols -> epsilon
        path = _write_const(arrays, tmp / "HCLG_nodisambig.fst")
        del arrays
        _trim_heap()
        HCLG = _read_vector(path)
        kaldifst.rmepsilon(HCLG)
        kaldifst.minimize_encoded(HCLG)
        log.info("HCLG without self-loops: %d states (%.1f s, peak RSS %.0f MB)", HCLG.num_states,
                 time.perf_counter() - t, _peak_rss_mb())

        t = time.perf_counter()
        loop_cost = np.array([math.inf] + [
            -config.self_loop_scale * math.log(p) if (p := topo.self_loop[c][s]) > 0 else math.inf
            for c, s, _ in triples])
        path = _save_const(HCLG, tmp / "HCLG_min.fst")
        del HCLG
        _trim_heap()
        arrays = _add_self_loops(_read_arrays(path), loop_cost)
        _check_no_epsilon_cycles(arrays)
        label2pdf = np.array([0] + [pdf + 1 for _, _, pdf in triples], dtype=np.int32)
        arrays.arcs["ilabel"] = label2pdf[arrays.arcs["ilabel"]]
        arrays = _accessible_sorted(arrays)
        log.info("self-loops and senone labels (%.1f s, peak RSS %.0f MB)", time.perf_counter() - t, _peak_rss_mb())

    num_states, num_arcs = len(arrays.states), len(arrays.arcs)
    stats.update({"HCLG_states": num_states, "HCLG_arcs": num_arcs, "hmm_labels": len(triples),
                  "tree_sha256": tree_sha256(tree_path),
                  "build_seconds": round(time.perf_counter() - t0, 3),
                  "build_cpu_seconds": round(_cpu_seconds() - c0, 3),
                  "peak_rss_mb": round(_peak_rss_mb(), 1)})
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "HCLG.fst") as p:  # a ConstFst: what the decoder reads, no VectorFst copy made
        _write_const(arrays, Path(p))
    with atomic_open(out_dir / "words.txt") as f:
        f.writelines(f"{w} {i}\n" for i, w in enumerate(words))
    write_json_atomic(out_dir / "graph.json", stats)
    mark_done(out_dir, "graph", {"lang": str(lang_dir), "tree": str(tree_path), "arpa": str(arpa_path)})
    log.info("HCLG: %d states, %d arcs, built in %.1f s (%.1f s CPU), peak RSS %.0f MB", num_states, num_arcs,
             stats["build_seconds"], stats["build_cpu_seconds"], stats["peak_rss_mb"])
    return out_dir


def load_graph_info(graph_dir: str | Path) -> dict:
    """``graph.json`` of a built graph (``num_pdfs``, sizes, build figures)."""
    path = Path(graph_dir) / "graph.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run build_graph first)")
    return json.loads(path.read_text(encoding="utf-8"))


def check_labels_match_graph(labels_meta: dict, graph_dir: str | Path, labels_dir: str | Path) -> None:
    """Refuse labels imported for another tree than the graph's (``import-ali --tree``): the priors and the
    decoder's senone ids would disagree silently (wrong WER, no error)."""
    want, have = labels_meta.get("tree_sha256"), load_graph_info(graph_dir).get("tree_sha256")
    if want and have and want != have:
        raise ValueError(f"{labels_dir}: labels are for the tree {labels_meta.get('tree')} but {graph_dir} was built "
                         "from another tree; rebuild the graph from that tree (asrdistill graph) or import the "
                         "alignments with --tree naming the graph's tree")


def pdf_sequence(prons: list[tuple[str, ...]], lang: Lang, tree: ContextTree, topo: Topology,
                 frames_per_state: int = 1) -> np.ndarray:
    """Senone per frame for phones ``prons`` (words and silences in order), triphone context
    across word boundaries and 0 at the utterance edges: the path HCLG must accept."""
    if frames_per_state < 1:
        raise ValueError(f"frames_per_state must be >= 1, got {frames_per_state}")
    phones = [lang.phone_id[p] for pron in prons for p in pron]
    out: list[int] = []
    for i, c in enumerate(phones):
        left = phones[i - 1] if i > 0 else 0
        right = phones[i + 1] if i + 1 < len(phones) else 0
        for s in range(topo.num_states[c]):
            out += [tree.pdf(left, c, right, s)] * frames_per_state
    return np.asarray(out, dtype=np.int64)

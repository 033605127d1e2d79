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
self-loop probability), and windows whose label sequences are equal share an
HMM id. CLG is relabelled with HMM ids, determinised (log semiring, as Kaldi),
its disambiguation symbols become epsilons and it is minimised: at the size of
CLG, a third of H o CLG's states. Then each arc is expanded into its HMM's
labels on arrays, arcs of a state sharing their common prefixes (a trie, which
is what determinising H o CLG would make of them; the label sequences form a
prefix-free code) with the weights pushed as determinisation would. The
epsilons left by the disambiguation symbols (the LM's back-off arcs among them)
stay, as in Kaldi's graphs, and are checked to form no cycle. Self-loops are
added as explicit arcs on states entered by one such label (splitting states
where needed, as Kaldi's ``add-self-loops``) while the graph is written, and
labels are mapped to ``senone + 1``. Every non-epsilon input label consumes one
frame.

OpenFst (kaldifst) does compose, determinise and minimise; the passes it lacks
(building L, the HMM expansion, self-loops, senone relabelling, the
epsilon-cycle check) run on numpy arrays in OpenFst's ConstFst record layout
(16 bytes an arc), each intermediate FST is freed once used (and written out and
read back, so the next one does not sit among its heap fragments), and HCLG is
written state chunk by state chunk. Before building, the peak memory is
estimated from the LM and lexicon sizes and checked against ``max_memory_gb``.
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
from asrdistill.data.lexicon import read_pron_probs
from asrdistill.decoding.lm import arpa_vocabulary, ngram_counts

__all__ = ["GraphConfig", "build_graph", "add_lex_disambig", "load_graph_info", "check_labels_match_graph",
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


def _const_header(start: int, num_states: int, num_arcs: int) -> bytes:
    """The header of a ConstFst file (standard arcs, unaligned), as kaldifst writes it."""
    return b"".join([struct.pack("<i", _MAGIC), struct.pack("<i", 5), b"const", struct.pack("<i", 8), b"standard",
                     struct.pack("<iiQqqq", 2, 0, _EXPANDED, start, num_states, num_arcs)])


def _write_const(fst: _Arrays, path: Path) -> Path:
    """Write arrays as a ConstFst file (so the arrays can be freed before OpenFst reads it)."""
    with open(path, "wb") as f:
        f.write(_const_header(fst.start, len(fst.states), len(fst.arcs)))
        fst.states.tofile(f)
        fst.arcs.tofile(f)
    return path


def _reload(path: Path) -> kaldifst.StdVectorFst:
    """A VectorFst read back from ``path`` after the heap is trimmed (the caller has freed the graph it wrote).

    OpenFst allocates per state; a graph built among the fragments of a freed
    one keeps them resident. Measured on the 4M-n-gram LG (9.7M states): the
    process held 4.1 GB after determinising and minimising it in place, 2.1 GB
    with it written and read back.
    """
    _trim_heap()
    return _read_vector(path)


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
    states["niepsilons"] = np.bincount(src[np.asarray(ilabel) == 0], minlength=num_states)
    states["noepsilons"] = np.bincount(src[np.asarray(olabel) == 0], minlength=num_states)
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


def _hmm_labels(ilabels: list[list[int]], tree: ContextTree, topo: Topology, num_phones: int,
                self_loop_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, int]], int]:
    """What H maps each context window to: the labels of its HMM states, as an HMM id.

    Labels ``1..N`` stand for ``(phone, state, senone)`` triples (returned, in
    label order: first use by window, then state). Windows whose label
    sequences are equal (the tree ties them) share an HMM id ``1..K``, numbered
    in lexicographic order of the sequences; windows that are disambiguation
    symbols (Kaldi's ``#-1`` and ``#k``) get ids ``K+1..`` so they survive
    determinisation, and the epsilon window keeps 0. Returns ``(window -> id,
    (K+1, max states) label sequences padded with 0, (N+1,) cost of each label,
    triples, K+1)``. A label's cost is that of leaving its HMM state, so a path's
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
    label_cost = np.zeros(len(triples) + 1)
    label_cost[label] = -self_loop_scale * np.log1p(-loop)
    rows = np.zeros((len(windows), max_s), dtype=np.int32)                  # each window's label sequence
    rows[win, state] = label
    seqs, hmm = np.unique(rows, axis=0, return_inverse=True)               # lexicographic order
    seqs = np.concatenate([np.zeros((1, max_s), dtype=np.int32), seqs])
    first_disambig = len(seqs)
    window_id = np.zeros(len(ilabels), dtype=np.int32)
    window_id[tri_idx] = hmm.reshape(-1) + 1
    window_id[sizes == 1] = first_disambig + np.arange(int((sizes == 1).sum()))
    return window_id, seqs, label_cost, triples, first_disambig


def _expand_hmm(fst: _Arrays, seqs: np.ndarray, label_cost: np.ndarray) -> _Arrays:
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
    ilabel = fst.arcs["ilabel"]
    sources = fst.sources()
    order = np.lexsort((ilabel, sources))            # by state, then HMM: prefix groups are runs
    order = order[ilabel[order] > 0]
    eps = np.flatnonzero(ilabel == 0)
    pieces = [[sources[eps], ilabel[eps], fst.arcs["olabel"][eps], fst.arcs["weight"][eps], fst.arcs["nextstate"][eps]]]
    src, hmm = sources[order], ilabel[order]
    olabel, dst = fst.arcs["olabel"][order], fst.arcs["nextstate"][order]
    total = fst.arcs["weight"][order].astype(np.float64) + label_cost[seqs].sum(axis=1)[hmm]
    del order, sources, eps, ilabel, fst
    lens = (seqs > 0).sum(axis=1).astype(np.int8)
    n = lens[hmm]
    num = len(hmm)
    same = np.zeros(num, dtype=bool)                 # same state and same labels so far as the arc before
    same[1:] = src[1:] == src[:-1]
    came_from = src.astype(np.int32)                 # each arc's node at this depth
    del src
    pushed = np.zeros(num)                           # weight already on the shared arcs above it
    depth = np.full(num, -1, dtype=np.int8)          # depth of the arc's own label
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
        head = shared & ~same                            # one arc per shared run, to a new trie node
        node = np.maximum.accumulate(np.where(head, next_id + np.cumsum(head, dtype=np.int32) - 1, 0))  # runs are contiguous
        next_id += int(head.sum())
        pieces.append([came_from[head], lab[head], np.zeros(int(head.sum()), dtype=np.int32),
                       (logsum - pushed)[head].astype(np.float32), node[head].astype(np.int32)])
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
    base = next_id + np.cumsum(count) - count - first      # state of (pair, j) is base + j
    to = dst.copy()
    to[need] = base[inverse] + depth[need] + 1
    pieces.append([own_from, seqs[hmm, depth], olabel, own_weight, to])
    del need, inverse, to, own_from, own_weight, olabel, dst
    p = np.repeat(np.arange(len(pairs)), count)
    j = np.arange(len(p)) - np.repeat(np.cumsum(count) - count, count) + first[p]
    pieces.append([(base[p] + j).astype(np.int32), seqs[pair_hmm[p], j], np.zeros(len(p), dtype=np.int32),
                   np.zeros(len(p), dtype=np.float32),
                   np.where(j == lens[pair_hmm[p]] - 1, pair_dst[p], base[p] + j + 1).astype(np.int32)])
    total_states = next_id + int(count.sum())
    del p, j, pairs, first, pair_dst, pair_hmm, base, count, hmm, n, depth
    final = np.concatenate([final, np.full(total_states - num_states, np.inf, dtype=np.float32)])
    cols = []
    for i in range(5):  # column by column, each piece's part freed once copied
        cols.append(np.concatenate([piece[i] for piece in pieces]))
        for piece in pieces:
            piece[i] = None
    del pieces
    return _make_arrays(total_states, start, *cols, final)


def _arc_range(first_arc: np.ndarray, narcs: np.ndarray) -> np.ndarray:
    """Indices of the arcs of some states, state by state: ``first_arc[i] .. first_arc[i] + narcs[i] - 1``."""
    n = narcs.astype(np.int64)
    return np.repeat(first_arc.astype(np.int64) - np.cumsum(n) + n, n) + np.arange(int(n.sum()))


def _write_hclg(fst: _Arrays, loop_cost: np.ndarray, label2pdf: np.ndarray, path: Path) -> tuple[int, int]:
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
    split = (high > 0) & ((low < high) | eps_in)            # entered by a label and by anything else: copies
    keep = ~split | eps_in
    loop_label = np.where((high > 0) & ~split, high, 0)[keep]  # the in-place loops
    del low, high
    new_id = (np.cumsum(keep, dtype=np.int64) - 1).astype(np.int32)
    num_kept, start = int(keep.sum()), int(new_id[fst.start])
    dst = new_id[nextstate]                                  # (A,) int32; arcs into split states below
    del new_id
    into_split = np.flatnonzero(labelled & split[nextstate])
    del labelled, eps_in
    width = np.int64(ilabel.max(initial=0)) + 1
    pairs = np.unique(nextstate[into_split].astype(np.int64) * width + ilabel[into_split])  # (state, label)
    for lo in range(0, len(into_split), _CHUNK):
        sel = into_split[lo:lo + _CHUNK]
        dst[sel] = num_kept + np.searchsorted(pairs, nextstate[sel].astype(np.int64) * width + ilabel[sel])
    del into_split, split
    base = np.concatenate([np.flatnonzero(keep).astype(np.int32), (pairs // width).astype(np.int32)])
    loop_label = np.concatenate([loop_label, (pairs % width).astype(np.int32)])
    del keep, pairs
    order = _breadth_first(start, fst.states["pos"][base], fst.states["narcs"][base], dst)
    base, loop_label = base[order], loop_label[order]
    new_id = np.empty(len(order), dtype=np.int32)
    new_id[order] = np.arange(len(order), dtype=np.int32)
    del order
    for lo in range(0, len(dst), _CHUNK):
        dst[lo:lo + _CHUNK] = new_id[dst[lo:lo + _CHUNK]]
    start = int(new_id[start])
    del new_id
    has_loop = loop_label > 0
    has_loop[has_loop] = np.isfinite(loop_cost[loop_label[has_loop]])
    old_narcs = fst.states["narcs"][base]
    narcs = old_narcs + has_loop
    num_arcs = int(narcs.sum(dtype=np.uint64))
    with open(path, "wb") as f:
        f.write(_const_header(start, len(base), num_arcs))
        pos = np.uint64(0)
        for lo in range(0, len(base), _CHUNK):  # the state records
            hi = min(lo + _CHUNK, len(base))
            states = np.zeros(hi - lo, dtype=_STATE)
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
            chunk = np.empty(len(take) + len(loops), dtype=_ARC)
            chunk[:len(take)] = arcs[take]
            chunk["nextstate"][:len(take)] = dst[take]
            chunk["ilabel"][len(take):] = loop_label[loops]
            chunk["olabel"][len(take):] = 0
            chunk["weight"][len(take):] = loop_cost[loop_label[loops]]
            chunk["nextstate"][len(take):] = loops
            chunk["ilabel"] = label2pdf[chunk["ilabel"]]
            owner = np.concatenate([np.repeat(np.arange(lo, hi), n), loops])
            chunk[np.lexsort((chunk["ilabel"], owner))].tofile(f)
    return len(base), num_arcs


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
# 70k-word CMUdict lexicon (74,740 pronunciations, 475,497 phones) and a 2,091-leaf tree at dd8ec89: 1M n-grams ->
# 1.57 GB, 2M -> 2.75 GB (the breadth-first numbering in the writer is the peak), 4M -> 5.12 GB (LG's
# determinisation and minimisation), over the ~40 MB the interpreter holds (no torch); per phone from the
# intercept. Rounded up by ~10-13%: an estimate that errs high.
_BYTES_PER_NGRAM = 1350.0
_BYTES_PER_LEXICON_PHONE = 400.0
_BASE_BYTES = 200e6


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
        path = _save_const(LG, tmp / "LG.fst")
        del LG
        LG = _reload(path)
        kaldifst.determinize_star(LG, use_log=True)
        path = _save_const(LG, tmp / "LG_det.fst")
        del LG
        LG = _reload(path)
        kaldifst.minimize_encoded(LG)
        path = _save_const(LG, tmp / "LG_min.fst")
        del LG
        LG = _reload(path)
        kaldifst.arcsort(LG, sort_type="ilabel")
        stats["LG_states"] = LG.num_states
        log.info("LG: %d states (%.1f s, peak RSS %.0f MB)", LG.num_states, time.perf_counter() - t, _peak_rss_mb())

        t = time.perf_counter()
        CLG, ilabels = kaldifst.compose_context(disambig_phones, 3, 1, LG)
        del LG
        _trim_heap()
        stats["CLG_states"] = CLG.num_states
        stats["context_windows"] = len(ilabels)
        log.info("CLG: %d states, %d context windows (%.1f s, peak RSS %.0f MB)", CLG.num_states, len(ilabels),
                 time.perf_counter() - t, _peak_rss_mb())

        t = time.perf_counter()
        window_id, seqs, label_cost, triples, first_disambig = _hmm_labels(
            ilabels, tree, topo, lang.num_phones, config.self_loop_scale)
        del ilabels
        arrays = _read_arrays(_save_const(CLG, tmp / "CLG.fst"))
        del CLG
        _trim_heap()
        arrays.arcs["ilabel"] = window_id[arrays.arcs["ilabel"]]           # windows -> HMM ids
        path = _write_const(arrays, tmp / "CLG_hmm.fst")
        del arrays
        D = _reload(path)
        kaldifst.determinize_star(D, use_log=True)
        arrays = _read_arrays(_save_const(D, tmp / "D_det.fst"))
        del D
        _trim_heap()
        arrays.arcs["ilabel"][arrays.arcs["ilabel"] >= first_disambig] = 0   # disambiguation symbols -> epsilon
        path = _write_const(arrays, tmp / "D_nodisambig.fst")
        del arrays
        D = _reload(path)
        kaldifst.minimize_encoded(D)
        stats["D_states"] = D.num_states
        path = _save_const(D, tmp / "D_min.fst")
        del D
        _trim_heap()
        arrays = _expand_hmm(_read_arrays(path), seqs, label_cost)  # the only reference: freed inside once read
        log.info("HCLG without self-loops: %d states, %d arcs (%.1f s, peak RSS %.0f MB)", len(arrays.states),
                 len(arrays.arcs), time.perf_counter() - t, _peak_rss_mb())

        t = time.perf_counter()
        _trim_heap()
        _check_no_epsilon_cycles(arrays)
        loop_cost = np.array([math.inf] + [
            -config.self_loop_scale * math.log(p) if (p := topo.self_loop[c][s]) > 0 else math.inf
            for c, s, _ in triples])
        label2pdf = np.array([0] + [pdf + 1 for _, _, pdf in triples], dtype=np.int32)
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / "HCLG.fst") as p:  # a ConstFst: what the decoder reads, no VectorFst copy made
            num_states, num_arcs = _write_hclg(arrays, loop_cost, label2pdf, Path(p))
        del arrays
        log.info("self-loops and senone labels (%.1f s, peak RSS %.0f MB)", time.perf_counter() - t, _peak_rss_mb())

    stats.update({"HCLG_states": num_states, "HCLG_arcs": num_arcs, "hmm_labels": len(triples),
                  "tree_sha256": tree_sha256(tree_path),
                  "build_seconds": round(time.perf_counter() - t0, 3),
                  "build_cpu_seconds": round(_cpu_seconds() - c0, 3),
                  "peak_rss_mb": round(_peak_rss_mb(), 1)})
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


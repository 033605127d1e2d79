"""Utterance training graphs: every pronunciation of each word, optional silence between words.

Kaldi's ``compile-train-graphs`` composes H o C o L o (the transcript): one
path per choice of pronunciation and per choice of silence between words. We
build the same graph directly, in three layers:

1. phone instances: each word of the transcript contributes one chain of phone
   instances per pronunciation (entered with the pronunciation's log
   probability); between words, at the start and at the end an optional
   silence instance is entered with ``sil_prob`` (Kaldi's ``--sil-prob``);
2. with ``context``, each instance is copied once per (predecessor,
   successor) pair, so every copy knows its exact left and right phone
   (the triphone expansion C does), silence and word boundaries included;
3. each copy becomes its phone's left-to-right HMM states.

A state has a short list of predecessors (itself, the previous state of its
phone, or the last states of the preceding phone copies) padded to a common
width ``K``: Viterbi is then a gather and a max over ``K`` per state, batched
over utterances (:mod:`asrdistill.aligner.viterbi`). The graph is acyclic
apart from the self-loops; each state records its word position and
pronunciation index, so an alignment tells which pronunciation and which
silences were chosen.

Pdfs are looked up through ``pdf_of(left, center, right, state) -> pdf`` on
int arrays, so one builder serves monophones (:class:`MonophonePdfs`) and tied
triphones (``ContextTree.pdfs``); ``0`` is the context at utterance edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from asrdistill.aligner.topology import Topology

__all__ = ["UttGraph", "Transcript", "MonophonePdfs", "PdfFn", "build_utt_graph", "build_utt_graphs"]

PdfFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
_NEG_INF = -math.inf


@dataclass
class MonophonePdfs:
    """Monophone pdf map: one pdf per (phone, HMM state), phones 1..N in order."""

    offsets: np.ndarray  # (num_phones + 2,) int64: pdfs of phone p are offsets[p] .. offsets[p+1]-1

    @classmethod
    def from_topology(cls, topology: Topology) -> "MonophonePdfs":
        n = np.asarray(topology.num_states, dtype=np.int64).copy()
        n[0] = 0
        return cls(np.concatenate([[0], np.cumsum(n)]))

    @property
    def num_pdfs(self) -> int:
        return int(self.offsets[-1])

    def pdfs(self, left: np.ndarray, center: np.ndarray, right: np.ndarray, state: np.ndarray) -> np.ndarray:
        return self.offsets[np.asarray(center, dtype=np.int64)] + np.asarray(state, dtype=np.int64)

    __call__ = pdfs

    def pdf_info(self) -> list[list[tuple[int, int]]]:
        """``[(phone, state)]`` covered by each pdf (the same shape as ``ContextTree.pdf_info``)."""
        out = []
        for p in range(1, len(self.offsets) - 1):
            out += [[(p, s)] for s in range(int(self.offsets[p + 1] - self.offsets[p]))]
        return out


@dataclass
class Transcript:
    """A word sequence with every pronunciation of each word (phone ids) and its log probability."""

    words: list[str]
    prons: list[list[tuple[int, ...]]]  # per word: alternative phone-id sequences
    pron_logp: list[list[float]]  # per word: log P(pronunciation), 0.0 when all are equally allowed
    silence: int  # phone id of the optional silence

    def __post_init__(self) -> None:
        if not (len(self.words) == len(self.prons) == len(self.pron_logp)):
            raise ValueError("words, prons and pron_logp differ in length")
        for w, ps, lp in zip(self.words, self.prons, self.pron_logp):
            if not ps or len(ps) != len(lp) or any(len(p) == 0 for p in ps):
                raise ValueError(f"word {w!r}: needs at least one non-empty pronunciation and one log-prob each")


@dataclass
class UttGraph:
    """States of one utterance's graph; all log-probabilities are natural logs (-inf: impossible)."""

    pdf: np.ndarray  # (S,) int64 pdf of each state
    phone: np.ndarray  # (S,) int32 phone id
    hmm_state: np.ndarray  # (S,) int32 state index within its phone
    word: np.ndarray  # (S,) int32 position of the state's word in the transcript (-1: optional silence)
    pron: np.ndarray  # (S,) int32 index of the pronunciation the state belongs to (-1: optional silence)
    pred: np.ndarray  # (S, K) int64 predecessor states (padding: 0 with -inf)
    pred_logp: np.ndarray  # (S, K) log P(pred -> s); the self-loop is one of them
    init_logp: np.ndarray  # (S,) log P(start in s)
    final_logp: np.ndarray  # (S,) log P(end in s)
    min_frames: int  # states on the shortest path: fewer frames cannot be aligned
    default_path: np.ndarray  # states through first pronunciations, silence at the edges only (flat start)

    @property
    def num_states(self) -> int:
        return int(self.pdf.shape[0])


@dataclass
class _Inst:
    phone: int
    word: int  # -1: optional silence
    pron: int
    default: bool  # on the flat-start path


def _phone_instances(
    tr: Transcript, sil_prob: float, boundary_silence: bool
) -> tuple[list[_Inst], dict[tuple[int, int], float], dict[int, float], dict[int, float]]:
    """Layer 1: phone instances (in topological order), arcs ``(i, j) -> logp``, initial and final weights."""
    insts: list[_Inst] = []
    arcs: dict[tuple[int, int], float] = {}
    init: dict[int, float] = {}
    frontier: list[tuple[int, float]] = [(-1, 0.0)]  # -1: the start
    lp_sil, lp_nosil = (math.log(sil_prob), math.log1p(-sil_prob)) if 0 < sil_prob < 1 else (0.0, 0.0)

    def link(src: int, dst: int, lp: float) -> None:
        if src < 0:
            init[dst] = max(init.get(dst, _NEG_INF), lp)
        else:
            arcs[(src, dst)] = max(arcs.get((src, dst), _NEG_INF), lp)

    def silence_here(edge: bool) -> None:
        nonlocal frontier
        if sil_prob <= 0 or (edge and not boundary_silence):
            return
        s = len(insts)
        insts.append(_Inst(tr.silence, -1, -1, edge))
        for src, lp in frontier:
            link(src, s, lp + (lp_sil if sil_prob < 1 else 0.0))
        frontier = ([] if sil_prob >= 1 else [(src, lp + lp_nosil) for src, lp in frontier]) + [(s, 0.0)]

    n = len(tr.words)
    for w in range(n):
        silence_here(w == 0)
        new_frontier = []
        for k, (pron, plp) in enumerate(zip(tr.prons[w], tr.pron_logp[w])):
            first = len(insts)
            insts += [_Inst(int(p), w, k, k == 0) for p in pron]
            for src, lp in frontier:
                link(src, first, lp + plp)
            for i in range(first + 1, len(insts)):
                arcs[(i - 1, i)] = 0.0
            new_frontier.append((len(insts) - 1, 0.0))
        frontier = new_frontier
    silence_here(True)
    final = {}
    for src, lp in frontier:
        final[src] = max(final.get(src, _NEG_INF), lp)
    return insts, arcs, init, final


@dataclass
class _PhoneLayer:
    """Layer 1 with its adjacency lists: what the later layers are built from."""

    insts: list[_Inst]
    arcs: dict[tuple[int, int], float]  # (instance, next instance) -> logp
    init: dict[int, float]
    final: dict[int, float]
    phones: np.ndarray  # (instances,) int64 phone id of each instance
    preds: list[list[tuple[int, float]]]  # per instance: (predecessor, logp)
    succs: list[list[int]]


@dataclass
class _StateLayer:
    """Layers 2 and 3: the context copies of each instance and the HMM states of each copy."""

    copies: list[tuple[int, int, int]]  # (instance, predecessor or -1, successor or -1); -2 without context
    index: dict[tuple[int, int, int], int]  # copy -> its position in ``copies``
    c_inst: np.ndarray  # (copies,) instance of each copy
    first: np.ndarray  # (copies,) first state of each copy
    last: np.ndarray  # (copies,) last state of each copy
    owner: np.ndarray  # (states,) copy of each state
    hmm_state: np.ndarray  # (states,) state within its phone's HMM
    phone: np.ndarray  # (states,)
    pdf: np.ndarray  # (states,)
    self_lp: np.ndarray  # (states,) log self-loop probability
    leave: np.ndarray  # (states,) log probability of leaving the state


def build_utt_graph(
    transcript: Transcript,
    topology: Topology,
    pdf_of: PdfFn,
    sil_prob: float = 0.5,
    boundary_silence: bool = True,
    context: bool = False,
) -> UttGraph:
    """The training graph of ``transcript``: all pronunciations, optional silence entered with ``sil_prob``.

    ``sil_prob`` 0 allows no silence at all, 1 forces it between words.
    ``context`` expands each phone per neighbour so that ``pdf_of`` sees
    exact triphone contexts (needed for tree models; monophones ignore it).
    """
    if not transcript.words:
        raise ValueError("cannot build a graph for an empty transcript")
    if not 0.0 <= sil_prob <= 1.0:
        raise ValueError(f"sil_prob must be in [0, 1], got {sil_prob}")
    pl = _phone_layer(transcript, topology, sil_prob, boundary_silence)
    sl = _hmm_states(pl, _context_copies(pl, context), topology, pdf_of)
    pred, pred_lp, init_lp, final_lp = _state_arcs(pl, sl, context)
    word = np.array([pl.insts[i].word for i in sl.c_inst], dtype=np.int32)[sl.owner]
    pron = np.array([pl.insts[i].pron for i in sl.c_inst], dtype=np.int32)[sl.owner]
    return UttGraph(
        sl.pdf,
        sl.phone.astype(np.int32),
        sl.hmm_state.astype(np.int32),
        word,
        pron,
        pred,
        pred_lp,
        init_lp,
        final_lp,
        _min_frames(pl, topology),
        _default_path(pl, sl, context),
    )


def _phone_layer(tr: Transcript, topology: Topology, sil_prob: float, boundary_silence: bool) -> _PhoneLayer:
    """Layer 1 (:func:`_phone_instances`) with each instance's predecessors and successors, phone ids checked."""
    insts, arcs, init, final = _phone_instances(tr, sil_prob, boundary_silence)
    phones = np.array([x.phone for x in insts], dtype=np.int64)
    if phones.min() < 1 or phones.max() >= len(topology.num_states):
        raise ValueError(f"phone ids must be in 1..{len(topology.num_states) - 1}, got {phones.min()}..{phones.max()}")
    preds: list[list[tuple[int, float]]] = [[] for _ in insts]
    succs: list[list[int]] = [[] for _ in insts]
    for (a, b), lp in arcs.items():
        preds[b].append((a, lp))
        succs[a].append(b)
    return _PhoneLayer(insts, arcs, init, final, phones, preds, succs)


def _context_copies(pl: _PhoneLayer, context: bool) -> list[tuple[int, int, int]]:
    """Layer 2: copies (instance, predecessor or -1, successor or -1); one copy ``(i, -2, -2)`` without context."""
    copies: list[tuple[int, int, int]] = []
    for i in range(len(pl.insts)):
        left = ([-1] if i in pl.init else []) + [a for a, _ in pl.preds[i]] if context else [-2]
        right = ([-1] if i in pl.final else []) + pl.succs[i] if context else [-2]
        copies += [(i, a, b) for a in left for b in right]
    return copies


def _hmm_states(pl: _PhoneLayer, copies: list[tuple[int, int, int]], topology: Topology, pdf_of: PdfFn) -> _StateLayer:
    """Layer 3: each copy's left-to-right HMM states, their pdfs (one ``pdf_of`` call) and self-loop weights."""
    index = {c: k for k, c in enumerate(copies)}
    c_inst = np.array([c[0] for c in copies], dtype=np.int64)
    ctx = lambda j: 0 if j < 0 else int(pl.phones[j])  # noqa: E731
    c_left = np.array([ctx(c[1]) for c in copies], dtype=np.int64)
    c_right = np.array([ctx(c[2]) for c in copies], dtype=np.int64)
    n_st = np.asarray(topology.num_states, dtype=np.int64)[pl.phones[c_inst]]
    first = np.concatenate([[0], np.cumsum(n_st)[:-1]])
    total = int(n_st.sum())
    owner = np.repeat(np.arange(len(copies)), n_st)
    hmm_state = (np.arange(total) - first[owner]).astype(np.int64)
    phone = pl.phones[c_inst][owner]
    pdf = np.asarray(pdf_of(c_left[owner], phone, c_right[owner], hmm_state), dtype=np.int64)
    if (pdf < 0).any():
        raise ValueError("pdf map returned a negative pdf id")
    loop = np.array([topology.self_loop[p][s] for p, s in zip(phone, hmm_state)], dtype=np.float64)
    with np.errstate(divide="ignore"):
        self_lp, leave = np.log(loop), np.log1p(-loop)
    return _StateLayer(copies, index, c_inst, first, first + n_st - 1, owner, hmm_state, phone, pdf, self_lp, leave)


def _state_arcs(
    pl: _PhoneLayer, sl: _StateLayer, context: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each state's incoming arcs padded to a common width, and the initial and final log weights.

    Within a copy: the self-loop and the previous state. Into a copy's first
    state: the last state of every predecessor copy (with context, only those
    whose right context is this instance).
    """
    total = len(sl.owner)
    in_arcs: list[list[tuple[int, float]]] = [[(s, float(sl.self_lp[s]))] for s in range(total)]
    for s in np.flatnonzero(sl.hmm_state > 0):
        in_arcs[s].append((int(s - 1), float(sl.leave[s - 1])))
    init_lp = np.full(total, _NEG_INF)
    final_lp = np.full(total, _NEG_INF)
    into: dict[tuple[int, int], list[int]] = {}  # (instance, its successor) -> copies with that right context
    for c, (i, _, b) in enumerate(sl.copies):
        into.setdefault((i, b), []).append(c)
    first, last, leave = sl.first, sl.last, sl.leave
    for c, (i, a, b) in enumerate(sl.copies):
        if a == -1 or (not context and i in pl.init):
            init_lp[first[c]] = pl.init[i]
        if b == -1 or (not context and i in pl.final):
            final_lp[last[c]] = pl.final[i]
        if context:
            if a >= 0:  # from every copy of the predecessor whose right context is this instance
                for c2 in into[(a, i)]:
                    in_arcs[first[c]].append((int(last[c2]), float(leave[last[c2]] + pl.arcs[(a, i)])))
        else:
            for a2, lp in pl.preds[i]:
                c2 = sl.index[(a2, -2, -2)]
                in_arcs[first[c]].append((int(last[c2]), float(leave[last[c2]] + lp)))
    width = max(len(x) for x in in_arcs)
    pred = np.zeros((total, width), dtype=np.int64)
    pred_lp = np.full((total, width), _NEG_INF)
    for s, row in enumerate(in_arcs):
        for k, (src, lp) in enumerate(row):
            pred[s, k], pred_lp[s, k] = src, lp
    return pred, pred_lp, init_lp, final_lp


def _min_frames(pl: _PhoneLayer, topology: Topology) -> int:
    """States on the shortest path (instances are in topological order): fewer frames cannot be aligned."""
    dist = np.full(len(pl.insts), np.iinfo(np.int64).max // 2)
    n_inst = np.asarray(topology.num_states, dtype=np.int64)[pl.phones]
    for i in range(len(pl.insts)):
        best = 0 if i in pl.init else min((dist[a] for a, _ in pl.preds[i]), default=dist[i])
        dist[i] = best + n_inst[i]
    return int(min(dist[i] for i in pl.final))


def _default_path(pl: _PhoneLayer, sl: _StateLayer, context: bool) -> np.ndarray:
    """The flat-start path: states of the default instances (first pronunciations, silence at the edges only)."""
    chain = [i for i, x in enumerate(pl.insts) if x.default]
    path = []
    for k, i in enumerate(chain):
        a = chain[k - 1] if k > 0 else -1
        b = chain[k + 1] if k + 1 < len(chain) else -1
        c = sl.index[(i, a, b)] if context else sl.index[(i, -2, -2)]
        path += list(range(sl.first[c], sl.last[c] + 1))
    return np.asarray(path, dtype=np.int64)


def build_utt_graphs(
    transcripts: Sequence[Transcript],
    topology: Topology,
    pdf_of: PdfFn,
    sil_prob: float = 0.5,
    boundary_silence: bool = True,
    context: bool = False,
) -> list[UttGraph]:
    """:func:`build_utt_graph` for many transcripts with a single ``pdf_of`` call (a tree lookup costs per call)."""
    contexts: list[tuple[np.ndarray, ...]] = []

    def record(*ctx: np.ndarray) -> np.ndarray:
        contexts.append(ctx)
        return np.zeros(len(ctx[1]), dtype=np.int64)

    graphs = [build_utt_graph(t, topology, record, sil_prob, boundary_silence, context) for t in transcripts]
    if graphs:
        pdf = np.asarray(pdf_of(*(np.concatenate(c) for c in zip(*contexts))), dtype=np.int64)
        if (pdf < 0).any():
            raise ValueError("pdf map returned a negative pdf id")
        for g, part in zip(graphs, np.split(pdf, np.cumsum([g.num_states for g in graphs])[:-1])):
            g.pdf = part
    return graphs

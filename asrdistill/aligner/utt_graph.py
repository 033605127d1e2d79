"""Utterance HMM state graphs: a transcript's phones expanded into a left-to-right chain of states.

The graph of an utterance is linear (what Kaldi's training graph is for one
transcript with one pronunciation per word) except for *optional* phones (the
optional silence between words and at the edges): each can be skipped, so
every state has at most three predecessors: itself (self-loop), the previous
state, and one "skip" state (the last state before an optional phone). That
keeps Viterbi a max over three candidates per state and lets many utterances
be batched as padded tensors (:mod:`asrdistill.aligner.viterbi`).

Pdfs are looked up through ``pdf_of(left, center, right, state) -> pdf`` on
int arrays, so one graph builder serves monophones (:class:`MonophonePdfs`)
and tied triphones (``ContextTree.pdfs`` has exactly that signature).
Contexts are the neighbouring phones *of the given sequence*, optional ones
included, and 0 at the edges; for exact triphone contexts across silence, pass
a sequence without optional phones (e.g. the phones realised by a previous
alignment, ``asrdistill.aligner.triphone.realised_sequences``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from asrdistill.aligner.topology import Topology

__all__ = ["UttGraph", "MonophonePdfs", "PdfFn", "build_graph", "transcript_phones"]

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
class UttGraph:
    """States of one utterance's graph in order; all log-probabilities are natural logs (-inf: impossible)."""

    pdf: np.ndarray        # (S,) int64 pdf of each state
    phone: np.ndarray      # (S,) int32 phone id
    hmm_state: np.ndarray  # (S,) int32 state index within its phone
    self_logp: np.ndarray  # (S,) log P(stay in s)
    adv_logp: np.ndarray   # (S,) log P(s-1 -> s); -inf for s = 0
    skip_from: np.ndarray  # (S,) int64 the one skip predecessor of s (-1: none)
    skip_logp: np.ndarray  # (S,) log P(skip_from[s] -> s)
    init_logp: np.ndarray  # (S,) log P(start in s)
    final_logp: np.ndarray  # (S,) log P(end in s)
    min_frames: int         # states on the shortest path: fewer frames cannot be aligned

    @property
    def num_states(self) -> int:
        return int(self.pdf.shape[0])


def transcript_phones(words: Sequence[str], prons: Mapping[str, Sequence[int]], silence: int,
                      optional_silence: bool = True, boundary_silence: bool = True
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Phone ids and "optional" flags for a word sequence (each word's pronunciation from ``prons``).

    With ``optional_silence`` an optional ``silence`` goes between words; with
    ``boundary_silence`` also before the first and after the last word. Raises
    ``KeyError`` naming a word with no pronunciation (map OOVs to ``<UNK>``
    before calling).
    """
    phones: list[int] = []
    optional: list[bool] = []
    for i, word in enumerate(words):
        if word not in prons:
            raise KeyError(f"word {word!r} has no pronunciation")
        if (i == 0 and boundary_silence) or (i > 0 and optional_silence):
            phones.append(silence)
            optional.append(True)
        phones += list(prons[word])
        optional += [False] * len(prons[word])
    if words and boundary_silence:
        phones.append(silence)
        optional.append(True)
    return np.asarray(phones, dtype=np.int32), np.asarray(optional, dtype=bool)


def build_graph(phones: np.ndarray, optional: np.ndarray | None, topology: Topology, pdf_of: PdfFn,
                optional_prob: float = 0.5) -> UttGraph:
    """Expand ``phones`` into the HMM state chain; an ``optional`` phone is entered with ``optional_prob``.

    Two optional phones may not be adjacent (each state has one skip
    predecessor); the transcript builders never produce that.
    """
    phones = np.asarray(phones, dtype=np.int64)
    n = phones.shape[0]
    if n == 0:
        raise ValueError("cannot build a graph for an empty phone sequence")
    optional = np.zeros(n, dtype=bool) if optional is None else np.asarray(optional, dtype=bool)
    if optional.shape != phones.shape:
        raise ValueError(f"phones {phones.shape} and optional {optional.shape} differ in length")
    if np.any(optional[1:] & optional[:-1]):
        raise ValueError("two adjacent optional phones: a state can have only one skip predecessor")
    if optional.all():
        raise ValueError("every phone is optional: the graph would accept an empty path")
    if not 0.0 < optional_prob < 1.0 and optional.any():
        raise ValueError(f"optional_prob must be in (0, 1), got {optional_prob}")
    if phones.min() < 1 or phones.max() >= len(topology.num_states):
        raise ValueError(f"phone ids must be in 1..{len(topology.num_states) - 1}, got {phones.min()}..{phones.max()}")

    n_st = np.asarray(topology.num_states, dtype=np.int64)[phones]
    first = np.concatenate([[0], np.cumsum(n_st)[:-1]])
    last = first + n_st - 1
    total = int(n_st.sum())
    phone = np.repeat(phones, n_st).astype(np.int32)
    hmm_state = (np.arange(total) - np.repeat(first, n_st)).astype(np.int32)
    ctx_l = np.concatenate([[0], phones[:-1]])
    ctx_r = np.concatenate([phones[1:], [0]])
    pdf = np.asarray(pdf_of(np.repeat(ctx_l, n_st), phone.astype(np.int64), np.repeat(ctx_r, n_st),
                            hmm_state.astype(np.int64)), dtype=np.int64)
    if (pdf < 0).any():
        raise ValueError("pdf map returned a negative pdf id")

    loop = np.array([topology.self_loop[p][s] for p, s in zip(phone, hmm_state)], dtype=np.float64)
    with np.errstate(divide="ignore"):
        self_logp = np.log(loop)
        leave = np.log1p(-loop)
        lp_in, lp_skip = math.log(optional_prob), math.log1p(-optional_prob)
    adv = np.full(total, _NEG_INF)
    adv[1:] = leave[:-1]                               # within a phone and into the next phone
    skip_from = np.full(total, -1, dtype=np.int64)
    skip_logp = np.full(total, _NEG_INF)
    init = np.full(total, _NEG_INF)
    final = np.full(total, _NEG_INF)
    for i in np.flatnonzero(optional):
        if i > 0:
            adv[first[i]] += lp_in
        if i + 1 < n:                                  # skip from the previous phone's last state
            if i > 0:
                skip_from[first[i + 1]] = last[i - 1]
                skip_logp[first[i + 1]] = leave[last[i - 1]] + lp_skip
    init[0] = lp_in if optional[0] else 0.0
    if optional[0]:
        init[first[1]] = lp_skip
    final[-1] = 0.0                                    # entering a trailing optional phone was charged on adv
    if optional[-1]:
        final[last[n - 2]] = lp_skip
    min_frames = int(n_st[~optional].sum())
    return UttGraph(pdf, phone, hmm_state, self_logp, adv, skip_from, skip_logp, init, final, min_frames)

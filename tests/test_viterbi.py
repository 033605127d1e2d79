"""Batched Viterbi against brute-force enumeration of every state path on tiny graphs."""

import itertools
import math

import numpy as np
import pytest
import torch

from asrdistill.aligner.topology import Topology
from asrdistill.aligner.utt_graph import MonophonePdfs, Transcript, build_utt_graph
from asrdistill.aligner.viterbi import viterbi, viterbi_batch


def _topo() -> Topology:
    # phones 1 (SIL, 1 state), 2 (SPN), 3, 4 (2 states each); uneven self-loops
    return Topology([0, 1, 1, 2, 2], [[], [0.6], [0.5], [0.7, 0.4], [0.55, 0.8]])


def _trans(g, i, j):
    return max([lp for src, lp in zip(g.pred[j], g.pred_logp[j]) if src == i], default=-math.inf)


def _brute(g, am):
    t, s = am.shape
    best, arg = -math.inf, None
    for path in itertools.product(range(s), repeat=t):
        sc = g.init_logp[path[0]] + sum(am[k, p] for k, p in enumerate(path))
        sc += sum(_trans(g, a, b) for a, b in zip(path, path[1:])) + g.final_logp[path[-1]]
        if sc > best:
            best, arg = sc, path
    return best, arg


def _graph(words, optional_silence, prons=None):
    topo = _topo()
    prons = prons or {"A": [(3,)], "B": [(4, 3)]}
    tr = Transcript(list(words), [prons[w] for w in words], [[0.0] * len(prons[w]) for w in words], 1)
    return build_utt_graph(
        tr, topo, MonophonePdfs.from_topology(topo), 0.3 if optional_silence else 0.0, optional_silence
    )


@pytest.mark.parametrize("optional_silence", [False, True])
def test_viterbi_matches_brute_force(optional_silence):
    rng = np.random.default_rng(0)
    graphs, lls, expect = [], [], []
    two = {"A": [(3,), (4,)], "B": [(4, 3)]}  # A has two pronunciations
    for words, t, prons in [
        (["A"], 3, None),
        (["A", "B"], 6, None),
        (["B"], 5, None),
        (["A", "A"], 6, None),
        (["A"], 4, two),
        (["A", "A"], 4, two),
    ]:
        g = _graph(words, optional_silence, prons)
        t = max(t, g.min_frames)
        assert g.num_states**t <= 600_000
        am = rng.normal(size=(t, g.num_states)) * 3
        graphs.append(g), lls.append(torch.tensor(am)), expect.append(_brute(g, am))
    paths, scores = viterbi(lls, graphs)  # one padded batch of different lengths and sizes
    for (best, arg), p, s in zip(expect, paths, scores):
        assert math.isfinite(best) and s == pytest.approx(best, abs=1e-9)
        assert tuple(p.tolist()) == arg


def test_optional_silence_is_used_and_skipped():
    g = _graph(["A", "B"], True)  # SIL A(2) SIL B(4 states) SIL
    sil = np.flatnonzero(g.phone == 1)
    assert len(sil) == 3 and g.min_frames == 6
    t = 14
    am = np.full((t, g.num_states), -10.0)
    speech = np.flatnonzero(g.phone != 1)
    # frames 0-1 favour the leading silence, then the speech states in order, no inner/trailing silence
    am[0:2, sil[0]] = 0.0
    for k, s in enumerate(speech):
        am[2 + 2 * k : 4 + 2 * k, s] = 0.0
    paths, _ = viterbi([torch.tensor(am)], [g])
    p = paths[0]
    assert g.phone[p[:2]].tolist() == [1, 1]
    assert (g.phone[p[2:]] != 1).all()  # the inner and trailing silences were skipped
    assert p[-1] == g.num_states - 2  # ends in the last speech state, not the trailing silence


def test_too_short_and_impossible_give_none():
    g = _graph(["A", "B"], False)
    short = torch.zeros(g.min_frames - 1, g.num_states)
    dead = torch.zeros(6, g.num_states)
    dead[:, -1] = -math.inf  # the final state can never be reached
    ok = torch.zeros(6, g.num_states)
    paths, scores = viterbi_batch([short, dead, ok], [g, g, g])
    assert paths[0] is None and paths[1] is None and scores[1] == -math.inf
    assert paths[2] is not None and len(paths[2]) == 6 and np.all(np.diff(paths[2]) >= 0)


def test_batching_is_order_independent():
    rng = np.random.default_rng(1)
    graphs = [_graph(["A", "B"] * k, True) for k in range(1, 6)]
    lls = [torch.tensor(rng.normal(size=(10 + 7 * k, g.num_states)), dtype=torch.float32) for k, g in enumerate(graphs)]
    one_by_one = [viterbi([ll], [g])[0][0] for ll, g in zip(lls, graphs)]
    batched, _ = viterbi_batch(lls, graphs, max_cells=2000)  # several small batches, sorted by length
    for a, b in zip(one_by_one, batched):
        assert np.array_equal(a, b)

"""Triphone statistics, phone questions and the decision tree (no GMM core needed)."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

from asrdistill.aligner.questions import arpabet_questions, cluster_questions, phone_questions
from asrdistill.aligner.stats import StatsAccumulator, accumulate_triphone_stats, frame_contexts
from asrdistill.aligner.tree import CENTER, RIGHT, STATE, ContextTree, TreeConfig, grow_tree, pdf_stats
from asrdistill.data.shards import ShardManifest, write_shard

PHONES = ["<eps>", "SIL", "SPN", "AA", "IY", "UW", "T", "K", "S", "N", "L", "B"]
PID = {p: i for i, p in enumerate(PHONES)}
VOWELS = {PID["AA"], PID["IY"], PID["UW"]}
NUM_STATES = [0] + [3] * (len(PHONES) - 1)
DIM = 4


def _utterance(rng, means_fn, n_phones=12):
    """Random phone string (SPN never used) -> per-frame phone/state and features from ``means_fn``."""
    seq = np.r_[PID["SIL"], rng.choice([i for i in range(3, len(PHONES))], n_phones), PID["SIL"]]
    dur = rng.integers(2, 5, size=(len(seq), 3))
    phone = np.repeat(np.repeat(seq, 3), dur.ravel())
    state = np.repeat(np.tile(np.arange(3), len(seq)), dur.ravel())
    left, _, right, _ = frame_contexts(phone, state)
    mean = np.stack([means_fn(l, c, r, s) for l, c, r, s in zip(left, phone, right, state)])
    return phone, state, mean + rng.normal(size=mean.shape)


def _means(l, c, r, s):
    """Each (phone, state) its own mean; T additionally shifts by 6 before a vowel."""
    base = np.full(DIM, 3.0 * c) + s
    if c == PID["T"]:
        base = base + (6.0 if r in VOWELS else 0.0)
    return base


def _stats(num_utts=150, seed=0):
    rng = np.random.default_rng(seed)
    acc = StatsAccumulator(len(PHONES) - 1, 3, DIM, block_frames=2000)  # small blocks: exercise merging
    for _ in range(num_utts):
        acc.add(*_utterance(rng, _means))
    return acc.result()


def test_frame_contexts_instances_and_edges():
    #            SIL SIL | AA AA AA | AA (new instance: state back to 0) | T
    phone = np.array([1, 1, 3, 3, 3, 3, 6])
    state = np.array([0, 2, 0, 1, 2, 0, 0])
    left, center, right, st = frame_contexts(phone, state)
    assert left.tolist() == [0, 0, 1, 1, 1, 3, 3]
    assert right.tolist() == [3, 3, 3, 3, 3, 6, 0]
    assert center.tolist() == phone.tolist() and st.tolist() == state.tolist()


def test_accumulator_matches_direct_sums():
    rng = np.random.default_rng(1)
    acc = StatsAccumulator(len(PHONES) - 1, 3, DIM, block_frames=50)
    rows = []
    for _ in range(20):
        phone, state, x = _utterance(rng, _means, n_phones=4)
        acc.add(phone, state, x)
        rows += [((l, c, r, s), f) for l, c, r, s, f in zip(*frame_contexts(phone, state), x)]
    stats = acc.result()
    assert stats.num_frames == len(rows)
    assert len(np.unique(stats.contexts, axis=0)) == len(stats)
    for ctx in {k for k, _ in rows[::25]}:
        frames = np.array([f for k, f in rows if k == ctx])
        i = np.flatnonzero((stats.contexts == np.array(ctx)).all(1))
        assert len(i) == 1 and stats.count[i[0]] == len(frames)
        np.testing.assert_allclose(stats.sum[i[0]], frames.sum(0))
        np.testing.assert_allclose(stats.sumsq[i[0]], (frames**2).sum(0))


def test_best_question_is_right_vowel():
    stats = _stats()
    qs = arpabet_questions(PHONES)
    tree = grow_tree(stats, NUM_STATES, qs, TreeConfig(num_leaves=len(PHONES) - 1 + 1, min_occupancy=20))
    # exactly one split beyond the phone roots: it must be T's right context in the vowel class
    splits = [n for n in tree.nodes if not n.is_leaf and n.pos != CENTER]
    assert len(splits) == 1
    assert splits[0].pos == RIGHT and set(splits[0].values) == VOWELS
    t = PID["T"]
    for s in range(3):
        assert tree.pdf(PID["K"], t, PID["IY"], s) == tree.pdf(0, t, PID["AA"], s)
        assert tree.pdf(PID["K"], t, PID["IY"], s) != tree.pdf(PID["K"], t, PID["N"], s)


def test_larger_tree_splits_states_and_keeps_occupancy(caplog):
    stats = _stats()
    cfg = TreeConfig(num_leaves=10_000, min_occupancy=40, questions="both")
    with caplog.at_level(logging.WARNING, logger="asrdistill.aligner.tree"):
        tree = grow_tree(stats, NUM_STATES, phone_questions("both", PHONES, stats), cfg)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert f"stopped at {tree.num_pdfs} leaves of the 10000 requested" in msg and ">= 40 frames" in msg
    assert "[2]" in msg  # SPN has no frames and is reported
    count, _, _ = pdf_stats(tree, stats)
    trained = count[count > 0]
    assert trained.min() >= 40
    assert count.sum() == stats.num_frames
    # states differ in mean, so every trained phone's states end up in different senones
    for p in range(3, len(PHONES)):
        assert len({tree.pdf(PID["SIL"], p, PID["SIL"], s) for s in range(3)}) == 3


def test_every_context_maps_to_a_leaf_and_pdfs_are_contiguous(tmp_path):
    stats = _stats(num_utts=60)
    tree = grow_tree(stats, NUM_STATES, arpabet_questions(PHONES), TreeConfig(num_leaves=60, min_occupancy=20))
    leaves = sorted(n.pdf for n in tree.nodes if n.is_leaf)
    assert leaves == list(range(tree.num_pdfs)) and len(tree.pdf_info) == tree.num_pdfs
    ids = range(0, len(PHONES))
    grid = np.array([(l, c, r, s) for l, c, r in itertools.product(ids, range(1, len(PHONES)), ids) for s in range(3)])
    pdfs = tree.pdfs(*grid.T)
    assert pdfs.min() >= 0 and pdfs.max() < tree.num_pdfs
    np.testing.assert_array_equal(pdfs, [tree.pdf(*map(int, row)) for row in grid])  # vectorised == scalar walk
    # pdf_info lists exactly the (phone, state) pairs reaching each senone
    reached = {p: set() for p in range(tree.num_pdfs)}
    for (l, c, r, s), p in zip(grid, pdfs):
        reached[p].add((int(c), int(s)))
    assert all(reached[p] == set(tree.pdf_info[p]) for p in range(tree.num_pdfs))
    # an untrained phone (SPN) still has senones; so do ids beyond the phone set (scalar == vectorised)
    assert 0 <= tree.pdf(0, PID["SPN"], 0, 1) < tree.num_pdfs
    assert (
        tree.pdf(99, PID["T"], 99, 2)
        == tree.pdfs(np.array([99]), np.array([PID["T"]]), np.array([99]), np.array([2]))[0]
    )
    # save/load round trip keeps every mapping
    tree.save(tmp_path / "tree.json")
    again = ContextTree.load(tmp_path / "tree.json")
    assert again.num_pdfs == tree.num_pdfs and again.pdf_info == tree.pdf_info
    np.testing.assert_array_equal(again.pdfs(*grid.T), pdfs)


def test_state_questions_reported_in_pdf_info():
    stats = _stats(num_utts=60)
    tree = grow_tree(stats, NUM_STATES, arpabet_questions(PHONES), TreeConfig(num_leaves=40, min_occupancy=20))
    assert any(n.pos == STATE for n in tree.nodes if not n.is_leaf)
    for pairs in tree.pdf_info:
        assert len({p for p, _ in pairs}) == 1  # a senone never spans two centre phones


def test_cluster_questions_recover_phone_groups():
    rng = np.random.default_rng(3)
    group_a = {PID["AA"], PID["IY"], PID["UW"]}
    acc = StatsAccumulator(len(PHONES) - 1, 3, DIM)
    for _ in range(40):
        acc.add(*_utterance(rng, lambda l, c, r, s: np.full(DIM, 10.0 if c in group_a else 0.0) + 0.1 * c))
    qs = cluster_questions(acc.result(), PHONES)
    assert frozenset(group_a) in qs
    assert frozenset([PID["SIL"], PID["SPN"], 0]) in qs and frozenset([PID["T"]]) in qs
    with pytest.raises(ValueError, match="arpabet"):
        phone_questions("nope", PHONES, acc.result())


def test_arpabet_questions_ignore_stress_and_unknown_phones():
    phones = ["<eps>", "SIL", "SPN", "AA1", "IY0", "T", "ZZ"]
    qs = arpabet_questions(phones)
    assert frozenset([3, 4]) in qs  # vowels, stress stripped
    assert frozenset([6]) in qs  # ZZ only as a singleton
    assert all(6 not in q or len(q) == 1 for q in qs)


def test_accumulate_from_shards_skips_unaligned_and_names_bad_shard(tmp_path):
    rng = np.random.default_rng(4)
    utts = [_utterance(rng, _means, n_phones=3) for _ in range(3)]
    feats = ShardManifest(tmp_path, "feats")
    ali = ShardManifest(tmp_path, "ali")
    feats.shards.append(
        write_shard(
            tmp_path / feats.shard_name(0),
            [(f"u{i}", {"feats": x.astype(np.float16)}) for i, (_, _, x) in enumerate(utts)],
        )
    )
    empty = np.zeros(0, np.int32)
    ali.shards.append(
        write_shard(
            tmp_path / ali.shard_name(0),
            [
                ("u0", {"phone": utts[0][0].astype(np.int32), "state": utts[0][1].astype(np.int32)}),
                ("u1", {"phone": empty, "state": empty}),
                ("u2", {"phone": utts[2][0].astype(np.int32), "state": utts[2][1].astype(np.int32)}),
            ],
        )
    )
    stats = accumulate_triphone_stats(ali, feats, len(PHONES) - 1, 3, lambda utt, x: x.astype(np.float64) * 2)
    assert stats.num_frames == len(utts[0][0]) + len(utts[2][0])
    total = (
        utts[0][2].astype(np.float16).astype(np.float64).sum() + utts[2][2].astype(np.float16).astype(np.float64).sum()
    )
    np.testing.assert_allclose(stats.sum.sum(), 2 * total, rtol=1e-9)

    ali.shards[0] = write_shard(
        tmp_path / ali.shard_name(0),
        [
            (f"u{i}", {"phone": p[:-1].astype(np.int32), "state": s[:-1].astype(np.int32)})
            for i, (p, s, _) in enumerate(utts)
        ],
    )
    with pytest.raises(ValueError, match="ali-000000.tar: u0 has"):
        accumulate_triphone_stats(ali, feats, len(PHONES) - 1, 3, lambda utt, x: x)

"""Training graphs with every pronunciation: the aligner picks the one spoken, and re-decides silence."""

import numpy as np
import pytest
import torch

from asrdistill.aligner.align import AlignConfig, align_subset, read_pron_probs
from asrdistill.aligner.gmm import DiagGmmSet
from asrdistill.aligner.hmm import FeatureTransform, HmmModel
from asrdistill.aligner.topology import Topology
from asrdistill.aligner.utt_graph import MonophonePdfs, Transcript, build_utt_graph
from asrdistill.aligner.viterbi import viterbi
from asrdistill.data.lang import Lang
from asrdistill.data.shards import ShardManifest, iter_shard, write_shard

PHONES = ["<eps>", "SIL", "SPN", "AA", "BB", "CC", "DD", "EE"]
# TOMATO has two pronunciations; the audio is made for the second
LEXICON = [("<UNK>", ("SPN",)), ("TOMATO", ("AA", "BB", "CC")), ("TOMATO", ("AA", "DD", "CC")), ("EE", ("EE",))]
DIM = 4


@pytest.fixture
def setup(tmp_path):
    torch.set_num_threads(1)
    lang = Lang(PHONES, ["<eps>", "<UNK>", "EE", "TOMATO"], LEXICON)
    topo = Topology.uniform(lang.num_phones, 3, 3, (1, 2), 0.6)
    pdfs = MonophonePdfs.from_topology(topo)
    means = np.random.default_rng(0).normal(scale=4.0, size=(pdfs.num_pdfs, DIM))
    model = HmmModel(
        DiagGmmSet.single(torch.tensor(means, dtype=torch.float32), torch.ones(pdfs.num_pdfs, DIM)),
        topo,
        FeatureTransform(np.zeros(DIM), np.ones(DIM), use_deltas=False),
    )
    rng = np.random.default_rng(1)
    pid = lang.phone_id

    def speak(phones):
        frames = [
            means[pdfs.offsets[pid[p]] + s] + rng.normal(scale=0.5, size=(4, DIM)) for p in phones for s in range(3)
        ]
        return np.concatenate(frames).astype(np.float16)

    utts = {
        "u1": ("TOMATO", ["SIL", "AA", "DD", "CC", "SIL"]),  # second pronunciation
        "u2": ("TOMATO EE", ["SIL", "AA", "DD", "CC", "SIL", "EE", "SIL"]),  # silence between the words
        "u3": ("EE TOMATO", ["SIL", "EE", "AA", "DD", "CC", "SIL"]),
    }  # none between them
    man = ShardManifest(tmp_path / "fbank", "feats")
    man.shards.append(
        write_shard(man.directory / man.shard_name(0), [(u, {"feats": speak(p)}) for u, (_, p) in sorted(utts.items())])
    )
    man.save()
    return lang, model, man, {u: t for u, (t, _) in utts.items()}, {u: p for u, (_, p) in utts.items()}


def _realised(phones, states, names):
    starts = np.flatnonzero(
        np.concatenate([[True], (states[1:] == 0) & ((phones[1:] != phones[:-1]) | (states[:-1] != 0))])
    )
    return [names[p] for p in phones[starts]]


def test_aligner_picks_the_spoken_pronunciation_and_silence(setup, tmp_path):
    lang, model, man, text, spoken = setup
    res = align_subset(man, text, lang, model, tmp_path / "ali", AlignConfig(nj=1))
    assert res.skipped == {}
    got = {u: _realised(s["phone"], s["state"], PHONES) for u, s in iter_shard(res.ali.shard_paths[0])}
    assert got == spoken
    prons = (tmp_path / "ali" / "prons.txt").read_text().splitlines()
    assert sorted(line.split(" ", 3)[3] for line in prons if " TOMATO " in line) == ["TOMATO AA DD CC"] * 3
    first = [line.split() for line in prons if line.startswith("u1 ")][0]
    assert first[1:3] == ["12", "36"]  # after the silence (3 states x 4 frames), 9 states x 4 frames
    probs = read_pron_probs(tmp_path / "ali" / "lexiconp.txt")
    assert probs[("TOMATO", ("AA", "DD", "CC"))] == 1.0
    assert probs[("TOMATO", ("AA", "BB", "CC"))] == pytest.approx(1 / 4)  # (0 + 1) / (3 + 1)
    # with those probabilities the first pronunciation is still possible, only dearer
    res2 = align_subset(
        man, text, lang, model, tmp_path / "ali2", AlignConfig(nj=1, pron_probs=str(tmp_path / "ali" / "lexiconp.txt"))
    )
    got2 = {u: _realised(s["phone"], s["state"], PHONES) for u, s in iter_shard(res2.ali.shard_paths[0])}
    assert got2 == spoken


def test_context_expansion_gives_every_state_its_realised_neighbours():
    topo = Topology([0, 1, 1, 2, 1, 2], [[], [0.5], [0.5], [0.5, 0.5], [0.5], [0.5, 0.5]])
    tr = Transcript(["X", "Y"], [[(3,), (4, 5)], [(5, 3), (4,)]], [[0.0, 0.0], [0.0, -0.5]], 1)
    seen = {}

    def pdf_of(left, center, right, state):
        return left * 1000 + center * 100 + right * 10 + state

    g = build_utt_graph(tr, topo, pdf_of, 0.5, True, context=True)
    mono = build_utt_graph(tr, topo, MonophonePdfs.from_topology(topo), 0.5, True, context=False)
    assert g.num_states > mono.num_states and g.min_frames == mono.min_frames == 3
    rng = np.random.default_rng(0)
    for trial in range(40):
        t = int(rng.integers(3, 14))
        paths, _ = viterbi([torch.tensor(rng.normal(size=(t, g.num_states)) * 3)], [g])
        p = paths[0]
        # phone instances on the path: a new one wherever a phone's first state is entered
        new = np.concatenate([[True], (g.hmm_state[p[1:]] == 0) & (p[1:] != p[:-1])])
        inst = np.cumsum(new) - 1
        seq = g.phone[p[new]]
        for k in range(len(p)):
            code = int(g.pdf[p[k]])
            left, center, right = code // 1000, code // 100 % 10, code // 10 % 10
            i = inst[k]
            assert center == seq[i]
            assert left == (seq[i - 1] if i > 0 else 0) and right == (seq[i + 1] if i + 1 < len(seq) else 0)
        seen[tuple(seq)] = True
    assert len(seen) > 5  # many pronunciation/silence combinations were exercised

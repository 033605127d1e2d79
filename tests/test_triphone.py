"""Tiny end-to-end tied-triphone training on synthetic Gaussian "speech" with known state timing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from asrdistill.aligner.align import AlignConfig, align_subset
from asrdistill.aligner.gmm import DiagGmmSet
from asrdistill.aligner.hmm import FeatureTransform, HmmModel, UttAlignment, prepare_transcripts, train_gmm_hmm
from asrdistill.aligner.stats import frame_contexts
from asrdistill.aligner.topology import Topology
from asrdistill.aligner.tree import ContextTree, TreeConfig
from asrdistill.aligner.triphone import TriConfig, read_alignment, train_triphone
from asrdistill.data.lang import Lang
from asrdistill.data.shards import ShardManifest, iter_shard, write_shard
from asrdistill.fileio import read_skipped

PHONES = ["<eps>", "SIL", "SPN", "AA", "IY", "T", "S", "N"]
LEXICON = [
    ("TA", ("T", "AA")),
    ("SIT", ("S", "IY", "T")),
    ("NAN", ("N", "AA", "N")),
    ("TIN", ("T", "IY", "N")),
    ("<UNK>", ("SPN",)),
]
DIM = 40


def _lang() -> Lang:
    return Lang(PHONES, ["<eps>", "<UNK>", "NAN", "SIT", "TA", "TIN"], LEXICON)


def _corpus(tmp_path, name, num_utts, seed):
    """Feature shards, transcripts, true phone/state per frame. T's sound depends on its right neighbour."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(len(PHONES), 5, DIM)) * 2.5
    prons = dict(LEXICON)
    pid = {p: i for i, p in enumerate(PHONES)}
    text, truth, samples, true_ali = {}, {}, [], []
    for u in range(num_utts):
        words = list(rng.choice(["TA", "SIT", "NAN", "TIN"], size=rng.integers(2, 5)))
        phones = [pid["SIL"]]
        for w in words:
            phones += [pid[p] for p in prons[w]]
            if rng.random() < 0.3:
                phones.append(pid["SIL"])
        if phones[-1] != pid["SIL"]:
            phones.append(pid["SIL"])
        frames, true_phone, true_state = [], [], []
        for k, p in enumerate(phones):
            right = phones[k + 1] if k + 1 < len(phones) else 0
            for s in range(5 if p == pid["SIL"] else 3):
                n = int(rng.integers(2, 6))
                m = means[p, s] + (4.0 if p == pid["T"] and right == pid["AA"] else 0.0)
                frames.append(m + rng.normal(size=(n, DIM)))
                true_phone += [p] * n
                true_state += [s] * n
        utt = f"{name}-{u:04d}"
        text[utt] = " ".join(words)
        truth[utt] = np.array(true_phone)
        samples.append((utt, {"feats": np.concatenate(frames).astype(np.float16)}))
        true_ali.append((utt, {"phone": np.array(true_phone, np.int32), "state": np.array(true_state, np.int32)}))
    # an utterance far too short for its transcript, and one without a transcript
    samples.append((f"{name}-short", {"feats": np.zeros((4, DIM), np.float16)}))
    text[f"{name}-short"] = "SIT TIN NAN TA"
    samples.append((f"{name}-notext", {"feats": np.zeros((30, DIM), np.float16)}))
    empty = np.zeros(0, np.int32)
    true_ali += [(f"{name}-{k}", {"phone": empty, "state": empty}) for k in ("short", "notext")]
    samples.sort()
    true_ali.sort(key=lambda kv: kv[0])
    half = len(samples) // 2
    mans = []
    for prefix, items in (("feats", samples), ("ali", true_ali)):
        man = ShardManifest(tmp_path / name, prefix)
        for i, chunk in enumerate([items[:half], items[half:]]):
            man.shards.append(write_shard(man.directory / man.shard_name(i), chunk))
        man.save()
        mans.append(man)
    return mans[0], text, truth, mans[1]


def _mono_stand_in(feats: ShardManifest) -> HmmModel:
    """What triphone training takes from the monophone system: feature transform and topology."""
    transform = FeatureTransform.fit(s["feats"] for p in feats.shard_paths for _, s in iter_shard(p))
    topo = Topology.uniform(len(PHONES) - 1, 3, 5, (1, 2))
    return HmmModel(DiagGmmSet.single(torch.zeros(1, transform.dim), torch.ones(1, transform.dim)), topo, transform)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: torch's intra-op threads only add overhead (and fight over the shared cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    tmp = tmp_path_factory.mktemp("tri")
    lang = _lang()
    feats, text, truth, mono_ali = _corpus(tmp, "train", 40, seed=1)  # true timing stands in for a mono alignment
    mono = _mono_stand_in(feats)
    tri_cfg = TriConfig(num_iters=6, max_gaussians=80, max_iter_inc=4, realign_iters=[2, 4], nj=1)
    tree_cfg = TreeConfig(num_leaves=40, min_occupancy=30, questions="both")
    tri = train_triphone(mono_ali, feats, text, lang, mono, tmp / "tri", tree_cfg, tri_cfg)
    return tmp, lang, feats, text, truth, mono_ali, tri


def test_tree_and_topology_written(trained):
    tmp, lang, _, _, _, _, tri = trained
    tree = ContextTree.load(tmp / "tri" / "tree.json")
    topo = Topology.load(tmp / "tri" / "topo.json")
    assert tree.num_pdfs == tri.num_pdfs and len(topo.num_states) == len(PHONES)
    assert sorted(n.pdf for n in tree.nodes if n.is_leaf) == list(range(tree.num_pdfs))
    for p in range(1, len(PHONES)):  # every phone, with any context, has a senone (SPN is never spoken here)
        for s in range(topo.num_states[p]):
            assert 0 <= tree.pdf(0, p, 0, s) < tree.num_pdfs
    # T before AA sounds different: the tree must have given it its own senones
    t, aa, iy = lang.phone_id["T"], lang.phone_id["AA"], lang.phone_id["IY"]
    assert tree.pdf(0, t, aa, 1) != tree.pdf(0, t, iy, 1)
    # self-loops re-estimated: 2-5 frames per state gives stay probabilities well below the initial 0.75
    assert 0.4 < topo.self_loop[aa][1] < 0.75
    recs = [json.loads(x) for x in (tmp / "tri" / "log" / "train.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and recs[-1]["loglik_per_frame"] > recs[0]["loglik_per_frame"]
    assert (tmp / "tri" / "log" / "train.png").stat().st_size > 0


def test_labels_match_features_and_truth(trained, tmp_path):
    tmp, lang, feats, text, truth, mono_ali, tri = trained
    dev, dev_text, dev_truth, _ = _corpus(tmp_path, "dev", 12, seed=2)
    for man, txt, tru, name in [(feats, text, truth, "train"), (dev, dev_text, dev_truth, "dev")]:
        out = tmp_path / "ali" / name
        res = align_subset(man, txt, lang, tri, out, AlignConfig(nj=1))
        assert [s.name for s in res.pdf.shards] == ["pdf-000000.tar", "pdf-000001.tar"]
        correct = total = 0
        for fpath, ppath, apath in zip(man.shard_paths, res.pdf.shard_paths, res.ali.shard_paths):
            f_items, p_items, a_items = list(iter_shard(fpath)), list(iter_shard(ppath)), list(iter_shard(apath))
            assert [k for k, _ in f_items] == [k for k, _ in p_items] == [k for k, _ in a_items]
            for (utt, f), (_, p), (_, a) in zip(f_items, p_items, a_items):
                if utt.endswith(("short", "notext")):
                    assert p["pdf"].size == 0
                    continue
                assert p["pdf"].shape == (f["feats"].shape[0],) and p["pdf"].dtype == np.int32
                assert 0 <= p["pdf"].min() and p["pdf"].max() < tri.num_pdfs
                correct += int((a["phone"] == tru[utt]).sum())
                total += len(tru[utt])
        assert correct / total > 0.9, f"{name}: frame phone accuracy {correct / total:.3f}"
        skipped = read_skipped(out / "skipped.tsv")
        assert set(skipped) == {f"{name}-short", f"{name}-notext"}
        counts = json.loads((out / "senone_counts.json").read_text())
        assert counts["num_pdfs"] == tri.num_pdfs and sum(counts["counts"]) == res.num_frames
        assert 0 < counts["num_used"] <= tri.num_pdfs


def test_mono_alignment_maps_through_tree(trained):
    _, _, _, _, _, mono_ali, tri = trained
    ali = read_alignment(mono_ali, tri.tree)
    assert ali and all(a.pdf.shape == a.phone.shape and a.pdf.min() >= 0 for a in ali.values())
    # the shard's frames go through the tree together: each utterance gets its own frames' senones back
    for a in ali.values():
        expected = [tri.tree.pdf(*map(int, ctx)) for ctx in zip(*frame_contexts(a.phone, a.state))]
        np.testing.assert_array_equal(a.pdf, expected)


def test_lda_mllt_stage_trains_and_aligns(trained, tmp_path):
    """tri.feature_transform=lda_mllt: spliced frames, LDA, MLLT on schedule; labels as good as the deltas stage's."""
    tmp, lang, feats, text, truth, mono_ali, _ = trained
    cfg = TriConfig(
        num_iters=5,
        max_gaussians=80,
        max_iter_inc=4,
        realign_iters=[2, 4],
        nj=1,
        feature_transform="lda_mllt",
        splice=2,
        lda_dim=12,
        mllt_iters=[1, 3],
    )
    tri = train_triphone(
        mono_ali,
        feats,
        text,
        lang,
        _mono_stand_in(feats),
        tmp_path / "tri2",
        TreeConfig(num_leaves=40, min_occupancy=30, questions="both"),
        cfg,
    )
    assert tri.transform.dim == 12 and tri.transform.splice == 2 and tri.transform.matrix.shape == (12, 5 * DIM)
    loaded = HmmModel.load(tmp_path / "tri2" / "final.pt")
    assert np.array_equal(loaded.transform.matrix, tri.transform.matrix)
    res = align_subset(feats, text, lang, tri, tmp_path / "ali2", AlignConfig(nj=1))
    correct = total = 0
    for path in res.ali.shard_paths:
        for utt, a in iter_shard(path):
            if utt in truth:
                correct += int((a["phone"] == truth[utt]).sum())
                total += len(truth[utt])
    assert correct / total > 0.9, f"LDA+MLLT frame phone accuracy {correct / total:.3f}"


def test_realignment_redecides_silence_the_prior_alignment_lacked(trained, tmp_path):
    """Kaldi re-decides silence at every realignment: a prior alignment without the inner silences is corrected."""
    _, lang, feats, text, truth, mono_ali, tri = trained
    sil = lang.phone_id["SIL"]
    prior, inner_truth = {}, {}
    for utt, a in read_alignment(mono_ali, tri.tree).items():
        phone, state = a.phone.copy(), a.state.copy()
        speech = np.flatnonzero(phone != sil)
        inner = np.zeros(len(phone), bool)
        inner[speech[0] : speech[-1]] = phone[speech[0] : speech[-1]] == sil
        for t in np.flatnonzero(inner):  # the silence between words becomes more of the phone before it
            phone[t], state[t] = phone[t - 1], state[t - 1]
        prior[utt] = UttAlignment(tri.tree.pdfs(*frame_contexts(phone, state)).astype(np.int32), phone, state)
        inner_truth[utt] = inner
    assert sum(m.sum() for m in inner_truth.values()) > 100
    seqs, _ = prepare_transcripts({u: text[u] for u in prior}, lang)
    cfg = TriConfig(num_iters=3, max_gaussians=tri.gmm.num_gauss, realign_iters=[1], nj=1)
    _, ali, _ = train_gmm_hmm(tri, feats, seqs, cfg, tmp_path, alignment=prior)
    found = sum(int((ali[u].phone[m] == sil).sum()) for u, m in inner_truth.items())
    assert found / sum(m.sum() for m in inner_truth.values()) > 0.8
    assert all(ali[u].word is not None for u in ali)

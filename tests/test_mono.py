"""Flat-start monophone training and subset alignment on synthetic "speech" with a known segmentation."""

import json

import numpy as np
import pytest
import torch

from asrdistill.aligner.align import AlignConfig, align_subset
from asrdistill.aligner.hmm import HmmModel, UttAlignment, estimate_self_loops, prepare_transcripts
from asrdistill.aligner.mono import MonoConfig, train_mono
from asrdistill.aligner.topology import Topology
from asrdistill.aligner.tree import TreeConfig
from asrdistill.aligner.triphone import TriConfig, train_triphone
from asrdistill.data.lang import Lang
from asrdistill.data.shards import ShardManifest, iter_shard, write_shard
from asrdistill.fileio import read_done, read_skipped

PHONES = ["<eps>", "SIL", "SPN", "AA", "BB", "CC", "DD", "EE"]
LEXICON = [
    ("<UNK>", ("SPN",)),
    ("ABC", ("AA", "BB", "CC")),
    ("DE", ("DD", "EE")),
    ("CAD", ("CC", "AA", "DD")),
    ("EB", ("EE", "BB")),
]
WORDS = ["ABC", "DE", "CAD", "EB"]
DIM = 6


def _lang() -> Lang:
    return Lang(PHONES, ["<eps>", "<UNK>"] + sorted(WORDS), LEXICON)


def _make_corpus(tmp_path, n_utts=80, seed=0):
    """Frames drawn from one Gaussian per (phone, state); returns features, text and the true phone per frame."""
    rng = np.random.default_rng(seed)
    lang = _lang()
    pid = lang.phone_id
    centers = rng.normal(scale=3.0, size=(len(PHONES), 5, DIM))
    prons = dict(LEXICON)
    feats, text, truth = {}, {}, {}
    for i in range(n_utts):
        words = list(rng.choice(WORDS, size=rng.integers(1, 4)))
        seq = ["SIL"]
        for k, w in enumerate(words):
            if k and rng.random() < 0.5:
                seq.append("SIL")
            seq += list(prons[w])
        seq.append("SIL")
        frames, labels = [], []
        for ph in seq:
            n_states = 3
            for s in range(n_states):
                d = int(rng.integers(2, 7))
                frames.append(centers[pid[ph], s] + rng.normal(scale=0.7, size=(d, DIM)))
                labels += [pid[ph]] * d
        utt = f"spk-ch-{i:04d}"
        feats[utt] = np.concatenate(frames).astype(np.float16) + 10.0  # raw, un-normalised
        text[utt] = " ".join(words)
        truth[utt] = np.asarray(labels)
    return lang, feats, text, truth


def _write_feats(directory, feats, per_shard=30) -> ShardManifest:
    keys = sorted(feats)
    man = ShardManifest(directory, "feats", meta={"dim": DIM})
    for i in range(0, len(keys), per_shard):
        info = write_shard(
            directory / man.shard_name(i // per_shard), ((k, {"feats": feats[k]}) for k in keys[i : i + per_shard])
        )
        man.shards.append(info)
    man.save()
    return man


def _cfg(**kw) -> MonoConfig:
    base = dict(
        num_iters=8,
        realign_iters=[1, 2, 3, 5],
        max_gaussians=60,
        max_iter_inc=5,
        nj=1,
        subset_utts=None,
        silence_states=3,
        min_gaussian_occ=3.0,
    )
    base.update(kw)
    return MonoConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("mono")
    lang, feats, text, truth = _make_corpus(tmp)
    man = _write_feats(tmp / "fbank", feats)
    model = train_mono(man, text, lang, tmp / "exp", _cfg())
    return tmp, lang, feats, text, truth, man, model


def test_flat_start_recovers_boundaries(trained):
    tmp, lang, feats, text, truth, man, model = trained
    res = align_subset(man, text, lang, model, tmp / "ali", AlignConfig(nj=1))
    assert res.skipped == {}
    correct = total = 0
    for path in res.ali.shard_paths:
        for utt, s in iter_shard(path):
            assert s["phone"].shape == (feats[utt].shape[0],) and s["state"].dtype == np.int32
            correct += int((s["phone"] == truth[utt]).sum())
            total += len(truth[utt])
    assert correct / total > 0.97
    # the log-likelihood rose over training, and the log/plot/model files are there
    recs = [json.loads(x) for x in (tmp / "exp/log/train.jsonl").read_text().splitlines()]
    assert len(recs) == 8 and recs[-1]["loglik_per_frame"] > recs[0]["loglik_per_frame"] + 1.0
    assert recs[-1]["num_gauss"] > recs[0]["num_gauss"]
    assert (tmp / "exp/log/train.png").stat().st_size > 1000 and (tmp / "exp/.mono.done").is_file()
    loaded = HmmModel.load(tmp / "exp/final.pt")
    x = loaded.transform.apply(feats[sorted(feats)[0]])
    assert torch.equal(loaded.gmm.loglik(x), model.gmm.loglik(x)) and loaded.tree is None


def test_bad_inputs_are_skipped_and_reported(trained, tmp_path):
    tmp, lang, feats, text, truth, man, model = trained
    feats = dict(feats)
    text = dict(text)
    keys = sorted(feats)
    feats["spk-ch-short"] = feats[keys[0]][:4]  # 4 frames for >= 9 states
    text["spk-ch-short"] = "ABC"
    feats["spk-ch-notext"] = feats[keys[1]]  # no transcript line at all
    text["spk-ch-oov"] = "ABC ZZZ"  # OOV -> <UNK> -> SPN: aligned
    feats["spk-ch-oov"] = np.concatenate([feats[keys[2]], feats[keys[2]]])
    fm = _write_feats(tmp_path / "fbank", feats, per_shard=40)
    res = align_subset(fm, text, lang, model, tmp_path / "ali", AlignConfig(nj=2), force=True)
    assert set(res.skipped) == {"spk-ch-short", "spk-ch-notext"}
    assert "frames" in res.skipped["spk-ch-short"] and "transcript" in res.skipped["spk-ch-notext"]
    assert sorted(read_skipped(tmp_path / "ali/skipped.tsv")) == ["spk-ch-notext", "spk-ch-short"]
    # label shards are aligned 1:1 with the feature shards; skipped utterances have empty arrays
    assert [s.keys for s in res.ali.shards] == [s.keys for s in fm.shards]
    assert [p.name for p in res.ali.shard_paths] == [p.name.replace("feats", "ali") for p in fm.shard_paths]
    spn = lang.phone_id["SPN"]
    for path in res.ali.shard_paths:
        for utt, s in iter_shard(path):
            if utt in res.skipped:
                assert s["phone"].size == 0 and s["state"].size == 0
            else:
                assert s["phone"].shape[0] == feats[utt].shape[0]
            if utt == "spk-ch-oov":
                assert spn in s["phone"]
    assert ShardManifest.load(tmp_path / "ali", "ali").keys == fm.keys
    assert res.pdf is None  # monophone model: no pdf shards unless asked


def test_every_pass_lists_an_utterance_too_short_for_its_transcript_and_aligns_the_rest(tmp_path):
    """Mono training, triphone training and the label passes each write it to skipped.tsv: frames vs HMM states.

    A second utterance whose transcript grew after the monophone pass has a prior alignment but too few frames
    now: the triphone loop's realignment drops it, with the same kind of reason, and the others train on.
    """
    lang, feats, text, _ = _make_corpus(tmp_path, n_utts=40, seed=3)
    short, grown = "spk-ch-short", sorted(feats)[1]
    feats[short] = feats[sorted(feats)[0]][:4]
    text[short] = "ABC DE"  # 5 phones x 3 states: at least 15 frames
    man = _write_feats(tmp_path / "fbank", feats)
    mono = train_mono(man, text, lang, tmp_path / "mono", _cfg(num_iters=4, realign_iters=[1, 2]))
    mono_ali = align_subset(man, text, lang, mono, tmp_path / "mono/ali", AlignConfig(nj=1))
    tri_text = {**text, grown: " ".join(WORDS * 10)}  # 100 phones: 300 states
    tri = train_triphone(
        mono_ali.ali,
        man,
        tri_text,
        lang,
        mono,
        tmp_path / "tri",
        TreeConfig(num_leaves=20, min_occupancy=20),
        TriConfig(num_iters=3, realign_iters=[1], max_gaussians=40, max_iter_inc=2, nj=1),
    )
    tri_ali = align_subset(man, tri_text, lang, tri, tmp_path / "tri_ali", AlignConfig(nj=1))

    too_short = "4 frames, fewer than the 15 HMM states on the shortest path through its transcript's graph"
    too_long = f"{len(feats[grown])} frames, fewer than the 300 HMM states on the shortest path"
    mono_skipped = read_skipped(tmp_path / "mono/skipped.tsv")
    assert list(mono_skipped) == [short] and mono_skipped[short].startswith(too_short)
    assert read_done(tmp_path / "mono", "mono")["skipped"] == 1
    assert list(mono_ali.skipped) == [short] and mono_ali.skipped[short].startswith(too_short)
    tri_skipped = read_skipped(tmp_path / "tri/skipped.tsv")
    assert sorted(tri_skipped) == sorted([short, grown])
    assert tri_skipped[short].startswith(f"not aligned in {tmp_path / 'mono/ali'}: {too_short}")
    assert tri_skipped[grown].startswith(too_long) and read_done(tmp_path / "tri", "tri")["skipped"] == 2
    assert read_skipped(tmp_path / "tri_ali/skipped.tsv") == tri_ali.skipped
    assert tri_ali.skipped[short].startswith(too_short) and tri_ali.skipped[grown].startswith(too_long)
    for res in (mono_ali, tri_ali):  # everything else has labels, frame for frame
        for path in res.ali.shard_paths:
            for utt, s in iter_shard(path):
                assert s["phone"].shape[0] == (0 if utt in res.skipped else feats[utt].shape[0]), utt


def test_transcripts_and_self_loops():
    lang = _lang()
    seqs, skipped = prepare_transcripts({"u1": "ABC OOVWORD", "u2": ""}, lang)
    pid = lang.phone_id
    assert seqs["u1"].words == ["ABC", "<UNK>"] and seqs["u1"].silence == pid["SIL"]
    assert seqs["u1"].prons == [[(pid["AA"], pid["BB"], pid["CC"])], [(pid["SPN"],)]]
    assert skipped == {"u2": "empty transcript"}
    no_unk = Lang(PHONES, ["<eps>", "ABC"], [("ABC", ("AA", "BB", "CC"))])
    _, skipped = prepare_transcripts({"u1": "ABC OOVWORD"}, no_unk)
    assert "OOVWORD" in skipped["u1"]
    topo = Topology.uniform(7, 3)
    ali = UttAlignment(np.zeros(8, np.int32), np.array([3] * 8, np.int32), np.array([0, 0, 0, 1, 2, 2, 2, 2], np.int32))
    est = estimate_self_loops([ali], topo, floor=0.05)
    assert est.self_loop[3][0] == pytest.approx(2 / 3) and est.self_loop[3][1] == pytest.approx(0.05)
    assert est.self_loop[3][2] == pytest.approx(0.95) and est.self_loop[4] == topo.self_loop[4]

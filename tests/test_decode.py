"""Hybrid decoding on the hand-built task of test_graph: crafted posteriors -> known words."""

import json

import numpy as np
import pytest
from graph_paths import pdf_sequence
from test_graph import toy_task

from asrdistill.data.shards import ShardManifest, write_shard
from asrdistill.decoding.decode import DecodeConfig, compute_priors, decode, sweep
from asrdistill.decoding.scoring import wer_report


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return toy_task(tmp_path_factory.mktemp("decode"))


def posteriors(pdfs, num_pdfs, sharp=6.0, seed=0):
    """Noisy log-softmax posteriors peaked on ``pdfs``."""
    x = np.random.default_rng(seed).normal(size=(len(pdfs), num_pdfs))
    x[np.arange(len(pdfs)), pdfs] += sharp
    return (x - np.log(np.exp(x).sum(1, keepdims=True))).astype(np.float32)


def flat_priors(n):
    return np.full(n, -np.log(n), dtype=np.float32)


UTTS = {
    "u1": ([("SIL",), ("B", "AA"), ("K", "AA"), ("AA", "B"), ("SIL",)], "BA KA AB"),
    "u2": ([("K", "AA"), ("SIL",), ("B", "AA")], "KA BA"),
    "u3": ([("AA", "B")], "AB"),
}


def utterances(task):
    lang, tree, topo, _ = task
    return [
        (u, posteriors(pdf_sequence(p, lang, tree, topo, 3), tree.num_pdfs, seed=i))
        for i, (u, (p, _)) in enumerate(UTTS.items())
    ]


@pytest.mark.parametrize("nj", [1, 2])
def test_decode_crafted_posteriors(task, nj, tmp_path):
    _, tree, _, graph = task
    res = decode(graph, utterances(task), flat_priors(tree.num_pdfs), DecodeConfig(nj=nj))
    assert {u: " ".join(w) for u, w in res.hyps.items()} == {u: t for u, (_, t) in UTTS.items()}
    assert res.partial == [] and res.num_frames == sum(len(x) for _, x in utterances(task))
    res.save(tmp_path)
    assert (tmp_path / "hyp.txt").read_text().splitlines()[0] == "u1 BA KA AB"
    assert json.loads((tmp_path / "decode.json").read_text())["partial"] == 0


def test_no_final_state_keeps_partial_and_counts_it(task, tmp_path):
    lang, tree, _, graph = task
    # two frames cannot finish any word or silence (each has 3 HMM states)
    short = posteriors(pdf_sequence([("K", "AA")], lang, tree, task[2])[:2], tree.num_pdfs)
    res = decode(graph, utterances(task)[:1] + [("short", short)], flat_priors(tree.num_pdfs), DecodeConfig(nj=1))
    assert res.partial == ["short"] and "short" in res.hyps
    refs = {u: t for u, (_, t) in UTTS.items() if u == "u1"} | {"short": "KA"}
    r = wer_report(refs, {u: " ".join(w) for u, w in res.hyps.items()})
    assert r.num_utts == 2 and r.num_words == 4 and r.errors >= 1


def test_width_mismatch_names_both_numbers(task):
    _, tree, _, graph = task
    bad = [("u9", np.zeros((5, tree.num_pdfs + 3), dtype=np.float32))]
    with pytest.raises(ValueError, match=r"u9: posterior matrix has shape \(5, 19\).*16 senones"):
        decode(graph, bad, flat_priors(tree.num_pdfs), DecodeConfig(nj=1))


def test_compute_priors_floors_unseen(tmp_path):
    info = write_shard(
        tmp_path / "pdf-000000.tar",
        [("a", {"pdf": np.array([0, 0, 1, 3], np.int32)}), ("skipped", {"pdf": np.zeros(0, np.int32)})],
    )
    m = ShardManifest(tmp_path, "pdf", [info])
    logp = compute_priors([m], 4, floor=1e-8)
    assert np.all(np.isfinite(logp))
    np.testing.assert_allclose(np.exp(logp), [0.5, 0.25, 1e-8, 0.25], rtol=1e-5)
    with pytest.raises(ValueError, match="pdf-000000.tar: a has senone ids in \\[0, 3\\], outside 0..2"):
        compute_priors([m], 3)


def test_sweep_picks_best_scale(task, tmp_path):
    _, tree, _, graph = task
    refs = {u: t for u, (_, t) in UTTS.items()}
    cfg = DecodeConfig(nj=1, sweep_scales=[0.1, 1.0])
    res = sweep(graph, lambda: utterances(task), flat_priors(tree.num_pdfs), refs, cfg, tmp_path)
    assert res.best_scale in (0.1, 1.0) and res.wer[res.best_scale] == min(res.wer.values()) == 0.0
    assert (tmp_path / "scale_0.1" / "wer").is_file()
    assert json.loads((tmp_path / "sweep.json").read_text())["best_scale"] == res.best_scale


def _two_way(pdfs_a, pdfs_b, num_pdfs, sharp=8.0, seed=3):
    """Posteriors that cannot tell two equally long senone paths apart: both peaked equally at every frame."""
    assert len(pdfs_a) == len(pdfs_b)
    x = np.random.default_rng(seed).normal(scale=0.1, size=(len(pdfs_a), num_pdfs))
    x[np.arange(len(pdfs_a)), pdfs_a] = sharp
    x[np.arange(len(pdfs_b)), pdfs_b] = sharp
    return (x - np.log(np.exp(x).sum(1, keepdims=True))).astype(np.float32)


def test_hybrid_scores_divide_by_the_priors(task):
    """Scaled likelihood = posterior / prior: with BA and KA equally probable a posteriori, the senones the
    training data makes frequent (high prior) are discounted, so BA wins; multiplying by the prior
    (a sign error) would pick KA."""
    lang, tree, topo, graph = task
    ba = pdf_sequence([("B", "AA")], lang, tree, topo, 3)
    ka = pdf_sequence([("K", "AA")], lang, tree, topo, 3)
    priors = np.full(tree.num_pdfs, 1e-3)
    priors[np.setdiff1d(ka, ba)] = 0.3  # K's (and its AA context's) senones are common
    log_priors = np.log(priors / priors.sum()).astype(np.float32)
    post = _two_way(ba, ka, tree.num_pdfs)
    res = decode(graph, [("u", post)], log_priors, DecodeConfig(nj=1, acoustic_scale=1.0))
    assert res.hyps["u"] == ["BA"]
    flipped = decode(graph, [("u", post)], -log_priors, DecodeConfig(nj=1, acoustic_scale=1.0))
    assert flipped.hyps["u"] == ["KA"]  # the test can tell the signs apart


def test_hmm_transition_costs_choose_between_equal_acoustics(tmp_path):
    """Long states are cheap for B (self-loop 0.95) and dear for K (0.05): with acoustics that cannot tell BA
    from KA and an LM that prefers KA, the transition costs must still pick BA; a graph without them
    would follow the LM."""
    import math

    from test_graph import PHONES, toy_task

    from asrdistill.aligner.topology import Topology
    from asrdistill.decoding.hclg import GraphConfig, build_graph

    lang, tree, _, _ = toy_task(tmp_path / "base")
    topo = Topology.uniform(len(PHONES) - 1)
    topo.self_loop[PHONES.index("B")] = [0.95] * 3
    topo.self_loop[PHONES.index("K")] = [0.05] * 3
    topo.save(tmp_path / "topo.json")
    lm = {"BA": 0.2, "KA": 0.6, "</s>": 0.2}
    lines = "".join(f"{math.log10(p)} {w}\n" for w, p in lm.items())
    (tmp_path / "lm.arpa").write_text(f"\\data\\\nngram 1=4\n\n\\1-grams:\n-99 <s>\n{lines}\n\\end\\\n")
    graph = build_graph(
        tmp_path / "base/lang",
        tmp_path / "base/tree.json",
        tmp_path / "topo.json",
        tmp_path / "lm.arpa",
        tmp_path / "graph",
        GraphConfig(sil_prob=0.5),
    )
    ba = pdf_sequence([("B", "AA")], lang, tree, topo, 12)
    ka = pdf_sequence([("K", "AA")], lang, tree, topo, 12)
    post = _two_way(ba, ka, tree.num_pdfs)
    res = decode(graph, [("u", post)], flat_priors(tree.num_pdfs), DecodeConfig(nj=1, acoustic_scale=1.0))
    assert res.hyps["u"] == ["BA"]
    # and the LM alone (no duration evidence: one frame per state) picks KA
    short = _two_way(
        pdf_sequence([("B", "AA")], lang, tree, topo, 1),
        pdf_sequence([("K", "AA")], lang, tree, topo, 1),
        tree.num_pdfs,
    )
    assert decode(graph, [("u", short)], flat_priors(tree.num_pdfs), DecodeConfig(nj=1, acoustic_scale=1.0)).hyps[
        "u"
    ] == ["KA"]


def test_sweep_reads_posteriors_once_and_matches_decode_per_scale(task, tmp_path):
    _, tree, _, graph = task
    refs = {u: t for u, (_, t) in UTTS.items()}
    calls = []

    def dev():
        calls.append(1)
        return utterances(task)

    cfg = DecodeConfig(nj=2, sweep_scales=[0.02, 0.1, 1.0])
    res = sweep(graph, dev, flat_priors(tree.num_pdfs), refs, cfg, tmp_path)
    assert len(calls) == 1  # one network pass serves every scale
    for scale in cfg.sweep_scales:
        alone = decode(graph, utterances(task), flat_priors(tree.num_pdfs), DecodeConfig(nj=1, acoustic_scale=scale))
        hyp = (tmp_path / f"scale_{scale:g}" / "hyp.txt").read_text()
        assert hyp == "".join(f"{u} {' '.join(w)}".rstrip() + "\n" for u, w in sorted(alone.hyps.items()))
        assert res.wer[scale] == wer_report(refs, {u: " ".join(w) for u, w in alone.hyps.items()}).wer


def test_workers_share_the_graph_loaded_once(task, monkeypatch):
    import os

    import kaldifst

    from asrdistill.decoding import decode as decode_module

    _, tree, _, graph = task
    parent, reads, real_read = os.getpid(), [], kaldifst.StdConstFst.read

    def read(path):
        if os.getpid() != parent:
            raise AssertionError("a worker read the graph again")
        reads.append(path)
        return real_read(path)

    monkeypatch.setattr(decode_module.kaldifst.StdConstFst, "read", read)
    monkeypatch.setattr(decode_module, "_worker", {})
    res = decode(graph, utterances(task), flat_priors(tree.num_pdfs), DecodeConfig(nj=2))
    assert len(res.hyps) == 3 and len(reads) == 1
    decode(graph, utterances(task), flat_priors(tree.num_pdfs), DecodeConfig(nj=2, acoustic_scale=0.2))
    assert len(reads) == 1  # kept for the next call on the same graph


@pytest.mark.parametrize(
    "body, message",
    [
        ("beam: -5", r"decode: beam must be a positive finite number, got -5"),
        ("beam: .nan", r"decode: beam must be a positive finite number, got nan"),
        ("beam: yes", r"decode.beam: expected a number, got True"),
        ("max_active: 0", r"decode: max_active must be an integer >= 200, got 0"),
        ("max_active: 2.9", r"decode.max_active: expected an integer, got 2.9"),
        ("max_active: 100", r"decode: max_active must be an integer >= 200, got 100"),
        ("min_active: -1", r"decode: min_active must be an integer >= 0, got -1"),
        ("acoustic_scale: 0", r"decode: acoustic_scale must be a positive finite number, got 0"),
        ("sweep_scales: [0.1, .inf]", r"decode: sweep_scales\[1\] must be a positive finite number, got inf"),
    ],
)
def test_decode_settings_are_checked_naming_file_section_key_and_range(tmp_path, body, message):
    from asrdistill.config import load_section

    cfg = tmp_path / "conf.yaml"
    cfg.write_text(f"decode:\n  {body}\n")
    with pytest.raises(ValueError, match=rf"^{cfg}:{message}"):
        load_section(cfg, "decode", DecodeConfig)


def test_a_section_that_is_not_a_mapping_is_an_error_and_an_empty_config_warns(tmp_path, caplog):
    from asrdistill.config import load_section

    cfg = tmp_path / "conf.yaml"
    cfg.write_text("decode: 5\n")
    with pytest.raises(ValueError, match=rf"^{cfg}: section 'decode' must be a mapping of key: value, got 5"):
        load_section(cfg, "decode", DecodeConfig)
    cfg.write_text("# nothing yet\n")
    with caplog.at_level("WARNING"):
        assert load_section(cfg, "decode", DecodeConfig) == DecodeConfig()
    assert f"{cfg}: the config is empty" in caplog.text
    with pytest.raises(ValueError, match=r"max_active must be an integer >= 200, got 2"):
        DecodeConfig(max_active=2)

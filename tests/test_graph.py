"""HCLG on a hand-built task: it accepts exactly the senone sequences of the words' triphones."""

import collections
import json
import math
import subprocess
import sys

import kaldifst
import numpy as np
import pytest
from graph_paths import pdf_sequence

from asrdistill.aligner.topology import Topology
from asrdistill.aligner.tree import CENTER, LEFT, STATE, ContextTree, TreeNode
from asrdistill.data.lang import Lang
from asrdistill.decoding import const_fst, hclg, hclg_writer, hmm_expansion
from asrdistill.decoding.hclg import GraphConfig, add_lex_disambig, build_graph

PHONES = ["<eps>", "SIL", "SPN", "AA", "B", "K"]
AA, B = 3, 4


def toy_tree() -> ContextTree:
    """One senone per (phone, state), except AA's middle state also splits on left context B."""
    nodes: list[TreeNode] = []
    info: list[list[tuple[int, int]]] = []

    def leaf(pairs):
        nodes.append(TreeNode(pdf=len(info)))
        info.append(pairs)
        return len(nodes) - 1

    def node(**kw):
        nodes.append(TreeNode(**kw))
        return len(nodes) - 1

    def phone(c):
        s0, s2 = leaf([(c, 0)]), leaf([(c, 2)])
        if c == AA:  # AA state 1: left context B gets its own senone
            s1 = node(pos=LEFT, values=frozenset({B}), yes=leaf([(c, 1)]), no=leaf([(c, 1)]))
        else:
            s1 = leaf([(c, 1)])
        rest = node(pos=STATE, values=frozenset({1}), yes=s1, no=s2)
        return node(pos=STATE, values=frozenset({0}), yes=s0, no=rest)

    subtrees = {c: phone(c) for c in range(1, len(PHONES))}
    root = subtrees[1]
    for c in range(2, len(PHONES)):
        root = node(pos=CENTER, values=frozenset({c}), yes=subtrees[c], no=root)
    nodes.insert(0, nodes.pop(root))  # the root must be nodes[0]: renumber children
    remap = {root: 0, **{i: i + 1 for i in range(root)}}
    for n in nodes:
        if not n.is_leaf:
            n.yes, n.no = remap.get(n.yes, n.yes), remap.get(n.no, n.no)
    return ContextTree(nodes, len(info), info)


def toy_task(d, sil_prob=0.5):
    """lang/, tree.json, topo.json, lm.arpa (with a word the lexicon lacks) under ``d``."""
    lang = Lang(
        PHONES,
        ["<eps>", "<UNK>", "AB", "BA", "KA", "KAB"],
        [("<UNK>", ("SPN",)), ("BA", ("B", "AA")), ("KA", ("K", "AA")), ("AB", ("AA", "B")), ("KAB", ("K", "AA", "B"))],
    )
    lang.save(d / "lang")
    tree = toy_tree()
    tree.save(d / "tree.json")
    topo = Topology.uniform(len(PHONES) - 1)
    topo.save(d / "topo.json")
    lp = math.log10(1 / 4)  # BA KA AB </s> equally likely; KAB and ZZ absent from the LM or lexicon
    (d / "lm.arpa").write_text(
        f"\\data\\\nngram 1=6\n\n\\1-grams:\n-99 <s>\n{lp} </s>\n{lp} BA\n{lp} KA\n{lp} AB\n-2 ZZ\n\n\\end\\\n"
    )
    out = build_graph(
        d / "lang", d / "tree.json", d / "topo.json", d / "lm.arpa", d / "graph", GraphConfig(sil_prob=sil_prob)
    )
    return lang, tree, topo, out


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return toy_task(tmp_path_factory.mktemp("graph"))


def best_words(hclg, pdfs):
    """Output words of the best HCLG path reading senones ``pdfs`` (None if none)."""
    acceptor = kaldifst.make_linear_acceptor([int(p) + 1 for p in pdfs])
    kaldifst.arcsort(acceptor, sort_type="olabel")
    composed = kaldifst.compose(acceptor, hclg)
    if composed.num_states == 0:
        return None
    ok, _, words, _ = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(composed))
    assert ok
    return words


def to_arrays(fst, tmp):
    """The builder's array form of a small FST."""
    return const_fst.read_arrays(const_fst.save_const(fst, tmp / "to_arrays.fst"))


def read_graph(out):
    hclg = kaldifst.StdVectorFst(kaldifst.StdConstFst.read(str(out / "HCLG.fst")))  # a ConstFst, as Kaldi writes HCLG
    words = {int(i): w for w, i in (line.split() for line in (out / "words.txt").read_text().splitlines())}
    return hclg, words


def test_lex_disambig_homophones_and_prefixes():
    lex = [
        ("A", ("AH",)),
        ("AB", ("AH", "B")),
        ("RED", ("R", "EH", "D")),
        ("READ", ("R", "EH", "D")),
        ("X", ("K", "S")),
    ]
    out, max_k = add_lex_disambig(lex)
    assert [k for _, _, k in out] == [1, 0, 1, 2, 0]
    assert max_k == 2


@pytest.mark.parametrize(
    "prons,expected",
    [
        ([("SIL",), ("B", "AA"), ("K", "AA"), ("AA", "B"), ("SIL",)], ["BA", "KA", "AB"]),
        ([("K", "AA")], ["KA"]),
        ([("AA", "B"), ("SIL",), ("B", "AA")], ["AB", "BA"]),
    ],
)
def test_hclg_accepts_word_senones_and_outputs_words(task, prons, expected):
    lang, tree, topo, out = task
    hclg, words = read_graph(out)
    for frames in (1, 3):  # one frame per state, and with self-loops
        got = best_words(hclg, pdf_sequence(prons, lang, tree, topo, frames))
        assert [words[w] for w in got] == expected


def test_hclg_rejects_wrong_context_skipped_state_and_unlisted_word(task):
    lang, tree, topo, out = task
    hclg, _ = read_graph(out)
    ba = pdf_sequence([("B", "AA")], lang, tree, topo)
    ka = pdf_sequence([("K", "AA")], lang, tree, topo)
    assert ba[4] != ka[4]  # AA's middle state depends on the left context
    assert best_words(hclg, np.r_[ka[:4], ba[4], ka[5]]) is None  # K AA with the after-B senone
    assert best_words(hclg, np.delete(ka, 1)) is None  # a state skipped
    # KAB is in the lexicon but not in the LM: the graph cannot output it
    assert best_words(hclg, pdf_sequence([("K", "AA", "B")], lang, tree, topo)) is None


def test_graph_labels_no_epsilon_cycles_and_info(task):
    lang, tree, _, out = task
    hclg, words = read_graph(out)
    info = json.loads((out / "graph.json").read_text())
    assert info["num_pdfs"] == tree.num_pdfs == 16
    assert info["lm_words_missing_from_lexicon"] == 1  # ZZ
    assert info["build_seconds"] > 0 and info["peak_rss_mb"] > 0
    assert (out / ".graph.done").is_file()
    ilabels = {a.ilabel for s in range(hclg.num_states) for a in kaldifst.ArcIterator(hclg, s)}
    assert ilabels <= set(range(tree.num_pdfs + 1))
    assert max(words) == len(lang.words) + 2 and words[len(lang.words)] == "#0"


def test_no_optional_silence(tmp_path):
    lang, tree, topo, out = toy_task(tmp_path, sil_prob=0.0)
    hclg, words = read_graph(out)
    got = best_words(hclg, pdf_sequence([("B", "AA"), ("K", "AA")], lang, tree, topo))
    assert [words[w] for w in got] == ["BA", "KA"]
    assert best_words(hclg, pdf_sequence([("SIL",), ("B", "AA")], lang, tree, topo)) is None


def test_topology_must_cover_phones(tmp_path):
    toy_task(tmp_path)
    Topology.uniform(3).save(tmp_path / "topo.json")
    with pytest.raises(ValueError, match="topology covers 3 phones"):
        build_graph(
            tmp_path / "lang",
            tmp_path / "tree.json",
            tmp_path / "topo.json",
            tmp_path / "lm.arpa",
            tmp_path / "g2",
            GraphConfig(),
        )


def _reference_self_loops(arcs, finals, start, loop_cost):
    """The per-arc Python pass the array version replaced (kept here as the specification)."""
    entering = [set() for _ in arcs]
    eps_in = [False] * len(arcs)
    eps_in[start] = True
    for out in arcs:
        for il, _, _, nxt in out:
            if il:
                entering[nxt].add(il)
            else:
                eps_in[nxt] = True
    target, base, loops = {}, list(range(len(arcs))), {}
    for q, labels in enumerate(entering):
        if len(labels) == 1 and not eps_in[q]:
            (label,) = labels
            target[q, label] = q
            loops[q] = label
            continue
        for label in sorted(labels):
            target[q, label] = len(base)
            loops[len(base)] = label
            base.append(q)
    new_arcs, new_finals = [], {}
    for q, b in enumerate(base):
        out = [(il, ol, w, target[nxt, il] if il else nxt) for il, ol, w, nxt in arcs[b]]
        label = loops.get(q)
        if label is not None and math.isfinite(loop_cost[label]):
            out.append((label, 0, loop_cost[label], q))
        new_arcs.append(out)
        if b in finals:
            new_finals[q] = finals[b]
    return new_arcs, new_finals


@pytest.mark.parametrize("seed", range(8))
def test_written_graph_matches_per_arc_self_loops_breadth_first_states_and_sorted_arcs(seed, tmp_path, monkeypatch):
    """The streaming writer against the per-arc passes it replaced: self-loops, connect, labels, arcsort;
    states numbered breadth-first."""
    monkeypatch.setattr(hclg_writer, "_CHUNK", 7)  # several chunks even on these small graphs
    rng = np.random.default_rng(seed)
    num_states, num_labels = int(rng.integers(5, 40)), int(rng.integers(2, 6))
    rows = [(s, int(rng.integers(0, num_labels + 1)), 0, 0.5, s + 1) for s in range(num_states - 1)]  # all reachable
    rows += [
        (
            int(rng.integers(num_states)),
            int(rng.integers(0, num_labels + 1)),
            int(rng.integers(0, 3)),
            round(float(rng.random()), 3),
            int(rng.integers(num_states)),
        )
        for _ in range(int(rng.integers(5, 120)))
    ]
    finals = {int(q): round(float(rng.random()), 3) for q in rng.choice(num_states, 3, replace=False)}
    loop_cost = np.array(
        [math.inf] + [math.inf if rng.random() < 0.3 else round(float(rng.random()), 3) for _ in range(num_labels)]
    )
    label2pdf = np.array([0] + list(rng.integers(1, 4, num_labels)), dtype=np.int32)  # labels share senones
    arrays = to_arrays(const_fst.make_fst(num_states, 0, rows, finals, tmp_path), tmp_path)
    num, num_arcs = hclg_writer.write_hclg(arrays, loop_cost, label2pdf, tmp_path / "HCLG.fst")
    fst = kaldifst.StdConstFst.read(str(tmp_path / "HCLG.fst"))  # OpenFst reads it
    got = const_fst.read_arrays(tmp_path / "HCLG.fst")
    assert (len(got.states), len(got.arcs)) == (num, num_arcs)

    by_state = [[] for _ in range(num_states)]
    for s, il, ol, w, d in rows:
        by_state[s].append((il, ol, np.float32(w), d))
    want_arcs, want_finals = _reference_self_loops(by_state, finals, 0, loop_cost)
    new_id, todo = {0: 0}, collections.deque([0])  # numbered breadth-first, successors in arc order
    while todo:
        for *_, d in want_arcs[todo.popleft()]:
            if d not in new_id:
                new_id[d] = len(new_id)
                todo.append(d)
    reach = set(new_id)
    assert got.start == 0 and len(got.states) == len(reach)
    src, il = got.sources(), got.arcs["ilabel"]
    assert np.all((src[1:] != src[:-1]) | (il[1:] >= il[:-1]))  # sorted by input label within each state
    got_rows = sorted(
        zip(
            src.tolist(),
            il.tolist(),
            got.arcs["olabel"].tolist(),
            [round(float(w), 3) for w in got.arcs["weight"]],
            got.arcs["nextstate"].tolist(),
        )
    )
    want_rows = sorted(
        (new_id[q], int(label2pdf[il]), ol, round(float(w), 3), new_id[d])
        for q, out in enumerate(want_arcs)
        if q in reach
        for il, ol, w, d in out
    )
    assert got_rows == want_rows
    final = {q: round(float(w), 3) for q, w in enumerate(got.states["final"]) if np.isfinite(w)}
    assert final == {new_id[q]: round(w, 3) for q, w in want_finals.items() if q in reach}
    assert [sum(1 for a in kaldifst.ArcIterator(fst, q) if a.olabel == 0) for q in range(num)] == got.states[
        "noepsilons"
    ].tolist()


def test_epsilon_cycle_is_detected(tmp_path):
    ok = to_arrays(
        const_fst.make_fst(3, 0, [(0, 0, 0, 0.0, 1), (1, 0, 0, 0.0, 2), (0, 1, 0, 0.0, 0)], {2: 0.0}, tmp_path),
        tmp_path,
    )
    hclg._check_no_epsilon_cycles(ok)
    bad = to_arrays(
        const_fst.make_fst(3, 0, [(0, 0, 0, 0.0, 1), (1, 0, 0, 0.0, 2), (2, 0, 3, 0.0, 1)], {2: 0.0}, tmp_path),
        tmp_path,
    )
    with pytest.raises(ValueError, match="cycle of epsilon-input arcs"):
        hclg._check_no_epsilon_cycles(bad)


def test_memory_estimate_above_limit_is_a_clear_error(tmp_path):
    toy_task(tmp_path)
    with pytest.raises(MemoryError, match=r"lm.arpa: building HCLG for 6 n-grams .* more than the 0.0 GB allowed"):
        build_graph(
            tmp_path / "lang",
            tmp_path / "tree.json",
            tmp_path / "topo.json",
            tmp_path / "lm.arpa",
            tmp_path / "g2",
            GraphConfig(max_memory_gb=1e-6),
        )
    assert not (tmp_path / "g2" / "HCLG.fst").exists()


def _path_cost(hclg, pdfs) -> float:
    acceptor = kaldifst.make_linear_acceptor([int(p) + 1 for p in pdfs])
    kaldifst.arcsort(acceptor, sort_type="olabel")
    ok, _, _, weight = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(kaldifst.compose(acceptor, hclg)))
    assert ok
    return float(weight.value)


def test_pronunciation_probabilities_cost_their_log_in_the_graph(task, tmp_path):
    lang, tree, topo, out = task
    lexiconp = tmp_path / "lexiconp.txt"
    probs = {"BA": 0.1, "AB": 0.5}
    lexiconp.write_text("".join(f"{w} {probs.get(w, 1.0)} {' '.join(p)}\n" for w, p in lang.lexicon))
    weighted = build_graph(
        out.parent / "lang",
        out.parent / "tree.json",
        out.parent / "topo.json",
        out.parent / "lm.arpa",
        tmp_path / "graph",
        GraphConfig(pron_probs=str(lexiconp)),
    )
    plain, _ = read_graph(out)
    costly, words = read_graph(weighted)
    for prons, extra in (([("B", "AA")], -math.log(0.1)), ([("AA", "B")], -math.log(0.5)), ([("K", "AA")], 0.0)):
        pdfs = pdf_sequence(prons, lang, tree, topo, 2)
        assert _path_cost(costly, pdfs) - _path_cost(plain, pdfs) == pytest.approx(extra, abs=1e-3), prons
    lexiconp.write_text("".join(f"{w} 1.0 {' '.join(p)}\n" for w, p in lang.lexicon if w != "KA"))
    with pytest.raises(ValueError, match="no probability for 1 lexicon entries, e.g. KA K AA"):
        build_graph(
            out.parent / "lang",
            out.parent / "tree.json",
            out.parent / "topo.json",
            out.parent / "lm.arpa",
            tmp_path / "graph2",
            GraphConfig(pron_probs=str(lexiconp)),
        )


def _random_hmms(rng):
    """Label sequences of random HMMs as ``hmm_labels`` gives them: per phone one length, sorted, unique."""
    rows = set()
    for _ in range(int(rng.integers(3, 12))):
        phone = int(rng.integers(3))
        n = phone + 1  # phone 0: one state, 1: two, 2: three
        labels = [1 + 10 * phone + 3 * s + int(rng.integers(2)) for s in range(n)]  # few choices: shared prefixes
        rows.add(tuple(labels + [0] * (3 - n)))
    return np.array([(0, 0, 0)] + sorted(rows), dtype=np.int32)


def _hmm_transducer(seqs, label_cost, tmp):
    """H as OpenFst would compose it: a chain per HMM id, its output on the first arc, back to the start."""
    rows, num_states = [], 1
    for k, seq in enumerate(seqs[1:], start=1):
        labels = [int(x) for x in seq if x]
        prev = 0
        for i, lab in enumerate(labels):
            nxt = 0 if i == len(labels) - 1 else num_states
            num_states += nxt != 0
            rows.append((prev, lab, k if i == 0 else 0, float(label_cost[lab]), nxt))
            prev = nxt
    fst = const_fst.make_fst(num_states, 0, rows, {0: 0.0}, tmp)
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


@pytest.mark.parametrize("seed", range(8))
def test_expanded_hmms_equal_h_composed_with_d_and_share_prefixes(seed, tmp_path):
    rng = np.random.default_rng(seed)
    seqs = _random_hmms(rng)
    label_cost = np.concatenate([[0.0], rng.random(int(seqs.max())).round(3)])
    num_states = int(rng.integers(3, 15))
    rows = []
    for s in range(num_states):  # deterministic on HMM ids, plus epsilon-input arcs to later states
        for k in rng.choice(np.arange(1, len(seqs)), int(rng.integers(1, len(seqs))), replace=False):
            rows.append(
                (s, int(k), int(rng.integers(0, 4)), round(float(rng.random()) * 3, 3), int(rng.integers(num_states)))
            )
        if s + 1 < num_states and rng.random() < 0.3:
            rows.append(
                (s, 0, int(rng.integers(0, 2)), round(float(rng.random()), 3), int(rng.integers(s + 1, num_states)))
            )
    finals = {int(q): round(float(rng.random()), 3) for q in rng.choice(num_states, num_states // 2, replace=False)}
    d = const_fst.make_fst(num_states, 0, rows, finals, tmp_path)
    got = hmm_expansion.expand_hmm(to_arrays(d, tmp_path), seqs, label_cost)

    src, il = got.sources(), got.arcs["ilabel"]
    emitting = il > 0
    pairs = src[emitting].astype(np.int64) * 1000 + il[emitting]
    assert len(np.unique(pairs)) == len(pairs)  # a trie: no two arcs of a state share an input label
    expanded = kaldifst.StdVectorFst(kaldifst.StdConstFst.read(str(const_fst.write_arrays(got, tmp_path / "got.fst"))))
    kaldifst.arcsort(d, sort_type="ilabel")
    want = kaldifst.compose(_hmm_transducer(seqs, label_cost, tmp_path), d)
    by_state = [[r for r in rows if r[0] == s] for s in range(num_states)]
    checked = 0
    for _ in range(100):  # label strings of random paths through D: same best cost and output in both
        s, labels = 0, []
        for _ in range(6):
            if s in finals and rng.random() < 0.4 or not by_state[s]:
                break
            _, k, _, _, s = by_state[s][int(rng.integers(len(by_state[s])))]
            labels += [int(x) for x in seqs[k] if x]
        if s not in finals or not labels:
            continue
        acceptor = kaldifst.make_linear_acceptor(labels)
        kaldifst.arcsort(acceptor, sort_type="olabel")
        results = []
        for fst in (want, expanded):
            ok, _, out, w = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(kaldifst.compose(acceptor, fst)))
            assert ok
            results.append((float(w.value), [o for o in out if o]))
        assert results[1][0] == pytest.approx(results[0][0], abs=1e-3) and results[1][1] == results[0][1], labels
        checked += 1
    assert checked >= 10


def test_graph_builder_and_cli_import_without_torch():
    """A graph build's peak memory is its own: torch's ~0.5 GB resident would add to it (asrdistill._exports)."""
    code = (
        "import sys, asrdistill.cli, asrdistill.decoding.hclg, asrdistill.aligner.tree, asrdistill.data.lang; "
        "assert 'torch' not in sys.modules, [m for m in sys.modules if 'torch' in m or 'webdataset' in m][:3]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

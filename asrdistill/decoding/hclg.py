"""The HCLG decoding graph: HMM (H) o context (C) o lexicon (L) o grammar (G).

Built the Kaldi way (``mkgraph.sh``) from the pieces the toolkit already has:

* L: the lexicon with optional silence between words and disambiguation
  symbols ``#1..`` on homophones and prefix pronunciations (``#0`` passes G's
  back-off arcs through), as Kaldi's ``add_lex_disambig.pl`` + ``make_lexicon_fst.py``;
* G: the ARPA LM via ``kaldilm.arpa2fst`` with ``#0`` on back-off arcs;
* C: ``kaldifst.compose_context`` (triphone windows, 0 = utterance edge);
* H: every window -> its HMM states' senones via the decision tree
  (:meth:`ContextTree.pdf`), with transition costs from :class:`Topology`.

``kaldi_decoder.DecodableCtc`` reads the score of input label ``i`` from
column ``i - 1`` of a plain matrix: there are no transition-ids. So H is built
over labels that identify ``(phone, HMM state, senone)`` (enough to know the
self-loop probability); the graph is determinised and minimised on those,
disambiguation symbols are removed, self-loops are added as explicit arcs on
states entered by one such label (splitting states where needed, as Kaldi's
``add-self-loops``), and only then are labels mapped to ``senone + 1``. Every
input label consumes one frame; epsilon-input arcs (left by disambiguation
removal) are checked to form no cycle.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import resource
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import kaldifst
import kaldilm
import numpy as np

from asrdistill.aligner.topology import Topology
from asrdistill.aligner.tree import ContextTree
from asrdistill.config import to_dict
from asrdistill.fileio import atomic_open, atomic_path, mark_done, write_json_atomic
from asrdistill.data.lang import SIL, Lang
from asrdistill.decoding.lm import arpa_vocabulary

__all__ = ["GraphConfig", "build_graph", "add_lex_disambig", "pdf_sequence", "load_graph_info"]

log = logging.getLogger(__name__)

GRAPH_EXTRA_WORDS = ["#0", "<s>", "</s>"]  # appended to words.txt for G (never output by HCLG)


@dataclass
class GraphConfig:
    sil_prob: float = 0.5          # optional silence between words (0: none)
    self_loop_scale: float = 0.1   # scale of HMM transition log-probs (Kaldi's hybrid default)
    arpa_warnings: int = 5         # kaldilm warnings shown for n-grams with unknown words


@dataclass
class _Arc:
    ilabel: int
    olabel: int
    weight: float
    nextstate: int


def add_lex_disambig(lexicon: list[tuple[str, tuple[str, ...]]]) -> tuple[list[tuple[str, tuple[str, ...], int]], int]:
    """Tag pronunciations that are homophones or prefixes of others with ``#k`` (k >= 1).

    Returns ``[(word, phones, k or 0)]`` and the largest ``k`` used; without
    them L o G could not be determinised (Kaldi's ``add_lex_disambig.pl``).
    """
    count: dict[tuple[str, ...], int] = defaultdict(int)
    prefixes: set[tuple[str, ...]] = set()
    for _, pron in lexicon:
        count[pron] += 1
        prefixes.update(pron[:i] for i in range(1, len(pron)))
    used: dict[tuple[str, ...], int] = defaultdict(int)
    out = []
    for word, pron in lexicon:
        k = 0
        if count[pron] > 1 or pron in prefixes:
            used[pron] += 1
            k = used[pron]
        out.append((word, pron, k))
    return out, max(used.values(), default=0)


def _make_fst(num_states: int, start: int, arcs: list[tuple[int, int, int, float, int]],
              finals: dict[int, float]) -> kaldifst.StdVectorFst:
    """A VectorFst from ``(src, ilabel, olabel, cost, dst)`` tuples."""
    fst = kaldifst.StdVectorFst()
    for _ in range(num_states):
        fst.add_state()
    fst.start = start
    for src, il, ol, w, dst in arcs:
        fst.add_arc(src, kaldifst.StdArc(il, ol, w, dst))
    for s, w in finals.items():
        fst.set_final(s, w)
    return fst


def _read_fst(fst: kaldifst.StdVectorFst) -> tuple[list[list[_Arc]], dict[int, float]]:
    arcs: list[list[_Arc]] = []
    finals: dict[int, float] = {}
    for s in range(fst.num_states):
        arcs.append([_Arc(a.ilabel, a.olabel, a.weight.value, a.nextstate) for a in kaldifst.ArcIterator(fst, s)])
        w = fst.final(s).value
        if math.isfinite(w):
            finals[s] = w
    return arcs, finals


def _lexicon_fst(entries: list[tuple[str, tuple[str, ...], int]], phone_id: dict[str, int],
                 word_id: dict[str, int], disambig0: int, word_disambig0: int, sil_prob: float) -> kaldifst.StdVectorFst:
    """L with optional silence: start -> (SIL) -> loop; each word loop -> phones -> loop or silence."""
    if not 0.0 <= sil_prob < 1.0:
        raise ValueError(f"sil_prob must be in [0, 1), got {sil_prob}")
    arcs: list[tuple[int, int, int, float, int]] = []
    if sil_prob > 0:
        start, loop, sil = 0, 1, 2
        no_sil_cost, sil_cost = -math.log(1.0 - sil_prob), -math.log(sil_prob)
        arcs += [(start, 0, 0, no_sil_cost, loop), (start, 0, 0, sil_cost, sil), (sil, phone_id[SIL], 0, 0.0, loop)]
        num_states = 3
    else:
        start = loop = 0
        num_states = 1
    for word, pron, k in entries:
        labels = [phone_id[p] for p in pron] + ([disambig0 + k] if k else [])
        src = loop
        for i, label in enumerate(labels):
            olabel = word_id[word] if i == 0 else 0
            if i + 1 < len(labels):
                arcs.append((src, label, olabel, 0.0, num_states))
                src = num_states
                num_states += 1
            elif sil_prob > 0:
                arcs.append((src, label, olabel, no_sil_cost, loop))
                arcs.append((src, label, olabel, sil_cost, sil))
            else:
                arcs.append((src, label, olabel, 0.0, loop))
    arcs.append((loop, disambig0, word_disambig0, 0.0, loop))  # lets G's #0 back-off arcs through
    fst = _make_fst(num_states, start, arcs, {loop: 0.0})
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


def _grammar_fst(arpa: Path, words_txt: Path, tmp: Path, warnings: int) -> kaldifst.StdVectorFst:
    if arpa.suffix == ".gz":
        plain = tmp / "lm.arpa"
        with gzip.open(arpa, "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        arpa = plain
    g_path = tmp / "G.fst"
    kaldilm.arpa2fst(str(arpa), str(g_path), disambig_symbol="#0", read_symbol_table=str(words_txt),
                     max_arpa_warnings=warnings)
    if not g_path.is_file():
        raise ValueError(f"{arpa}: kaldilm.arpa2fst wrote no G.fst")
    return kaldifst.StdVectorFst.read(str(g_path))


def _hmm_fst(ilabels: list[list[int]], tree: ContextTree, topo: Topology, num_phones: int,
             self_loop_scale: float) -> tuple[kaldifst.StdVectorFst, list[tuple[int, int, int]], int]:
    """H: each context window -> a chain over its HMM states (no self-loops yet).

    Input labels ``1..N`` stand for ``(phone, state, senone)`` triples (returned,
    in label order); windows that are disambiguation symbols (Kaldi's ``#-1``
    and ``#k``) get input labels ``N+1..`` so they survive determinisation.
    The cost of leaving state ``s`` sits on the arc entering it, so a path's
    total is the HMM's transition cost however many self-loops it takes.
    """
    triples: dict[tuple[int, int, int], int] = {}
    arcs: list[tuple[int, int, int, float, int]] = []
    disambig_windows: list[int] = []
    num_states = 1
    for i, window in enumerate(ilabels):
        if len(window) == 0:
            continue
        if len(window) == 1:
            disambig_windows.append(i)
            continue
        if len(window) != 3:
            raise ValueError(f"context window {window} is not a triphone")
        left, center, right = window
        if not 1 <= center <= num_phones:
            raise ValueError(f"context window {window} has no real centre phone")
        n = topo.num_states[center]
        src = 0
        for s in range(n):
            loop = topo.self_loop[center][s]
            if not 0.0 <= loop < 1.0:
                raise ValueError(f"topology: self-loop probability {loop} of phone {center} state {s} not in [0, 1)")
            pdf = tree.pdf(left, center, right, s)
            if not 0 <= pdf < tree.num_pdfs:
                raise ValueError(f"tree gives senone {pdf} for {(left, center, right, s)}; num_pdfs={tree.num_pdfs}")
            label = triples.setdefault((center, s, pdf), len(triples) + 1)
            dst = 0 if s == n - 1 else num_states
            if dst:
                num_states += 1
            arcs.append((src, label, i if s == 0 else 0, -self_loop_scale * math.log(1.0 - loop), dst))
            src = dst
    first_disambig = len(triples) + 1
    for j, i in enumerate(disambig_windows):
        arcs.append((0, first_disambig + j, i, 0.0, 0))
    fst = _make_fst(num_states, 0, arcs, {0: 0.0})
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst, sorted(triples, key=triples.get), first_disambig


def _add_self_loops(fst: kaldifst.StdVectorFst, loop_cost: list[float]) -> tuple[list[list[_Arc]], dict[int, float], int]:
    """Add each HMM state's self-loop to the graph states entered by its label.

    A state entered by one label (and not the start, nor by epsilon) gets the
    loop in place; otherwise it is copied once per entering label so the loop
    never applies to a path that did not enter that HMM state.
    ``loop_cost[label]`` is ``inf`` for states without a self-loop.
    """
    arcs, finals = _read_fst(fst)
    entering: list[set[int]] = [set() for _ in arcs]
    eps_in = [False] * len(arcs)
    eps_in[fst.start] = True
    for out in arcs:
        for a in out:
            if a.ilabel:
                entering[a.nextstate].add(a.ilabel)
            else:
                eps_in[a.nextstate] = True
    target: dict[tuple[int, int], int] = {}
    base = list(range(len(arcs)))      # original state each new state copies
    loops: dict[int, int] = {}         # new state -> label looping on it
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
    new_arcs: list[list[_Arc]] = []
    new_finals: dict[int, float] = {}
    for q, b in enumerate(base):
        out = [_Arc(a.ilabel, a.olabel, a.weight, target[a.nextstate, a.ilabel] if a.ilabel else a.nextstate)
               for a in arcs[b]]
        label = loops.get(q)
        if label is not None and math.isfinite(loop_cost[label]):
            out.append(_Arc(label, 0, loop_cost[label], q))
        new_arcs.append(out)
        if b in finals:
            new_finals[q] = finals[b]
    return new_arcs, new_finals, fst.start


def _check_no_epsilon_cycles(arcs: list[list[_Arc]]) -> None:
    """Raise if epsilon-input arcs form a cycle (the decoder would loop without consuming frames)."""
    color = [0] * len(arcs)  # 0 new, 1 on stack, 2 done
    for root in range(len(arcs)):
        if color[root]:
            continue
        stack = [(root, iter([a.nextstate for a in arcs[root] if a.ilabel == 0]))]
        color[root] = 1
        while stack:
            q, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                color[q] = 2
                stack.pop()
            elif color[nxt] == 1:
                raise ValueError(f"HCLG has a cycle of epsilon-input arcs through state {nxt}")
            elif color[nxt] == 0:
                color[nxt] = 1
                stack.append((nxt, iter([a.nextstate for a in arcs[nxt] if a.ilabel == 0])))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_graph(lang_dir: str | Path, tree_path: str | Path, topo_path: str | Path, arpa_path: str | Path,
                out_dir: str | Path, config: GraphConfig) -> Path:
    """Build ``out_dir/HCLG.fst`` (input labels senone + 1, output labels word ids).

    Also writes ``words.txt`` (the lang's words plus ``#0 <s> </s>``) and
    ``graph.json`` (``num_pdfs`` for the decoder's width check, sizes, counts
    of LM words missing from the lexicon, build time, peak memory), then marks
    ``out_dir`` done (``graph``). Returns ``out_dir``.
    """
    t0 = time.perf_counter()
    lang_dir, out_dir, arpa_path = Path(lang_dir), Path(out_dir), Path(arpa_path)
    lang = Lang.load(lang_dir)
    tree = ContextTree.load(tree_path)
    topo = Topology.load(topo_path)
    if len(topo.num_states) != len(lang.phones):
        raise ValueError(f"{topo_path}: topology covers {len(topo.num_states) - 1} phones, "
                         f"{lang_dir}/phones.txt has {lang.num_phones}")
    if not arpa_path.is_file():
        raise FileNotFoundError(f"{arpa_path}: ARPA language model not found")
    for extra in GRAPH_EXTRA_WORDS:
        if extra in lang.word_id:
            raise ValueError(f"{lang_dir}/words.txt already contains the reserved symbol {extra!r}")

    entries, max_disambig = add_lex_disambig(lang.lexicon)
    disambig0 = len(lang.phones)                       # phone id of #0; #k is disambig0 + k
    disambig_phones = list(range(disambig0, disambig0 + max_disambig + 1))
    words = lang.words + GRAPH_EXTRA_WORDS
    word_id = {w: i for i, w in enumerate(words)}

    lex_words = {w for w, _ in lang.lexicon}
    lm_words = arpa_vocabulary(arpa_path) - {"<s>", "</s>"}
    missing = sorted(lm_words - lex_words)
    if missing:
        log.warning("%s: %d of %d LM words are not in the lexicon; their n-grams are skipped (e.g. %s)",
                    arpa_path, len(missing), len(lm_words), missing[0])

    stats: dict[str, object] = {"config": to_dict(config), "num_pdfs": tree.num_pdfs,
                                "lm_words": len(lm_words), "lm_words_missing_from_lexicon": len(missing),
                                "max_disambig": max_disambig}
    with tempfile.TemporaryDirectory(prefix="asrdistill-graph-") as tmp_name:
        tmp = Path(tmp_name)
        words_txt = tmp / "words.txt"
        words_txt.write_text("".join(f"{w} {i}\n" for i, w in enumerate(words)), encoding="utf-8")
        L = _lexicon_fst(entries, lang.phone_id, word_id, disambig0, word_id["#0"], config.sil_prob)
        G = _grammar_fst(arpa_path, words_txt, tmp, config.arpa_warnings)
    stats["G_states"] = G.num_states

    t = time.perf_counter()
    LG = kaldifst.compose(L, G)
    kaldifst.determinize_star(LG, use_log=True)
    kaldifst.minimize_encoded(LG)
    kaldifst.arcsort(LG, sort_type="ilabel")
    stats["LG_states"] = LG.num_states
    log.info("LG: %d states (%.1f s)", LG.num_states, time.perf_counter() - t)

    t = time.perf_counter()
    CLG, ilabels = kaldifst.compose_context(disambig_phones, 3, 1, LG)
    kaldifst.arcsort(CLG, sort_type="ilabel")
    stats["CLG_states"] = CLG.num_states
    stats["context_windows"] = len(ilabels)
    log.info("CLG: %d states, %d context windows (%.1f s)", CLG.num_states, len(ilabels), time.perf_counter() - t)

    t = time.perf_counter()
    H, triples, first_disambig = _hmm_fst(ilabels, tree, topo, lang.num_phones, config.self_loop_scale)
    HCLG = kaldifst.compose(H, CLG)
    kaldifst.determinize_star(HCLG, use_log=True)
    arcs, finals = _read_fst(HCLG)
    flat = [(s, 0 if a.ilabel >= first_disambig else a.ilabel, a.olabel, a.weight, a.nextstate)
            for s, out in enumerate(arcs) for a in out]
    HCLG = _make_fst(len(arcs), HCLG.start, flat, finals)
    kaldifst.rmepsilon(HCLG)
    kaldifst.minimize_encoded(HCLG)
    log.info("HCLG without self-loops: %d states (%.1f s)", HCLG.num_states, time.perf_counter() - t)

    loop_cost = [math.inf] + [
        -config.self_loop_scale * math.log(p) if (p := topo.self_loop[c][s]) > 0 else math.inf
        for c, s, _ in triples
    ]
    arcs, finals, start = _add_self_loops(HCLG, loop_cost)
    _check_no_epsilon_cycles(arcs)
    label2pdf = [0] + [pdf + 1 for _, _, pdf in triples]
    HCLG = _make_fst(len(arcs), start,
                     [(s, label2pdf[a.ilabel], a.olabel, a.weight, a.nextstate) for s, out in enumerate(arcs) for a in out],
                     finals)
    kaldifst.connect(HCLG)
    kaldifst.arcsort(HCLG, sort_type="ilabel")

    num_arcs = sum(HCLG.num_arcs(s) for s in range(HCLG.num_states))
    stats.update({"HCLG_states": HCLG.num_states, "HCLG_arcs": num_arcs, "hmm_labels": len(triples),
                  "build_seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(_peak_rss_mb(), 1)})
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "HCLG.fst") as p:
        HCLG.write(str(p))
    with atomic_open(out_dir / "words.txt") as f:
        f.writelines(f"{w} {i}\n" for i, w in enumerate(words))
    write_json_atomic(out_dir / "graph.json", stats)
    mark_done(out_dir, "graph", {"lang": str(lang_dir), "tree": str(tree_path), "arpa": str(arpa_path)})
    log.info("HCLG: %d states, %d arcs, built in %.1f s, peak RSS %.0f MB", HCLG.num_states, num_arcs,
             stats["build_seconds"], stats["peak_rss_mb"])
    return out_dir


def load_graph_info(graph_dir: str | Path) -> dict:
    """``graph.json`` of a built graph (``num_pdfs``, sizes, build figures)."""
    path = Path(graph_dir) / "graph.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run build_graph first)")
    return json.loads(path.read_text(encoding="utf-8"))


def pdf_sequence(prons: list[tuple[str, ...]], lang: Lang, tree: ContextTree, topo: Topology,
                 frames_per_state: int = 1) -> np.ndarray:
    """Senone per frame for phones ``prons`` (words and silences in order), triphone context
    across word boundaries and 0 at the utterance edges: the path HCLG must accept."""
    if frames_per_state < 1:
        raise ValueError(f"frames_per_state must be >= 1, got {frames_per_state}")
    phones = [lang.phone_id[p] for pron in prons for p in pron]
    out: list[int] = []
    for i, c in enumerate(phones):
        left = phones[i - 1] if i > 0 else 0
        right = phones[i + 1] if i + 1 < len(phones) else 0
        for s in range(topo.num_states[c]):
            out += [tree.pdf(left, c, right, s)] * frames_per_state
    return np.asarray(out, dtype=np.int64)

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
self-loop probability), and windows whose label sequences are equal share an
HMM id. CLG is relabelled with HMM ids, determinised (log semiring, as Kaldi),
its disambiguation symbols become epsilons and it is minimised: at the size of
CLG, a third of H o CLG's states. Then each arc is expanded into its HMM's
labels on arrays, arcs of a state sharing their common prefixes (a trie, which
is what determinising H o CLG would make of them; the label sequences form a
prefix-free code) with the weights pushed as determinisation would. The
epsilons left by the disambiguation symbols (the LM's back-off arcs among them)
stay, as in Kaldi's graphs, and are checked to form no cycle. Self-loops are
added as explicit arcs on states entered by one such label (splitting states
where needed, as Kaldi's ``add-self-loops``) while the graph is written, and
labels are mapped to ``senone + 1``. Every non-epsilon input label consumes one
frame.

OpenFst (kaldifst) does compose, determinise and minimise; the passes it lacks
(building L, the HMM expansion, self-loops, senone relabelling, the
epsilon-cycle check) run on numpy arrays in OpenFst's ConstFst record layout
(:mod:`~asrdistill.decoding.const_fst`). The steps of :func:`build_graph` hand
each other files, not graphs: each intermediate FST is written out, freed and
read back into a trimmed heap (:mod:`~asrdistill.decoding.graph_memory`), and
HCLG is written state chunk by state chunk (:mod:`~asrdistill.decoding.hclg_writer`).
Before building, the peak memory is estimated from the LM and lexicon sizes and
checked against ``max_memory_gb``.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
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
from asrdistill.aligner.tree import ContextTree, tree_sha256
from asrdistill.config import to_dict
from asrdistill.data.lang import SIL, Lang
from asrdistill.data.lexicon import read_pron_probs
from asrdistill.decoding.const_fst import FstArrays, make_fst, read_arrays, save_const, write_arrays
from asrdistill.decoding.graph_memory import (
    available_memory_gb,
    cpu_seconds,
    estimate_graph_memory_gb,
    peak_rss_mb,
    reload,
    trim_heap,
)
from asrdistill.decoding.hclg_writer import write_hclg
from asrdistill.decoding.hmm_expansion import HmmLabels, expand_hmm, hmm_labels
from asrdistill.decoding.lm import arpa_vocabulary, ngram_counts
from asrdistill.fileio import atomic_open, atomic_path, mark_done, write_json_atomic

__all__ = ["GraphConfig", "build_graph", "add_lex_disambig", "load_graph_info", "check_labels_match_graph"]

log = logging.getLogger(__name__)

GRAPH_EXTRA_WORDS = ["#0", "<s>", "</s>"]  # appended to words.txt for G (never output by HCLG)


@dataclass
class GraphConfig:
    sil_prob: float = 0.5  # optional silence between words (0: none)
    self_loop_scale: float = 0.1  # scale of HMM transition log-probs (Kaldi's hybrid default)
    arpa_warnings: int = 5  # kaldilm warnings shown for n-grams with unknown words
    max_memory_gb: float = 0.0  # refuse to build when the estimated peak is above this (0: memory available now)
    pron_probs: str = ""  # a lexiconp.txt (the aligner writes one per set): -log prob on each pronunciation
    # ("": every pronunciation free, as in a plain lexicon.txt)


def build_graph(
    lang_dir: str | Path,
    tree_path: str | Path,
    topo_path: str | Path,
    arpa_path: str | Path,
    out_dir: str | Path,
    config: GraphConfig,
) -> Path:
    """Build ``out_dir/HCLG.fst`` (input labels senone + 1, output labels word ids).

    The steps hand each other files, not graphs: each reads its input back and
    frees what it built once written, so no two steps' graphs share the memory;
    each records its graph's size in ``stats``. Also writes ``words.txt`` (the lang's words plus ``#0 <s> </s>``) and
    ``graph.json`` (``num_pdfs`` for the decoder's width check, sizes, counts of
    LM words missing from the lexicon, build time, peak memory), then marks
    ``out_dir`` done (``graph``). Returns ``out_dir``.
    """
    t0, c0 = time.perf_counter(), cpu_seconds()
    lang_dir, out_dir, arpa_path = Path(lang_dir), Path(out_dir), Path(arpa_path)
    lang, tree, topo = _load_inputs(lang_dir, tree_path, topo_path, arpa_path)
    entries, max_disambig = add_lex_disambig(lang.lexicon)
    disambig = list(range(len(lang.phones), len(lang.phones) + max_disambig + 1))  # phone ids of #0, #1, ...
    words = lang.words + GRAPH_EXTRA_WORDS
    ngrams, lm_words, missing, estimate_gb = _check_lm(lang, tree, arpa_path, config)
    stats: dict[str, object] = {
        "config": to_dict(config),
        "num_pdfs": tree.num_pdfs,
        "lm_ngrams": ngrams,
        "lm_words": lm_words,
        "lm_words_missing_from_lexicon": missing,
        "max_disambig": max_disambig,
        "estimated_peak_gb": round(estimate_gb, 2),
    }
    with tempfile.TemporaryDirectory(prefix="asrdistill-graph-") as tmp_name:
        tmp = Path(tmp_name)
        lg = _compose_lg(lang, entries, words, disambig, arpa_path, config, tmp, stats)
        lg = _determinise_lg(lg, tmp, stats)
        clg, hmms = _add_context(lg, lang, tree, topo, disambig, config, tmp, stats)
        d = _determinise_over_hmms(clg, hmms.first_disambig, tmp, stats)
        num_states, num_arcs = _write(_expand_h(d, hmms), hmms, topo, config, out_dir)  # freed once written

    stats.update(
        {
            "HCLG_states": num_states,
            "HCLG_arcs": num_arcs,
            "hmm_labels": len(hmms.triples),
            "tree_sha256": tree_sha256(tree_path),
            "build_seconds": round(time.perf_counter() - t0, 3),
            "build_cpu_seconds": round(cpu_seconds() - c0, 3),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
    )
    with atomic_open(out_dir / "words.txt") as f:
        f.writelines(f"{w} {i}\n" for i, w in enumerate(words))
    write_json_atomic(out_dir / "graph.json", stats)
    mark_done(out_dir, "graph", {"lang": str(lang_dir), "tree": str(tree_path), "arpa": str(arpa_path)})
    log.info(
        "HCLG: %d states, %d arcs, built in %.1f s (%.1f s CPU), peak RSS %.0f MB",
        num_states,
        num_arcs,
        stats["build_seconds"],
        stats["build_cpu_seconds"],
        stats["peak_rss_mb"],
    )
    return out_dir


def _load_inputs(
    lang_dir: Path, tree_path: str | Path, topo_path: str | Path, arpa_path: Path
) -> tuple[Lang, ContextTree, Topology]:
    """The lang, tree and topology, checked against each other and the LM's path before any work is done."""
    lang = Lang.load(lang_dir)
    tree = ContextTree.load(tree_path)
    topo = Topology.load(topo_path)
    if len(topo.num_states) != len(lang.phones):
        raise ValueError(
            f"{topo_path}: topology covers {len(topo.num_states) - 1} phones, "
            f"{lang_dir}/phones.txt has {lang.num_phones}"
        )
    if not arpa_path.is_file():
        raise FileNotFoundError(f"{arpa_path}: ARPA language model not found")
    for extra in GRAPH_EXTRA_WORDS:
        if extra in lang.word_id:
            raise ValueError(f"{lang_dir}/words.txt already contains the reserved symbol {extra!r}")
    return lang, tree, topo


def _check_lm(lang: Lang, tree: ContextTree, arpa_path: Path, config: GraphConfig) -> tuple[int, int, int, float]:
    """``(n-grams, LM words, LM words missing from the lexicon, estimated peak GB)`` of the LM.

    Missing words are warned about (their n-grams are lost). A build whose
    estimated peak memory is above the limit is refused here (MemoryError),
    rather than killed by the OS an hour into determinisation.
    """
    lex_words = {w for w, _ in lang.lexicon}
    lm_words = arpa_vocabulary(arpa_path) - {"<s>", "</s>"}
    missing = sorted(lm_words - lex_words)
    if missing:
        log.warning(
            "%s: %d of %d LM words are not in the lexicon; their n-grams are skipped (e.g. %s)",
            arpa_path,
            len(missing),
            len(lm_words),
            missing[0],
        )

    ngrams = sum(ngram_counts(arpa_path))
    estimate_gb = estimate_graph_memory_gb(ngrams, sum(len(p) for _, p in lang.lexicon))
    limit_gb = config.max_memory_gb or available_memory_gb()
    log.info(
        "%s: %d n-grams, %d pronunciations, %d senones: estimated peak memory %.1f GB (limit %.1f GB)",
        arpa_path,
        ngrams,
        len(lang.lexicon),
        tree.num_pdfs,
        estimate_gb,
        limit_gb,
    )
    if estimate_gb > limit_gb:
        raise MemoryError(
            f"{arpa_path}: building HCLG for {ngrams:,} n-grams and {len(lang.lexicon):,} "
            f"pronunciations needs about {estimate_gb:.1f} GB, more than the {limit_gb:.1f} GB "
            f"{'allowed (graph.max_memory_gb)' if config.max_memory_gb else 'available'}; "
            f"use a pruned LM or raise graph.max_memory_gb"
        )
    return ngrams, len(lm_words), len(missing), estimate_gb


def _log_step(t: float, message: str, *args: object) -> None:
    """Log a step's result with its time since ``t`` and the peak memory so far (BENCHMARKS.md quotes them)."""
    log.info(message + " (%.1f s, peak RSS %.0f MB)", *args, time.perf_counter() - t, peak_rss_mb())


def _compose_lg(
    lang: Lang,
    entries: list[tuple[str, tuple[str, ...], int]],
    words: list[str],
    disambig: list[int],
    arpa_path: Path,
    config: GraphConfig,
    tmp: Path,
    stats: dict[str, object],
) -> Path:
    """L o G, written to ``tmp``; L and G are freed here, once composed.

    ``#0`` on L's word loop (phone ``disambig[0]``, word ``#0``) passes G's
    back-off arcs through; ``#k`` on a homophone or prefix pronunciation makes
    L o G determinisable.
    """
    t = time.perf_counter()
    word_id = {w: i for i, w in enumerate(words)}
    words_txt = tmp / "words.txt"
    words_txt.write_text("".join(f"{w} {i}\n" for i, w in enumerate(words)), encoding="utf-8")
    L = _lexicon_fst(
        entries,
        lang.phone_id,
        word_id,
        disambig[0],
        word_id["#0"],
        config.sil_prob,
        tmp,
        _pron_costs(entries, config.pron_probs),
    )
    G = _grammar_fst(arpa_path, words_txt, tmp, config.arpa_warnings)
    stats["G_states"] = G.num_states
    LG = kaldifst.compose(L, G)
    del L, G
    _log_step(t, "L o G: %d states", LG.num_states)
    return save_const(LG, tmp / "LG.fst")


def _determinise_lg(lg: Path, tmp: Path, stats: dict[str, object]) -> Path:
    """L o G determinised (log semiring, as Kaldi) and minimised, written to ``tmp``.

    Each result is written out, freed and read back into a trimmed heap
    (:func:`~asrdistill.decoding.graph_memory.reload` says what that saves).
    """
    t = time.perf_counter()
    LG = reload(lg)
    kaldifst.determinize_star(LG, use_log=True)
    path = save_const(LG, tmp / "LG_det.fst")
    del LG
    LG = reload(path)
    kaldifst.minimize_encoded(LG)
    stats["LG_states"] = LG.num_states
    _log_step(t, "LG: %d states", LG.num_states)
    return save_const(LG, tmp / "LG_min.fst")


def _add_context(
    lg: Path,
    lang: Lang,
    tree: ContextTree,
    topo: Topology,
    disambig: list[int],
    config: GraphConfig,
    tmp: Path,
    stats: dict[str, object],
) -> tuple[Path, HmmLabels]:
    """C o LG with each context window replaced by its HMM id, written to ``tmp``; and what the ids stand for.

    Windows that the tree gives the same senones share an HMM id, so determinising
    over HMM ids (the next step) merges what determinising H o CLG would, at the
    size of CLG (a third of H o CLG's states); H is expanded afterwards on arrays.
    """
    t = time.perf_counter()
    LG = reload(lg)
    kaldifst.arcsort(LG, sort_type="ilabel")
    CLG, ilabels = kaldifst.compose_context(disambig, 3, 1, LG)
    del LG
    trim_heap()
    stats["CLG_states"] = CLG.num_states
    stats["context_windows"] = len(ilabels)
    _log_step(t, "CLG: %d states, %d context windows", CLG.num_states, len(ilabels))
    hmms = hmm_labels(ilabels, tree, topo, lang.num_phones, config.self_loop_scale)
    del ilabels
    arrays = read_arrays(save_const(CLG, tmp / "CLG.fst"))
    del CLG
    trim_heap()
    arrays.arcs["ilabel"] = hmms.window_id[arrays.arcs["ilabel"]]  # windows -> HMM ids
    path = write_arrays(arrays, tmp / "CLG_hmm.fst")
    del arrays
    return path, hmms


def _determinise_over_hmms(clg: Path, first_disambig: int, tmp: Path, stats: dict[str, object]) -> Path:
    """D: CLG over HMM ids determinised (log semiring), disambiguation symbols made epsilons, then minimised.

    The disambiguation symbols are needed to determinise, and would only cost
    the decoder arcs after: Kaldi removes them at this point too. Written to
    ``tmp``; each result is freed and read back as in :func:`_determinise_lg`.
    """
    t = time.perf_counter()
    D = reload(clg)
    kaldifst.determinize_star(D, use_log=True)
    arrays = read_arrays(save_const(D, tmp / "D_det.fst"))
    del D
    trim_heap()
    arrays.arcs["ilabel"][arrays.arcs["ilabel"] >= first_disambig] = 0  # disambiguation symbols -> epsilon
    path = write_arrays(arrays, tmp / "D_nodisambig.fst")
    del arrays
    D = reload(path)
    kaldifst.minimize_encoded(D)
    stats["D_states"] = D.num_states
    _log_step(t, "D: %d states", D.num_states)
    path = save_const(D, tmp / "D_min.fst")
    del D
    trim_heap()
    return path


def _expand_h(d: Path, hmms: HmmLabels) -> FstArrays:
    """H o D on arrays (:func:`~asrdistill.decoding.hmm_expansion.expand_hmm`): HCLG without its self-loops."""
    t = time.perf_counter()
    arrays = expand_hmm(read_arrays(d), hmms.seqs, hmms.label_cost)  # the only reference: freed inside once read
    _log_step(t, "HCLG without self-loops: %d states, %d arcs", len(arrays.states), len(arrays.arcs))
    return arrays


def _write(hclg: FstArrays, hmms: HmmLabels, topo: Topology, config: GraphConfig, out_dir: Path) -> tuple[int, int]:
    """Check for epsilon cycles, then write ``out_dir/HCLG.fst`` with self-loops and senone labels (a ConstFst:
    what the decoder reads, no VectorFst copy made). Returns (states, arcs)."""
    t = time.perf_counter()
    trim_heap()
    _check_no_epsilon_cycles(hclg)
    loop_cost = np.array(
        [math.inf]
        + [
            -config.self_loop_scale * math.log(p) if (p := topo.self_loop[c][s]) > 0 else math.inf
            for c, s, _ in hmms.triples
        ]
    )
    label2pdf = np.array([0] + [pdf + 1 for _, _, pdf in hmms.triples], dtype=np.int32)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "HCLG.fst") as p:
        num_states, num_arcs = write_hclg(hclg, loop_cost, label2pdf, Path(p))
    _log_step(t, "self-loops and senone labels")
    return num_states, num_arcs


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


def _lexicon_fst(
    entries: list[tuple[str, tuple[str, ...], int]],
    phone_id: dict[str, int],
    word_id: dict[str, int],
    disambig0: int,
    word_disambig0: int,
    sil_prob: float,
    tmp: Path,
    pron_costs: np.ndarray | None = None,
) -> kaldifst.StdVectorFst:
    """L with optional silence: start -> (SIL) -> loop; each word loop -> phones -> loop or silence.

    Built on arrays: one row per pronunciation label, each word's chain of states numbered
    after the fixed ones. ``pron_costs`` (one per entry, -log of its probability) go on the
    pronunciation's first arc, as Kaldi's ``make_lexicon_fst.py`` with a ``lexiconp.txt``.
    """
    if not 0.0 <= sil_prob < 1.0:
        raise ValueError(f"sil_prob must be in [0, 1), got {sil_prob}")
    if sil_prob > 0:
        start, loop, sil = 0, 1, 2
        no_sil_cost, sil_cost = -math.log(1.0 - sil_prob), -math.log(sil_prob)
        fixed = [(start, 0, 0, no_sil_cost, loop), (start, 0, 0, sil_cost, sil), (sil, phone_id[SIL], 0, 0.0, loop)]
        first = 3
    else:
        start = loop = 0
        no_sil_cost = 0.0
        fixed, first = [], 1
    lens = np.array([len(p) + (k > 0) for _, p, k in entries], dtype=np.int64)
    labels = np.fromiter(
        (lab for _, pron, k in entries for lab in [*(phone_id[p] for p in pron), *([disambig0 + k] if k else [])]),
        dtype=np.int64,
        count=int(lens.sum()),
    )
    ends = np.cumsum(lens)
    begins = ends - lens
    pos = np.arange(len(labels)) - np.repeat(begins, lens)  # position of each label in its word
    last = pos == np.repeat(lens - 1, lens)
    # word e's internal states: first + (begins[e] - e) + 0 .. lens[e]-2
    state0 = first + begins - np.arange(len(entries))
    chain = np.repeat(state0, lens) + pos
    src = np.where(pos == 0, loop, chain - 1)
    dst = np.where(last, loop, chain)
    olabel = np.where(pos == 0, np.repeat([word_id[w] for w, _, _ in entries], lens), 0)
    cost = np.where(last, no_sil_cost, 0.0)
    if pron_costs is not None:
        cost = cost + np.where(pos == 0, np.repeat(pron_costs, lens), 0.0)
    num_states = first + int((lens - 1).sum())
    extra = np.array(fixed + [(loop, disambig0, word_disambig0, 0.0, loop)], dtype=np.float64)  # #0 passes G's back-off
    cols = [src, labels, olabel, cost, dst]
    if sil_prob > 0:  # a word's last label also goes to the silence state
        cols = [np.concatenate([c, c[last]]) for c in cols]
        cols[3][-int(last.sum()) :] = sil_cost
        cols[4][-int(last.sum()) :] = sil
    rows = np.concatenate([np.stack(cols, axis=1).astype(np.float64), extra])
    fst = make_fst(num_states, start, rows, {loop: 0.0}, tmp)
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


def _pron_costs(entries: list[tuple[str, tuple[str, ...], int]], lexiconp: str) -> np.ndarray | None:
    """-log probability of each lexicon entry from ``lexiconp`` (None without one); an entry it lacks is an error."""
    if not lexiconp:
        return None
    probs = read_pron_probs(lexiconp)
    missing = [(w, p) for w, p, _ in entries if (w, p) not in probs]
    if missing:
        w, p = missing[0]
        raise ValueError(
            f"{lexiconp}: no probability for {len(missing)} lexicon entries, e.g. {w} {' '.join(p)} "
            "(made for another lexicon?)"
        )
    return -np.log(np.array([probs[(w, p)] for w, p, _ in entries], dtype=np.float64))


def _grammar_fst(arpa: Path, words_txt: Path, tmp: Path, warnings: int) -> kaldifst.StdVectorFst:
    if arpa.suffix == ".gz":
        plain = tmp / "lm.arpa"
        with gzip.open(arpa, "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        arpa = plain
    g_path = tmp / "G.fst"
    kaldilm.arpa2fst(
        str(arpa), str(g_path), disambig_symbol="#0", read_symbol_table=str(words_txt), max_arpa_warnings=warnings
    )
    if not g_path.is_file():
        raise ValueError(f"{arpa}: kaldilm.arpa2fst wrote no G.fst")
    return kaldifst.StdVectorFst.read(str(g_path))


def _check_no_epsilon_cycles(fst: FstArrays) -> None:
    """Raise if epsilon-input arcs form a cycle (the decoder would loop without consuming frames).

    Kahn's algorithm on the epsilon sub-graph, one vectorised round per level.
    """
    eps = fst.arcs["ilabel"] == 0
    src, dst = fst.sources()[eps], fst.arcs["nextstate"][eps]
    num_states = len(fst.states)
    indeg = np.bincount(dst, minlength=num_states)
    alive = np.ones(len(src), dtype=bool)
    while alive.any():
        leaving = alive & (indeg[src] == 0)
        if not leaving.any():
            raise ValueError(f"HCLG has a cycle of epsilon-input arcs (through or after state {src[alive][0]})")
        indeg -= np.bincount(dst[leaving], minlength=num_states)
        alive &= ~leaving


def load_graph_info(graph_dir: str | Path) -> dict:
    """``graph.json`` of a built graph (``num_pdfs``, sizes, build figures)."""
    path = Path(graph_dir) / "graph.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (run build_graph first)")
    return json.loads(path.read_text(encoding="utf-8"))


def check_labels_match_graph(labels_meta: dict, graph_dir: str | Path, labels_dir: str | Path) -> None:
    """Refuse labels imported for another tree than the graph's (``import-ali --tree``): the priors and the
    decoder's senone ids would disagree silently (wrong WER, no error)."""
    want, have = labels_meta.get("tree_sha256"), load_graph_info(graph_dir).get("tree_sha256")
    if want and have and want != have:
        raise ValueError(
            f"{labels_dir}: labels are for the tree {labels_meta.get('tree')} but {graph_dir} was built "
            "from another tree; rebuild the graph from that tree (asrdistill graph) or import the "
            "alignments with --tree naming the graph's tree"
        )

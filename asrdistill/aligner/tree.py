"""Phonetic decision tree over triphone HMM states; its leaves are the senones.

A node asks whether one element of the context ``(left, center, right, state)``
is in a set; leaves hold a senone (pdf) id. Phone ids follow ``lang/phones.txt``;
``0`` stands for "no context" at utterance edges. Every context reaches a leaf,
so triphones never seen in training still get a senone.

Building (:func:`grow_tree`, :func:`build_tree`) follows Kaldi's
``build-tree``: one root per centre phone shared by its HMM states (the tree
may ask about the state), greedy best-first splits by the log-likelihood gain
of single diagonal Gaussians fitted to pooled context statistics, questions
about the left/right phone from :mod:`asrdistill.aligner.questions`, a minimum
occupancy per leaf and a target number of leaves. Above the phone roots sits a
fixed balanced tree of questions on the centre phone, so every phone id (and
any out-of-range id) reaches a leaf; phones without training data get one leaf
covering all their states.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from asrdistill.aligner.questions import phone_questions
from asrdistill.aligner.stats import TriphoneStats, accumulate_triphone_stats, gaussian_loglike
from asrdistill.aligner.topology import Topology
from asrdistill.config import to_dict
from asrdistill.data.lang import Lang
from asrdistill.fileio import write_json_atomic

if TYPE_CHECKING:  # shards import webdataset, which imports torch: not needed to read or walk a tree
    from asrdistill.data.shards import ShardManifest

__all__ = [
    "TreeNode",
    "ContextTree",
    "LEFT",
    "CENTER",
    "RIGHT",
    "STATE",
    "TreeConfig",
    "grow_tree",
    "pdf_stats",
    "build_tree",
    "tree_sha256",
]

log = logging.getLogger(__name__)

LEFT, CENTER, RIGHT, STATE = 0, 1, 2, 3  # positions a question may look at


@dataclass
class TreeNode:
    """A leaf (``pdf >= 0``) or a question ``context[pos] in values`` -> ``yes`` / ``no``."""

    pdf: int = -1
    pos: int = -1
    values: frozenset[int] = frozenset()
    yes: int = -1
    no: int = -1

    @property
    def is_leaf(self) -> bool:
        return self.pdf >= 0


@dataclass
class ContextTree:
    """Root is ``nodes[0]``. ``pdf_info[pdf]`` lists the ``(phone, state)`` pairs the senone covers."""

    nodes: list[TreeNode]
    num_pdfs: int
    pdf_info: list[list[tuple[int, int]]]

    def pdf(self, left: int, center: int, right: int, state: int) -> int:
        ctx = (left, center, right, state)
        node = self.nodes[0]
        while not node.is_leaf:
            node = self.nodes[node.yes if ctx[node.pos] in node.values else node.no]
        return node.pdf

    def pdfs(self, left: np.ndarray, center: np.ndarray, right: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`pdf` over equal-length int arrays (e.g. every frame of an utterance).

        Only the branches some row reaches are walked: an utterance visits a few
        hundred of a 2,500-leaf tree's ~5,000 nodes, not all of them.
        """
        ctx = np.stack([left, center, right, state]).astype(np.int64)  # (4, N)
        out = np.full(ctx.shape[1], -1, dtype=np.int64)
        stack = [(0, np.arange(ctx.shape[1]))]
        while stack:
            idx, rows = stack.pop()
            if rows.size == 0:
                continue
            node = self.nodes[idx]
            if node.is_leaf:
                out[rows] = node.pdf
                continue
            hit = np.isin(ctx[node.pos, rows], np.fromiter(node.values, dtype=np.int64, count=len(node.values)))
            stack.append((node.yes, rows[hit]))
            stack.append((node.no, rows[~hit]))
        return out

    def to_dict(self) -> dict:
        """Plain-data form (JSON, checkpoints)."""
        nodes = [
            {"pdf": n.pdf} if n.is_leaf else {"pos": n.pos, "values": sorted(n.values), "yes": n.yes, "no": n.no}
            for n in self.nodes
        ]
        return {"num_pdfs": self.num_pdfs, "pdf_info": self.pdf_info, "nodes": nodes}

    @classmethod
    def from_dict(cls, data: dict) -> "ContextTree":
        nodes = [
            TreeNode(pdf=n["pdf"])
            if "pdf" in n
            else TreeNode(pos=n["pos"], values=frozenset(n["values"]), yes=n["yes"], no=n["no"])
            for n in data["nodes"]
        ]
        info = [[(int(p), int(s)) for p, s in pairs] for pairs in data["pdf_info"]]
        return cls(nodes, int(data["num_pdfs"]), info)

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "ContextTree":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass
class TreeConfig:
    """Decision-tree building; ``num_leaves`` is the target number of senones."""

    num_leaves: int = 1000  # Kaldi LibriSpeech-100: 2000-5000; paper: 14000 on 2000 h
    min_occupancy: float = 100.0  # frames each leaf must keep (Kaldi --cluster-thresh analogue)
    questions: str = "both"  # 'arpabet' | 'auto' (clustered phones) | 'both'
    min_gain: float = 0.0  # stop splitting a leaf below this log-likelihood gain
    var_floor: float = 0.01  # variance floor of the tree's single Gaussians


@dataclass
class _Grow:
    """A node of the tree being grown under one phone root."""

    rows: np.ndarray  # indices into the stats' contexts
    states: frozenset[int]  # HMM states that can reach it
    gain: float = 0.0  # best split found for it (if any)
    split: tuple[int, frozenset[int]] | None = None
    children: tuple["_Grow", "_Grow"] | None = None
    question: tuple[int, frozenset[int]] | None = None
    objf: float = 0.0


@dataclass
class _Splitter:
    """Finds each leaf's best question with a few matrix products.

    Statistics ``[count | sum | sumsq]`` are first summed per value of the
    asked position (sort + ``reduceat``), then every question of that position
    is scored at once with one small matrix product.
    """

    stats: TriphoneStats
    questions: dict[int, list[frozenset[int]]]  # position -> candidate sets
    config: TreeConfig
    member: dict[int, np.ndarray] = field(init=False)  # position -> (Q, num_values) 0/1

    def __post_init__(self) -> None:
        st = self.stats
        top = max((max(q) for qs in self.questions.values() for q in qs), default=0)
        self.width = int(max(st.contexts.max(initial=0), top)) + 1
        self.member = {}
        for pos, qs in self.questions.items():
            m = np.zeros((len(qs), self.width))
            for i, q in enumerate(qs):
                m[i, sorted(q)] = 1.0
            self.member[pos] = m
        self.packed = np.concatenate([st.count[:, None], st.sum, st.sumsq], 1)  # (N, 1 + 2D)

    def best(self, node: _Grow) -> None:
        cfg, d = self.config, self.stats.dim
        rows = node.rows
        packed = self.packed[rows]
        tot = packed.sum(0)
        tc, t1, t2 = tot[0], tot[1 : d + 1], tot[d + 1 :]
        node.objf = float(gaussian_loglike(tc, t1, t2, cfg.var_floor))
        node.gain, node.split = -np.inf, None
        if tc < 2 * cfg.min_occupancy:
            return
        for pos, member in self.member.items():
            vals = self.stats.contexts[rows, pos]
            order = np.argsort(vals, kind="stable")
            sorted_vals = vals[order]
            starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
            if len(starts) < 2:
                continue
            used = sorted_vals[starts]
            per_value = np.add.reduceat(packed[order], starts, axis=0)  # (values, 1 + 2D); no BLAS threads
            y = member[:, used] @ per_value  # (Q, 1 + 2D) pooled "yes" statistics
            yc, y1, y2 = y[:, 0], y[:, 1 : d + 1], y[:, d + 1 :]
            nc = tc - yc
            ok = (yc >= cfg.min_occupancy) & (nc >= cfg.min_occupancy)
            if not ok.any():
                continue
            yc, y1, y2, nc = yc[ok], y1[ok], y2[ok], nc[ok]
            gain = (
                gaussian_loglike(yc, y1, y2, cfg.var_floor)
                + gaussian_loglike(nc, t1 - y1, t2 - y2, cfg.var_floor)
                - node.objf
            )
            q = int(np.argmax(gain))
            if gain[q] > node.gain:
                node.gain, node.split = float(gain[q]), (pos, self.questions[pos][int(np.flatnonzero(ok)[q])])


def _state_questions(max_states: int) -> list[frozenset[int]]:
    """Each single state and each prefix ``{0..k}`` of the left-to-right states."""
    qs = [frozenset([s]) for s in range(max_states)] + [frozenset(range(k + 1)) for k in range(1, max_states - 1)]
    return list(dict.fromkeys(qs))


def grow_tree(
    stats: TriphoneStats, num_states: list[int], questions: list[frozenset[int]], config: TreeConfig
) -> ContextTree:
    """Grow the tree greedily, best gain first, until ``config.num_leaves`` leaves or no valid split.

    ``num_states[p]`` is phone ``p``'s state count (index 0 unused);
    ``questions`` are phone sets asked about the left and right context.
    """
    t0 = time.time()
    num_phones = len(num_states) - 1
    ctx = stats.contexts
    splitter = _Splitter(stats, {LEFT: questions, RIGHT: questions, STATE: _state_questions(max(num_states))}, config)
    order = np.argsort(ctx[:, CENTER], kind="stable")
    bounds = np.searchsorted(ctx[order, CENTER], np.arange(num_phones + 2))
    roots: dict[int, _Grow] = {}
    heap: list[tuple[float, int, _Grow]] = []
    tick = 0
    for p in range(1, num_phones + 1):
        rows = order[bounds[p] : bounds[p + 1]]
        roots[p] = node = _Grow(rows, frozenset(range(num_states[p])))
        if len(rows):
            splitter.best(node)
            if node.split is not None and node.gain > config.min_gain:
                heapq.heappush(heap, (-node.gain, tick, node))
                tick += 1
    start_objf = sum(r.objf for r in roots.values())
    num_leaves = num_phones
    gained = 0.0
    while heap and num_leaves < config.num_leaves:
        neg_gain, _, node = heapq.heappop(heap)
        pos, values = node.split
        hit = np.isin(ctx[node.rows, pos], np.fromiter(values, dtype=np.int64))
        states = (node.states & values, node.states - values) if pos == STATE else (node.states, node.states)
        node.question = (pos, values)
        node.children = (_Grow(node.rows[hit], states[0]), _Grow(node.rows[~hit], states[1]))
        for child in node.children:
            splitter.best(child)
            if child.split is not None and child.gain > config.min_gain:
                heapq.heappush(heap, (-child.gain, tick, child))
                tick += 1
        num_leaves += 1
        gained -= neg_gain
    if num_leaves < config.num_leaves:
        log.warning(
            "tree: stopped at %d leaves of the %d requested: no further split keeps >= %g frames on "
            "both sides with gain > %g (%d frames, %d contexts in total)",
            num_leaves,
            config.num_leaves,
            config.min_occupancy,
            config.min_gain,
            stats.num_frames,
            len(stats),
        )
    unseen = [p for p in range(1, num_phones + 1) if len(roots[p].rows) == 0]
    if unseen:
        log.warning("tree: phone ids %s have no training frames; each gets one untrained leaf", unseen)
    tree = _assemble(roots, num_phones)
    log.info(
        "tree: %d leaves, log-likelihood %.4g -> %.4g per frame (+%.4g), %.1fs",
        tree.num_pdfs,
        start_objf / max(stats.num_frames, 1),
        (start_objf + gained) / max(stats.num_frames, 1),
        gained / max(stats.num_frames, 1),
        time.time() - t0,
    )
    return tree


def _assemble(roots: dict[int, _Grow], num_phones: int) -> ContextTree:
    """Flatten the phone roots under a balanced centre-phone tree; number leaves 0..N-1 depth-first."""
    nodes: list[TreeNode] = []
    info: list[list[tuple[int, int]]] = []

    def add_grow(p: int, g: _Grow) -> int:
        idx = len(nodes)
        nodes.append(TreeNode())
        if g.children is None:
            nodes[idx] = TreeNode(pdf=len(info))
            info.append([(p, s) for s in sorted(g.states)])
        else:
            yes, no = add_grow(p, g.children[0]), add_grow(p, g.children[1])
            nodes[idx] = TreeNode(pos=g.question[0], values=g.question[1], yes=yes, no=no)
        return idx

    def add_centre(phones: list[int]) -> int:
        if len(phones) == 1:
            return add_grow(phones[0], roots[phones[0]])
        idx = len(nodes)
        nodes.append(TreeNode())
        half = len(phones) // 2
        yes, no = add_centre(phones[:half]), add_centre(phones[half:])
        nodes[idx] = TreeNode(pos=CENTER, values=frozenset(phones[:half]), yes=yes, no=no)
        return idx

    add_centre(list(range(1, num_phones + 1)))
    return ContextTree(nodes, len(info), info)


def pdf_stats(tree: ContextTree, stats: TriphoneStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-senone ``(count (P,), sum (P, D), sumsq (P, D))``: initial single Gaussians of the tied-state model."""
    c = stats.contexts
    pdf = tree.pdfs(c[:, LEFT], c[:, CENTER], c[:, RIGHT], c[:, STATE])
    count = np.bincount(pdf, weights=stats.count, minlength=tree.num_pdfs)
    s1 = np.zeros((tree.num_pdfs, stats.dim))
    s2 = np.zeros((tree.num_pdfs, stats.dim))
    np.add.at(s1, pdf, stats.sum)
    np.add.at(s2, pdf, stats.sumsq)
    return count, s1, s2


def build_tree(
    mono_ali: ShardManifest,
    feats: ShardManifest,
    lang: Lang,
    topo: Topology,
    config: TreeConfig,
    out_dir: str | Path,
    transform: Callable[[str, np.ndarray], np.ndarray],
) -> tuple[ContextTree, TriphoneStats]:
    """Accumulate triphone statistics from ``mono_ali``, grow the tree, write ``out_dir/tree.json``.

    ``transform(utt, raw_feats)`` gives the GMM feature space. Also writes
    ``tree_info.json`` (config, sizes, questions used). Returns the tree and the
    statistics (the latter initialise the tied-state Gaussians, see :func:`pdf_stats`).
    """
    out_dir = Path(out_dir)
    if len(topo.num_states) != len(lang.phones):
        raise ValueError(f"topology covers {len(topo.num_states) - 1} phones but lang has {lang.num_phones}")
    stats = accumulate_triphone_stats(mono_ali, feats, lang.num_phones, topo.max_states, transform)
    questions = phone_questions(config.questions, lang.phones, stats, config.var_floor)
    tree = grow_tree(stats, topo.num_states, questions, config)
    tree.save(out_dir / "tree.json")
    write_json_atomic(
        out_dir / "tree_info.json",
        {
            "config": to_dict(config),
            "num_pdfs": tree.num_pdfs,
            "num_frames": stats.num_frames,
            "num_contexts": len(stats),
            "questions": [[lang.phones[i] if i else "<edge>" for i in sorted(q)] for q in questions],
        },
    )
    return tree, stats


def tree_sha256(path: str | Path) -> str:
    """Content hash of a ``tree.json``: senone ids mean something only with their tree, so label shards and graphs
    record it and the stages that combine them compare it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

"""Phonetic decision tree over triphone HMM states; its leaves are the senones.

A node asks whether one element of the context ``(left, center, right, state)``
is in a set; leaves hold a senone (pdf) id. Phone ids follow ``lang/phones.txt``;
``0`` stands for "no context" at utterance edges. Every context reaches a leaf,
so triphones never seen in training still get a senone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asrdistill.fileio import write_json_atomic

__all__ = ["TreeNode", "ContextTree", "LEFT", "CENTER", "RIGHT", "STATE"]

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
        """Vectorised :meth:`pdf` over equal-length int arrays (e.g. every frame of an utterance)."""
        ctx = np.stack([left, center, right, state]).astype(np.int64)  # (4, N)
        out = np.full(ctx.shape[1], -1, dtype=np.int64)
        stack = [(0, np.arange(ctx.shape[1]))]
        while stack:
            idx, rows = stack.pop()
            node = self.nodes[idx]
            if node.is_leaf:
                out[rows] = node.pdf
                continue
            hit = np.isin(ctx[node.pos, rows], np.fromiter(node.values, dtype=np.int64, count=len(node.values)))
            stack.append((node.yes, rows[hit]))
            stack.append((node.no, rows[~hit]))
        return out

    def save(self, path: str | Path) -> None:
        nodes = [
            {"pdf": n.pdf} if n.is_leaf else {"pos": n.pos, "values": sorted(n.values), "yes": n.yes, "no": n.no}
            for n in self.nodes
        ]
        write_json_atomic(path, {"num_pdfs": self.num_pdfs, "pdf_info": self.pdf_info, "nodes": nodes})

    @classmethod
    def load(cls, path: str | Path) -> "ContextTree":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        nodes = [
            TreeNode(pdf=n["pdf"]) if "pdf" in n else TreeNode(pos=n["pos"], values=frozenset(n["values"]), yes=n["yes"], no=n["no"])
            for n in data["nodes"]
        ]
        info = [[(int(p), int(s)) for p, s in pairs] for pairs in data["pdf_info"]]
        return cls(nodes, int(data["num_pdfs"]), info)

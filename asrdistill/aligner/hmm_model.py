"""A GMM-HMM and the features it scores: what the re-estimation loop (:mod:`asrdistill.aligner.hmm`) trains.

:class:`FeatureTransform` turns raw log-mel frames into GMM features (global
mean/variance normalisation, deltas or spliced frames, an LDA+MLLT matrix);
:class:`HmmModel` holds the Gaussians, topology, transform and pdf map and is
what ``final.pt`` stores; :class:`UttAlignment` is one utterance's per-frame
labels. Kept apart from the loop so that loading a model for alignment or
inspection needs none of the training machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from asrdistill.aligner.gmm import DiagGmmSet
from asrdistill.aligner.topology import Topology
from asrdistill.aligner.tree import ContextTree
from asrdistill.aligner.utt_graph import MonophonePdfs, PdfFn, UttGraph
from asrdistill.fileio import atomic_path, load_weights

__all__ = ["FeatureTransform", "HmmModel", "UttAlignment", "add_deltas", "splice_frames"]

# ------------------------------------------------------------------------- features


def add_deltas(x: torch.Tensor, window: int = 2) -> torch.Tensor:
    """Append deltas and delta-deltas (Kaldi ``add-deltas``: regression over +-``window`` frames, edges repeated)."""

    def delta(y: torch.Tensor) -> torch.Tensor:
        t = y.shape[0]
        idx = torch.arange(t)
        out = torch.zeros_like(y)
        for n in range(1, window + 1):
            out += n * (y[(idx + n).clamp(max=t - 1)] - y[(idx - n).clamp(min=0)])
        return out / (2 * sum(n * n for n in range(1, window + 1)))

    d1 = delta(x)
    return torch.cat([x, d1, delta(d1)], 1)


def splice_frames(x: torch.Tensor, context: int) -> torch.Tensor:
    """Each frame with its +-``context`` neighbours side by side (Kaldi ``splice-feats``, edges repeated)."""
    t = x.shape[0]
    idx = (torch.arange(t)[:, None] + torch.arange(-context, context + 1)[None, :]).clamp(0, max(t - 1, 0))
    return x[idx].reshape(t, -1)  # (T, (2 * context + 1) * D)


@dataclass
class FeatureTransform:
    """Raw log-mel -> GMM features: global mean/variance normalisation, deltas or spliced frames, a matrix.

    ``splice > 0`` replaces the deltas by ``2 * splice + 1`` spliced frames;
    ``matrix`` (LDA+MLLT, :mod:`asrdistill.aligner.lda_mllt`) projects last.
    """

    mean: np.ndarray  # (D,) float64
    var: np.ndarray  # (D,)
    use_deltas: bool = True
    splice: int = 0
    matrix: np.ndarray | None = None  # (out_dim, in_dim) float64

    @property
    def base_dim(self) -> int:
        """Dimension before ``matrix``."""
        d = int(self.mean.shape[0])
        return d * (2 * self.splice + 1) if self.splice else d * (3 if self.use_deltas else 1)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[0]) if self.matrix is not None else self.base_dim

    def apply(self, feats: np.ndarray) -> torch.Tensor:
        if feats.ndim != 2 or feats.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features of shape {feats.shape}, expected (T, {self.mean.shape[0]})")
        x = torch.from_numpy(((feats.astype(np.float64) - self.mean) / np.sqrt(self.var)).astype(np.float32))
        if self.splice:
            x = splice_frames(x, self.splice)
        elif self.use_deltas:
            x = add_deltas(x)
        return x @ torch.from_numpy(self.matrix.T.astype(np.float32)) if self.matrix is not None else x

    @classmethod
    def fit(cls, arrays: Iterable[np.ndarray], use_deltas: bool = True) -> "FeatureTransform":
        n, s, ss = 0, 0.0, 0.0
        for a in arrays:
            a = a.astype(np.float64)
            n, s, ss = n + a.shape[0], s + a.sum(0), ss + (a * a).sum(0)
        if n == 0:
            raise ValueError("no feature frames to compute the normalisation from")
        mean = s / n
        return cls(mean, np.maximum(ss / n - mean**2, 1e-8), use_deltas)

    def to_dict(self) -> dict:
        return {
            "mean": self.mean.tolist(),
            "var": self.var.tolist(),
            "use_deltas": self.use_deltas,
            "splice": self.splice,
            "matrix": None if self.matrix is None else self.matrix.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureTransform":
        matrix = d.get("matrix")
        return cls(
            np.asarray(d["mean"], dtype=np.float64),
            np.asarray(d["var"], dtype=np.float64),
            bool(d["use_deltas"]),
            int(d.get("splice", 0)),
            None if matrix is None else np.asarray(matrix, dtype=np.float64),
        )


# ---------------------------------------------------------------------------- model


@dataclass
class HmmModel:
    """A GMM-HMM: Gaussians per pdf, topology (with self-loops), feature transform, and the pdf map.

    ``tree=None``: monophone pdfs (:class:`MonophonePdfs`); otherwise the
    tree's leaves. ``meta`` holds the training config for the record.
    """

    gmm: DiagGmmSet
    topology: Topology
    transform: FeatureTransform
    tree: ContextTree | None = None
    meta: dict = field(default_factory=dict)

    @property
    def pdf_of(self) -> PdfFn:
        return self.tree.pdfs if self.tree is not None else MonophonePdfs.from_topology(self.topology).pdfs

    @property
    def num_pdfs(self) -> int:
        return self.gmm.num_pdfs

    def to_dict(self) -> dict:
        """Tensors and plain data: what :meth:`save` writes (and what identifies the model)."""
        return {
            "gmm": self.gmm.state_dict(),
            "topology": {"num_states": self.topology.num_states, "self_loop": self.topology.self_loop},
            "transform": self.transform.to_dict(),
            "tree": self.tree.to_dict() if self.tree is not None else None,
            "meta": self.meta,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(self.to_dict(), tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "HmmModel":
        d = load_weights(path, "GMM-HMM model")
        try:
            return cls(
                DiagGmmSet.from_state_dict(d["gmm"]),
                Topology(list(d["topology"]["num_states"]), [list(x) for x in d["topology"]["self_loop"]]),
                FeatureTransform.from_dict(d["transform"]),
                ContextTree.from_dict(d["tree"]) if d["tree"] is not None else None,
                dict(d["meta"]),
            )
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: cannot load GMM-HMM model: {e}") from e

    def state(self) -> dict:
        """Picklable plain-data form for worker processes."""
        return {"gmm": self.gmm.state_dict(), "topology": self.topology, "transform": self.transform, "tree": self.tree}


@dataclass
class UttAlignment:
    """Per-frame labels of one utterance: pdf, phone id and HMM state within the phone (all (T,) int32).

    From a graph alignment also the word position (-1: silence) and the index
    of the pronunciation chosen per frame.
    """

    pdf: np.ndarray
    phone: np.ndarray
    state: np.ndarray
    word: np.ndarray | None = None
    pron: np.ndarray | None = None

    @classmethod
    def from_path(cls, graph: UttGraph, path: np.ndarray) -> "UttAlignment":
        return cls(
            graph.pdf[path].astype(np.int32),
            graph.phone[path],
            graph.hmm_state[path],
            graph.word[path],
            graph.pron[path],
        )

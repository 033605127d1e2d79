"""LDA+MLLT feature transform for the GMM-HMM (Kaldi ``train_lda_mllt.sh``, tri2b/tri3b).

Frames are spliced (+-4 by default) and projected by LDA to ``dim``
dimensions, with the senones of a previous alignment as classes and silence
left out (Kaldi ``weight-silence-post 0``); the projection makes the
within-class covariance the identity. MLLT (a maximum-likelihood linear
transform, Gales 1999) then rotates that space so diagonal Gaussians fit it
best: every ``mllt_iters`` iteration of the training loop accumulates, per
output dimension ``i``, ``G_i = sum_m sum_t gamma_mt / var_mi (x_t - mu_m)(x_t - mu_m)^T``
over the Gaussians ``m``, updates the matrix row by row, and folds it into the
features and the means (Kaldi ``est-mllt`` + ``gmm-transform-means``).

    stats = LdaStats.zeros(dim_in, num_classes); stats.add(x_spliced, classes)
    lda = estimate_lda(stats, 40)                   # (40, dim_in)
    acc = MlltStats.zeros(40); accumulate_mllt(gmm, x, pdf, acc)
    rot, gain = estimate_mllt(acc)                  # (40, 40), objective gain per frame
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from asrdistill.aligner.gmm import DiagGmmSet

__all__ = ["LdaStats", "estimate_lda", "MlltStats", "accumulate_mllt", "estimate_mllt"]


@dataclass
class LdaStats:
    """Class counts and sums plus the total scatter of the (spliced) frames, float64."""

    count: np.ndarray  # (C,)
    sum: np.ndarray  # (C, D)
    scatter: np.ndarray  # (D, D) sum of x x^T over all frames

    @classmethod
    def zeros(cls, dim: int, num_classes: int) -> "LdaStats":
        return cls(np.zeros(num_classes), np.zeros((num_classes, dim)), np.zeros((dim, dim)))

    def add(self, x: np.ndarray, classes: np.ndarray) -> None:
        """Add frames ``x`` (T, D) of classes ``classes`` (T,) int."""
        x = np.asarray(x, dtype=np.float64)
        np.add.at(self.count, classes, 1.0)
        np.add.at(self.sum, classes, x)
        self.scatter += x.T @ x


def estimate_lda(stats: LdaStats, dim: int) -> np.ndarray:
    """(dim, D) LDA projection: top generalised eigenvectors of between- vs within-class covariance.

    Scaled so that the projected within-class covariance is the identity (as
    Kaldi's ``est-lda``). Raises ``ValueError`` when there are too few
    classes or dimensions for ``dim``.
    """
    n = stats.count.sum()
    used = stats.count > 0
    d = stats.sum.shape[1]
    if int(used.sum()) <= dim or d < dim:
        raise ValueError(
            f"LDA to {dim} dimensions needs more than {dim} classes with data and >= {dim} inputs; "
            f"have {int(used.sum())} classes, {d} inputs"
        )
    mean = stats.sum.sum(0) / n
    total = stats.scatter / n - np.outer(mean, mean)
    cm = stats.sum[used] / stats.count[used, None] - mean
    between = (cm * stats.count[used, None]).T @ cm / n
    within = total - between
    within += np.eye(d) * 1e-6 * np.trace(within) / d  # spliced frames are nearly collinear
    chol = np.linalg.cholesky(within)
    inv_l = np.linalg.inv(chol)
    vals, vecs = np.linalg.eigh(inv_l @ between @ inv_l.T)
    top = vecs[:, np.argsort(vals)[::-1][:dim]]  # (D, dim)
    return top.T @ inv_l


@dataclass
class MlltStats:
    """``G[i]`` (D, D) for each output dimension ``i`` and the frame count (Kaldi ``MlltAccs``)."""

    G: np.ndarray  # (D, D, D) float64
    count: float

    @classmethod
    def zeros(cls, dim: int) -> "MlltStats":
        return cls(np.zeros((dim, dim, dim)), 0.0)

    def add(self, other: "MlltStats") -> None:
        self.G += other.G
        self.count += other.count


def accumulate_mllt(
    gmm: DiagGmmSet, x: Tensor, pdf: Tensor, stats: MlltStats, chunk: int = 4096, min_post: float = 1e-3
) -> MlltStats:
    """Add MLLT statistics of frames ``x`` (T, D) assigned to ``pdf`` (T,) under ``gmm``; returns ``stats``.

    Per Gaussian the full scatter around its mean is gathered first (only
    component posteriors above ``min_post``), then reduced to ``G_i`` once:
    ``G * D^2`` memory, ``G * D^3`` work, independent of the frame count.
    """
    num_g, d = gmm.num_gauss, gmm.dim
    full = torch.zeros(num_g, d * d, dtype=torch.float64)
    first = torch.zeros(num_g, d, dtype=torch.float64)
    occ = torch.zeros(num_g, dtype=torch.float64)
    for s in range(0, x.shape[0], chunk):
        xc = x[s : s + chunk].double().cpu()
        comps, post, _ = gmm.frame_posteriors(x[s : s + chunk], pdf[s : s + chunk])
        comps, post = comps.cpu(), post.double().cpu()
        rows, slot = torch.nonzero(post > min_post, as_tuple=True)
        w = post[rows, slot]
        c = comps[rows, slot]
        xr = xc[rows]
        occ.index_add_(0, c, w)
        first.index_add_(0, c, xr * w[:, None])
        full.index_add_(0, c, (xr[:, :, None] * xr[:, None, :]).reshape(-1, d * d) * w[:, None])
    mu = gmm.means.double().cpu()
    # scatter around the mean: sum w (x - mu)(x - mu)^T = XX - f mu^T - mu f^T + n mu mu^T
    cov = (
        full.view(num_g, d, d)
        - first[:, :, None] * mu[:, None, :]
        - mu[:, :, None] * first[:, None, :]
        + occ[:, None, None] * mu[:, :, None] * mu[:, None, :]
    )
    inv_var = 1.0 / gmm.vars.double().cpu()
    stats.G += torch.einsum("mi,mjk->ijk", inv_var, cov).numpy()
    stats.count += float(occ.sum())
    return stats


def _objective(a: np.ndarray, g: np.ndarray, count: float) -> float:
    return count * math.log(abs(np.linalg.det(a))) - 0.5 * float(np.einsum("ij,ijk,ik->", a, g, a))


def estimate_mllt(stats: MlltStats, iters: int = 10) -> tuple[np.ndarray, float]:
    """Row-by-row MLLT update from the identity (Gales' algorithm); returns (matrix (D, D), gain per frame)."""
    if stats.count <= 0:
        raise ValueError("MLLT: no statistics accumulated")
    d = stats.G.shape[0]
    a = np.eye(d)
    g_inv = np.linalg.inv(stats.G)
    before = _objective(a, stats.G, stats.count)
    for _ in range(iters):
        for i in range(d):
            c = np.linalg.inv(a).T[i]  # cofactor row up to a scale, which cancels
            cg = c @ g_inv[i]
            a[i] = cg * math.sqrt(stats.count / float(cg @ c))
    return a, (_objective(a, stats.G, stats.count) - before) / stats.count

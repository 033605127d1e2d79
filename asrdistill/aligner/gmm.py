"""Diagonal-covariance GMMs for all pdfs of an HMM set, vectorised with torch.

One :class:`DiagGmmSet` holds every Gaussian of every pdf (senone) in flat
tensors, components sorted by pdf, so that scoring all pdfs is two matrix
products plus a logsumexp over each pdf's components::

    comp_loglik = (x*x) @ (-0.5/var).T + x @ (mean/var).T + gconst      # (T, G)
    pdf_loglik  = logsumexp(comp_loglik[:, table], -1)                    # (T, P)

Training is Viterbi-style (Kaldi ``gmm-acc-stats-ali``): each frame belongs to
one pdf, its component posteriors within that pdf give zeroth/first/second
order statistics (:class:`GmmStats`, accumulated with ``index_add_`` in float64);
:meth:`DiagGmmSet.from_stats` re-estimates and :meth:`DiagGmmSet.split` grows
the mixtures (Kaldi ``gmm-mixup``). Nothing here knows about phones or trees:
pdf ids are plain integers, so monophone and tied-triphone models share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DiagGmmSet", "GmmStats", "accumulate"]

_LOG_2PI = math.log(2 * math.pi)


@dataclass
class GmmStats:
    """Per-component sufficient statistics (float64) plus the data log-likelihood they were taken under."""

    occ: Tensor  # (G,) zeroth order (soft frame counts)
    x: Tensor  # (G, D) first order
    xx: Tensor  # (G, D) second order (diagonal)
    loglik: float = 0.0  # total log-likelihood of the accumulated frames under the model used
    frames: int = 0

    @classmethod
    def zeros(cls, num_gauss: int, dim: int) -> "GmmStats":
        z = torch.zeros
        return cls(
            z(num_gauss, dtype=torch.float64),
            z(num_gauss, dim, dtype=torch.float64),
            z(num_gauss, dim, dtype=torch.float64),
        )

    def add(self, other: "GmmStats") -> "GmmStats":
        """In-place sum (e.g. merging the statistics of parallel jobs); returns ``self``."""
        if other.occ.shape != self.occ.shape or other.x.shape != self.x.shape:
            raise ValueError(f"cannot add statistics of shape {tuple(other.x.shape)} to {tuple(self.x.shape)}")
        self.occ += other.occ
        self.x += other.x
        self.xx += other.xx
        self.loglik += other.loglik
        self.frames += other.frames
        return self

    @property
    def loglik_per_frame(self) -> float:
        return self.loglik / max(self.frames, 1)


@dataclass
class DiagGmmSet:
    """All Gaussians of ``num_pdfs`` GMMs; ``comp2pdf`` is sorted so each pdf's components are contiguous."""

    means: Tensor  # (G, D) float32
    vars: Tensor  # (G, D) float32
    log_weights: Tensor  # (G,) float32, logsumexp over each pdf's components is 0
    comp2pdf: Tensor  # (G,) int64, non-decreasing, every pdf in 0..num_pdfs-1 has >= 1 component
    num_pdfs: int

    def __post_init__(self) -> None:
        g = self.means.shape[0]
        if self.vars.shape != self.means.shape or self.log_weights.shape != (g,) or self.comp2pdf.shape != (g,):
            raise ValueError("DiagGmmSet: means/vars (G, D), log_weights and comp2pdf (G,) must agree")
        counts = torch.bincount(self.comp2pdf.cpu(), minlength=self.num_pdfs)
        if (
            counts.numel() != self.num_pdfs
            or bool((counts == 0).any())
            or bool((self.comp2pdf[1:] < self.comp2pdf[:-1]).any())
        ):
            raise ValueError("DiagGmmSet: comp2pdf must be sorted and give every pdf at least one component")
        self._cache: dict = {}

    # ------------------------------------------------------------------ shape
    @property
    def num_gauss(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def device(self) -> torch.device:
        return self.means.device

    def gauss_per_pdf(self) -> Tensor:
        """(P,) number of components of each pdf."""
        return torch.bincount(self.comp2pdf, minlength=self.num_pdfs)

    def to(self, device: str | torch.device) -> "DiagGmmSet":
        return DiagGmmSet(
            self.means.to(device),
            self.vars.to(device),
            self.log_weights.to(device),
            self.comp2pdf.to(device),
            self.num_pdfs,
        )

    # ------------------------------------------------------------- creation
    @classmethod
    def single(cls, means: Tensor, vars: Tensor) -> "DiagGmmSet":
        """One Gaussian per pdf: ``means``/``vars`` are (P, D)."""
        p = means.shape[0]
        return cls(means.float().clone(), vars.float().clone(), torch.zeros(p), torch.arange(p), p)

    @classmethod
    def from_stats(
        cls, stats: GmmStats, prev: "DiagGmmSet", var_floor: float = 0.01, min_count: float = 3.0
    ) -> "DiagGmmSet":
        """Maximum-likelihood update of ``prev`` from Viterbi statistics (Kaldi ``gmm-est``).

        Variances are floored at ``var_floor`` times the pooled variance of all
        the data (so a Gaussian never collapses on a few identical frames).
        Components with occupancy below ``min_count`` are dropped unless they
        are their pdf's last; a pdf that saw no data keeps its old parameters.
        """
        occ, sx, sxx = stats.occ, stats.x, stats.xx
        total = occ.sum()
        if float(total) <= 0:
            raise ValueError("GMM update: statistics are empty (no frames were accumulated)")
        gmean = sx.sum(0) / total
        floor = var_floor * (sxx.sum(0) / total - gmean**2).clamp_min(1e-10)
        comp2pdf = prev.comp2pdf.cpu()
        pdf_occ = torch.zeros(prev.num_pdfs, dtype=torch.float64).index_add_(0, comp2pdf, occ)
        seen = pdf_occ[comp2pdf] > 0
        # drop starved components, but never a pdf's heaviest one (ties: the first)
        best = torch.full((prev.num_pdfs,), -1.0, dtype=torch.float64).scatter_reduce(0, comp2pdf, occ, "amax")
        idx = torch.arange(len(occ))
        cand = torch.where(occ == best[comp2pdf], idx, torch.full_like(idx, len(occ)))
        first = torch.full((prev.num_pdfs,), len(occ), dtype=torch.int64).scatter_reduce(0, comp2pdf, cand, "amin")
        keep = (occ >= min_count) | ~seen
        keep[first] = True
        n = occ.clamp_min(1e-10)[:, None]
        mean = sx / n
        var = torch.maximum(sxx / n - mean**2, floor)
        old_m, old_v, old_w = prev.means.cpu().double(), prev.vars.cpu().double(), prev.log_weights.cpu().double()
        mean = torch.where(seen[:, None], mean, old_m)
        var = torch.where(seen[:, None], var, old_v)
        kept_occ = torch.where(keep, occ, torch.zeros_like(occ))
        kept_pdf_occ = torch.zeros(prev.num_pdfs, dtype=torch.float64).index_add_(0, comp2pdf, kept_occ)
        logw = torch.where(seen, (kept_occ.clamp_min(1e-300) / kept_pdf_occ[comp2pdf].clamp_min(1e-300)).log(), old_w)
        out = cls(mean[keep].float(), var[keep].float(), logw[keep].float(), comp2pdf[keep].clone(), prev.num_pdfs)
        return out.normalized().to(prev.device)

    def normalized(self) -> "DiagGmmSet":
        """Copy whose weights sum to one within each pdf."""
        lse = torch.full((self.num_pdfs,), -math.inf, device=self.device)
        lse = lse.scatter_reduce(0, self.comp2pdf, self.log_weights, "amax")
        w = (self.log_weights - lse[self.comp2pdf]).exp()
        tot = torch.zeros(self.num_pdfs, device=self.device).index_add_(0, self.comp2pdf, w)
        logw = self.log_weights - lse[self.comp2pdf] - tot.log()[self.comp2pdf]
        return DiagGmmSet(self.means, self.vars, logw, self.comp2pdf, self.num_pdfs)

    def split(
        self, target_total: int, pdf_occ: Tensor, power: float = 0.2, perturb: float = 0.2, seed: int = 0
    ) -> "DiagGmmSet":
        """Grow towards ``target_total`` Gaussians (Kaldi ``gmm-mixup``): never shrinks a pdf.

        Pdf ``p`` is allotted Gaussians in proportion to ``pdf_occ[p] ** power``;
        it reaches its allotment by repeatedly splitting its heaviest component
        into two with half the weight each and means ``mu +- perturb * sigma * r``,
        ``r`` a random normal direction (seeded: reproducible).
        """
        if target_total <= self.num_gauss:
            return self
        occ = pdf_occ.detach().cpu().double().clamp_min(0) ** power
        if float(occ.sum()) <= 0:
            return self
        alloc = (occ / occ.sum() * target_total).floor().long()
        counts = self.gauss_per_pdf().cpu()
        alloc = torch.maximum(alloc, counts)
        means, vars_, logw = self.means.cpu(), self.vars.cpu(), self.log_weights.cpu()
        starts = torch.cumsum(counts, 0) - counts
        gen = torch.Generator().manual_seed(seed)
        new_m, new_v, new_w, new_p = [], [], [], []
        for p in range(self.num_pdfs):
            s, k = int(starts[p]), int(counts[p])
            m, v, w = means[s : s + k].clone(), vars_[s : s + k].clone(), logw[s : s + k].clone()
            need = int(alloc[p]) - k
            while need > 0:
                # split the heaviest components first, up to doubling per round
                n_split = min(need, m.shape[0])
                top = torch.topk(w, n_split).indices
                d = perturb * v[top].sqrt() * torch.randn(v[top].shape, generator=gen)
                w[top] -= math.log(2.0)
                m_add, v_add, w_add = m[top] - d, v[top].clone(), w[top].clone()
                m[top] = m[top] + d
                m, v, w = torch.cat([m, m_add]), torch.cat([v, v_add]), torch.cat([w, w_add])
                need -= n_split
            new_m.append(m), new_v.append(v), new_w.append(w)
            new_p.append(torch.full((m.shape[0],), p, dtype=torch.int64))
        out = DiagGmmSet(torch.cat(new_m), torch.cat(new_v), torch.cat(new_w), torch.cat(new_p), self.num_pdfs)
        return out.to(self.device)

    # -------------------------------------------------------------- scoring
    def _prepared(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Cached (A, B, gconst, table): comp loglik = x^2 @ A.T + x @ B.T + gconst; table (P, K) pads with G."""
        if "prep" not in self._cache:
            inv = 1.0 / self.vars
            a = -0.5 * inv
            b = self.means * inv
            gconst = self.log_weights - 0.5 * (
                self.dim * _LOG_2PI + self.vars.log().sum(1) + (self.means**2 * inv).sum(1)
            )
            counts = self.gauss_per_pdf()
            kmax = int(counts.max())
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(self.num_gauss, device=self.device) - starts[self.comp2pdf]
            table = torch.full((self.num_pdfs, kmax), self.num_gauss, dtype=torch.int64, device=self.device)
            table[self.comp2pdf, rank] = torch.arange(self.num_gauss, device=self.device)
            self._cache["prep"] = (a, b, gconst, table)
        return self._cache["prep"]

    def component_loglik(self, x: Tensor, comps: Tensor | None = None) -> Tensor:
        """(T, G) log(weight * N(x; mean, var)) of every component (or of ``comps`` only)."""
        a, b, gconst, _ = self._prepared()
        if comps is not None:
            a, b, gconst = a[comps], b[comps], gconst[comps]
        x = x.to(self.means.dtype)
        return (x * x) @ a.T + x @ b.T + gconst

    def loglik(self, x: Tensor, pdfs: Tensor | None = None) -> Tensor:
        """(T, P) log-likelihood of frames ``x`` (T, D) under every pdf, or (T, len(pdfs)) for distinct ``pdfs`` only.

        A log-sum-exp per pdf over its own components, done as scatter-max,
        exp and index-add over the (T, components) scores: no padding to the
        largest mixture, no underflow however far a pdf is from the best one.
        """
        if pdfs is None:
            comps, col, num = None, self.comp2pdf, self.num_pdfs
        else:
            pdfs = pdfs.to(self.device)
            lut = torch.full((self.num_pdfs,), -1, dtype=torch.int64, device=self.device)
            lut[pdfs] = torch.arange(len(pdfs), device=self.device)
            comps = torch.nonzero(lut[self.comp2pdf] >= 0).squeeze(1)
            col, num = lut[self.comp2pdf[comps]], len(pdfs)
        cl = self.component_loglik(x, comps)  # (T, C)
        t = cl.shape[0]
        top = cl.new_full((t, num), -math.inf).scatter_reduce_(1, col.expand(t, -1), cl, "amax")
        top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        # components > 80 nats below their pdf's best add < 2e-35 each; clamping keeps exp off the slow underflow path
        total = cl.new_zeros((t, num)).index_add_(1, col, (cl - top[:, col]).clamp_min_(-80.0).exp_())
        return top + total.log()

    def frame_posteriors(self, x: Tensor, pdf: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Posteriors over the components of each frame's own pdf: comps (N, K) (pad: G), post (N, K), loglik (N,)."""
        a, b, gconst, table = self._prepared()
        pad = lambda t, v: torch.cat([t, t.new_full((1,) + tuple(t.shape[1:]), v)])  # noqa: E731
        a, b, gconst = pad(a, 0.0), pad(b, 0.0), pad(gconst, -math.inf)
        x = x.to(self.device, torch.float32)
        comps = table[pdf.to(self.device)]  # (N, K)
        cl = torch.einsum("nd,nkd->nk", x * x, a[comps]) + torch.einsum("nd,nkd->nk", x, b[comps]) + gconst[comps]
        ll = torch.logsumexp(cl, -1)  # (N,)
        return comps, (cl - ll[:, None]).exp(), ll  # post 0 on padding

    # ------------------------------------------------------------ save/load
    def state_dict(self) -> dict:
        return {
            "means": self.means.cpu(),
            "vars": self.vars.cpu(),
            "log_weights": self.log_weights.cpu(),
            "comp2pdf": self.comp2pdf.cpu(),
            "num_pdfs": self.num_pdfs,
        }

    @classmethod
    def from_state_dict(cls, d: dict) -> "DiagGmmSet":
        return cls(d["means"], d["vars"], d["log_weights"], d["comp2pdf"], int(d["num_pdfs"]))


def accumulate(gmm: DiagGmmSet, x: Tensor, pdf: Tensor, stats: GmmStats, chunk: int = 8192) -> GmmStats:
    """Add Viterbi statistics of frames ``x`` (T, D) assigned to pdfs ``pdf`` (T,) to ``stats``; returns it.

    Only the components of each frame's own pdf are scored (gathered through
    the padded pdf->component table), so the cost is ``T * K * D`` rather than
    ``T * G * D`` and does not grow with the number of pdfs.
    """
    g = gmm.num_gauss
    dev = stats.occ.device
    for s in range(0, x.shape[0], chunk):
        xc = x[s : s + chunk].to(gmm.device, torch.float32)
        comps, post, ll = gmm.frame_posteriors(xc, pdf[s : s + chunk])
        occ = torch.zeros(g + 1, dtype=torch.float64, device=dev)
        sx = torch.zeros(g + 1, xc.shape[1], dtype=torch.float64, device=dev)
        sxx = torch.zeros_like(sx)
        xd = xc.double().to(dev)
        xx = xd * xd
        post, comps = post.double().to(dev), comps.to(dev)
        for k in range(comps.shape[1]):
            w = post[:, k : k + 1]
            occ.index_add_(0, comps[:, k], w[:, 0])
            sx.index_add_(0, comps[:, k], xd * w)
            sxx.index_add_(0, comps[:, k], xx * w)
        stats.occ += occ[:g]
        stats.x += sx[:g]
        stats.xx += sxx[:g]
        stats.loglik += float(ll.double().sum())
        stats.frames += int(xc.shape[0])
    return stats

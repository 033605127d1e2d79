"""LDA finds the discriminating directions; MLLT rotates correlated data until diagonal Gaussians fit it."""

import numpy as np
import pytest
import torch

from asrdistill.aligner.gmm import DiagGmmSet
from asrdistill.aligner.lda_mllt import LdaStats, MlltStats, accumulate_mllt, estimate_lda, estimate_mllt


def test_lda_keeps_the_class_directions_and_whitens_within_class():
    rng = np.random.default_rng(0)
    means = np.zeros((4, 6))
    means[:, :2] = rng.normal(scale=5.0, size=(4, 2))  # classes differ only in dims 0 and 1
    cls = rng.integers(0, 4, size=20000)
    x = means[cls] + rng.normal(size=(20000, 6)) * np.array([2.0, 0.5, 3.0, 3.0, 3.0, 3.0])
    stats = LdaStats.zeros(6, 4)
    stats.add(x, cls)
    lda = estimate_lda(stats, 2)
    assert lda.shape == (2, 6)
    assert np.abs(lda[:, 2:]).max() < 0.05 * np.abs(lda[:, :2]).max()
    y = x @ lda.T
    within = sum(np.cov(y[cls == c].T) * (cls == c).sum() for c in range(4)) / len(cls)
    assert np.allclose(within, np.eye(2), atol=0.05)
    with pytest.raises(ValueError, match="classes"):
        estimate_lda(stats, 4)  # 4 classes cannot give 4 dimensions


def test_mllt_diagonalises_correlated_data():
    rng = np.random.default_rng(1)
    d = 5
    rot, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x = (rng.normal(size=(30000, d)) * np.array([4.0, 2.0, 1.0, 0.5, 0.3])) @ rot.T  # full covariance
    pdf = torch.zeros(len(x), dtype=torch.int64)
    total = np.eye(d)
    gains = []
    for _ in range(4):  # MLLT, re-fit the diagonal Gaussian, repeat
        y = x @ total.T
        gmm = DiagGmmSet.single(
            torch.tensor(y.mean(0)[None], dtype=torch.float32), torch.tensor(y.var(0)[None], dtype=torch.float32)
        )
        acc = accumulate_mllt(gmm, torch.tensor(y, dtype=torch.float32), pdf, MlltStats.zeros(d))
        assert acc.count == pytest.approx(len(x), rel=1e-6)
        a, gain = estimate_mllt(acc)
        gains.append(gain)
        total = a @ total
    assert gains[0] > 0.1 and all(g >= -1e-6 for g in gains)
    corr = np.corrcoef((x @ total.T).T)
    assert np.abs(corr - np.diag(np.diag(corr))).max() < 0.05

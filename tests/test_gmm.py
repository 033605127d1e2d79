"""Diagonal GMM set: scoring, Viterbi re-estimation from known Gaussians, mixture splitting."""

import math

import pytest
import torch

from asrdistill.aligner.gmm import DiagGmmSet, GmmStats, accumulate


def _direct_loglik(gmm: DiagGmmSet, x: torch.Tensor) -> torch.Tensor:
    """Reference: per-component Gaussian densities evaluated the textbook way, in float64."""
    x = x.double()[:, None, :]
    m, v = gmm.means.double()[None], gmm.vars.double()[None]
    comp = gmm.log_weights.double() - 0.5 * (((x - m) ** 2) / v + v.log() + math.log(2 * math.pi)).sum(-1)
    out = torch.full((x.shape[0], gmm.num_pdfs), -math.inf, dtype=torch.float64)
    for p in range(gmm.num_pdfs):
        out[:, p] = torch.logsumexp(comp[:, gmm.comp2pdf == p], -1)
    return out


def _random_gmm(seed=0, pdfs=4, dim=5):
    g = torch.Generator().manual_seed(seed)
    counts = [1, 3, 2, 4][:pdfs]
    c2p = torch.repeat_interleave(torch.arange(pdfs), torch.tensor(counts))
    n = int(c2p.numel())
    return DiagGmmSet(
        torch.randn(n, dim, generator=g), torch.rand(n, dim, generator=g) + 0.3, torch.randn(n, generator=g), c2p, pdfs
    ).normalized()


def test_loglik_matches_direct_and_subset():
    gmm = _random_gmm()
    x = torch.randn(50, 5)
    ref = _direct_loglik(gmm, x)
    assert torch.allclose(gmm.loglik(x).double(), ref, atol=1e-3)
    sub = torch.tensor([3, 1])
    assert torch.allclose(gmm.loglik(x, sub).double(), ref[:, sub], atol=1e-3)
    # weights of each pdf sum to one
    w = torch.zeros(4).index_add_(0, gmm.comp2pdf, gmm.log_weights.exp())
    assert torch.allclose(w, torch.ones(4), atol=1e-5)


def test_reestimation_recovers_known_gaussians():
    torch.manual_seed(0)
    true_m = torch.tensor([[0.0, 2.0, -1.0], [3.0, -2.0, 1.0], [-4.0, 0.5, 0.0]])
    true_v = torch.tensor([[1.0, 0.5, 2.0], [0.3, 1.5, 1.0], [2.0, 0.2, 0.7]])
    n = 20_000
    pdf = torch.randint(0, 3, (n,))
    x = true_m[pdf] + torch.randn(n, 3) * true_v[pdf].sqrt()
    gmm = DiagGmmSet.single(torch.zeros(3, 3), torch.ones(3, 3))
    stats = accumulate(gmm, x, pdf, GmmStats.zeros(3, 3), chunk=3000)
    assert stats.frames == n and float(stats.occ.sum()) == pytest.approx(n)
    new = DiagGmmSet.from_stats(stats, gmm, var_floor=1e-4)
    assert torch.allclose(new.means, true_m, atol=0.06)
    assert torch.allclose(new.vars, true_v, rtol=0.06)
    # the new model explains the data better than the flat start
    after = accumulate(new, x, pdf, GmmStats.zeros(3, 3))
    assert after.loglik_per_frame > stats.loglik_per_frame + 0.5


def test_two_component_mixture_is_recovered_by_splitting_and_em():
    torch.manual_seed(1)
    n = 20_000
    comp = torch.randint(0, 2, (n,))
    means = torch.tensor([[-2.0, 1.0], [2.0, -1.0]])
    x = means[comp] + 0.5 * torch.randn(n, 2)
    pdf = torch.zeros(n, dtype=torch.long)
    gmm = DiagGmmSet.single(torch.zeros(1, 2), torch.ones(1, 2))
    stats = accumulate(gmm, x, pdf, GmmStats.zeros(1, 2))
    gmm = DiagGmmSet.from_stats(stats, gmm)
    lls = [accumulate(gmm, x, pdf, GmmStats.zeros(gmm.num_gauss, 2)).loglik_per_frame]
    gmm = gmm.split(2, stats.occ)
    assert gmm.num_gauss == 2 and gmm.gauss_per_pdf().tolist() == [2]
    for _ in range(10):
        stats = accumulate(gmm, x, pdf, GmmStats.zeros(gmm.num_gauss, 2))
        gmm = DiagGmmSet.from_stats(stats, gmm)
    lls.append(accumulate(gmm, x, pdf, GmmStats.zeros(gmm.num_gauss, 2)).loglik_per_frame)
    assert lls[1] > lls[0] + 0.3  # splitting + EM raised the likelihood
    got = gmm.means[gmm.means[:, 0].argsort()]
    assert torch.allclose(got, means, atol=0.05)
    assert torch.allclose(gmm.log_weights.exp(), torch.full((2,), 0.5), atol=0.02)


def test_split_allocates_by_occupancy_and_never_shrinks():
    gmm = DiagGmmSet.single(torch.zeros(3, 2), torch.ones(3, 2))
    out = gmm.split(30, torch.tensor([1000.0, 10.0, 0.0]), power=1.0)
    counts = out.gauss_per_pdf().tolist()
    assert (
        counts[0] > counts[1] >= 1 and counts[2] == 1 and 28 <= out.num_gauss <= 30 + 3
    )  # floor per pdf, but at least one each
    assert out.split(5, torch.tensor([1.0, 1.0, 1.0])).num_gauss == out.num_gauss


def test_starved_components_are_dropped_and_unseen_pdfs_kept():
    gmm = _random_gmm(pdfs=3)
    x = torch.randn(200, 5)
    pdf = torch.zeros(200, dtype=torch.long)  # only pdf 0 (one component) sees data
    stats = accumulate(gmm, x, pdf, GmmStats.zeros(gmm.num_gauss, 5))
    new = DiagGmmSet.from_stats(stats, gmm, min_count=3.0)
    assert new.num_gauss == gmm.num_gauss  # unseen pdfs keep every component as it was
    assert torch.equal(new.means[1:], gmm.means[1:])
    stats.occ[1:] = 0.5
    stats.occ[1] = 20.0
    stats.x[1:] = 0.0
    stats.xx[1:] = 1.0
    pruned = DiagGmmSet.from_stats(stats, gmm, min_count=3.0)
    assert pruned.gauss_per_pdf().tolist() == [1, 1, 1]  # keeps each pdf's heaviest component


def test_state_dict_roundtrip_and_validation():
    gmm = _random_gmm()
    back = DiagGmmSet.from_state_dict(gmm.state_dict())
    x = torch.randn(7, 5)
    assert torch.equal(back.loglik(x), gmm.loglik(x))
    with pytest.raises(ValueError, match="every pdf"):
        DiagGmmSet(gmm.means, gmm.vars, gmm.log_weights, gmm.comp2pdf, gmm.num_pdfs + 1)

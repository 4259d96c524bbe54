"""The exact check of the sampler (docs/MATH.md): with h = 1 the posterior of w in R^d is a known density,
and quadrature on a grid gives E[K_W] and E|w|^2 to any accuracy; the chains must agree within their standard errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shallow_collapse.params import PosteriorParams
from shallow_collapse.posterior import sample_posterior

SIGW2, SIGA2, SIG2 = 1.0, 1.0, 0.1  # h = 1: the readout's prior variance is siga2 / h = 1
LABELS = torch.tensor([0, 0, 0, 1, 1, 1])


def _data(d: int):
    g = torch.Generator().manual_seed(d)
    means = torch.where(LABELS[:, None] == 0, -1.0, 1.0) * torch.ones(6, d, dtype=torch.float64)
    X = means + 0.6 * torch.randn(6, d, generator=g, dtype=torch.float64)
    return X, (2.0 * LABELS - 1).to(torch.float64)


def _traces(f: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tr Sigma_W, Tr Sigma_B of the one-feature kernel K = siga2 f f^T, for f ``(G, N)``."""
    f = f * math.sqrt(SIGA2)
    means = np.stack([f[:, labels == c].mean(1) for c in (0, 1)], 1)  # (G, 2)
    tr_w = ((f - means[:, labels]) ** 2).mean(1)
    tr_b = ((means - f.mean(1, keepdims=True)) ** 2).mean(1)
    return tr_w, tr_b


def _quadrature(X: np.ndarray, y: np.ndarray, n: int) -> tuple[float, float]:
    """log10 NC1 of E[K_W] and E|w|^2 by the midpoint rule on n^d points of [-8 s, 8 s]^d, s = sqrt(sigw2/d).

    log p(w) = -d |w|^2 / (2 sigw2) - y^T C^-1 y / 2 - log det C / 2 with the rank-one
    C = siga2 f f^T + sig2 I, f = erf(X w): C^-1 = (I - siga2 f f^T / (sig2 + siga2 |f|^2)) / sig2 and
    log det C = (N - 1) log sig2 + log(sig2 + siga2 |f|^2)."""
    N, d = X.shape
    half = 8 * math.sqrt(SIGW2 / d)
    axis = -half + (np.arange(n) + 0.5) * (2 * half / n)
    w = np.stack(np.meshgrid(*[axis] * d, indexing="ij"), -1).reshape(-1, d)
    f = torch.erf(torch.from_numpy(w @ X.T)).numpy()  # (G, N)
    ff = (f**2).sum(1)
    fy = f @ y
    quad = ((y @ y) - SIGA2 * fy**2 / (SIG2 + SIGA2 * ff)) / SIG2
    logp = -d * (w**2).sum(1) / (2 * SIGW2) - 0.5 * quad - 0.5 * np.log(SIG2 + SIGA2 * ff)
    p = np.exp(logp - logp.max())
    p /= p.sum()
    tr_w, tr_b = _traces(f, LABELS.numpy())
    return math.log10((p * tr_w).sum() / (p * tr_b).sum()), float((p * (w**2).sum(1)).sum())


@pytest.mark.parametrize("d, n", [(1, 4000), (2, 600)])
def test_chains_agree_with_quadrature_for_one_hidden_unit(d, n):
    X, y = _data(d)
    exact_nc1, exact_w2 = _quadrature(X.numpy(), y.numpy(), n)
    coarse_nc1, coarse_w2 = _quadrature(X.numpy(), y.numpy(), n // 2)
    # the midpoint rule has converged far below the sampler's errors: its error is O(1/n^2), so
    # the fine grid's error is about a third of the coarse-to-fine change checked here (< 1e-4,
    # against standard errors >~ 1e-3 of the chains below)
    assert abs(coarse_nc1 - exact_nc1) < 1e-4 and abs(coarse_w2 - exact_w2) < 1e-4 * exact_w2
    params = PosteriorParams(chains=16, burn_in=500, samples=2000, thin=1)
    (r,) = sample_posterior(X[None], y[None, :, None], LABELS, torch.erf, sigw2=SIGW2, siga2=SIGA2, sig2=SIG2,
                            h=1, params=params, seeds=list(range(100, 116)))
    assert r.status == "ok", r.message
    # standard errors from the spread over the 16 independent chains (delta method for the ratio)
    assert abs(r.log10_nc1 - exact_nc1) < 4 * r.se_log10_nc1, (r.log10_nc1, exact_nc1, r.se_log10_nc1)
    assert abs(r.sigma_trace - exact_w2) < 4 * r.se_sigma_trace, (r.sigma_trace, exact_w2, r.se_sigma_trace)
    assert r.se_log10_nc1 < 0.05 and r.se_sigma_trace < 0.05 * exact_w2  # errors small enough to matter

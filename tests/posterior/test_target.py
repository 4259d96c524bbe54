"""The collapsed potential U(v) against a dense numpy computation, and its autograd gradient against central differences."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shallow_collapse.activations import get
from shallow_collapse.posterior import CollapsedPosterior


def _target(activation, N=10, d=3, B=2, sig2=1e-3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, N, d, generator=g, dtype=torch.float64)
    Y = torch.sign(torch.randn(B, N, 1, generator=g, dtype=torch.float64))
    return CollapsedPosterior(X, Y, get(activation).phi, sigw2=1.3, siga2=0.7, sig2=sig2), g


def _dense_potential(t: CollapsedPosterior, v: torch.Tensor, phi) -> tuple[np.ndarray, np.ndarray]:
    """U(v) = |v|^2/2 + y^T C^-1 y / 2 + log det C / 2 with C = (siga2/h) F F^T + sig2 I built
    entry by entry from W = v sqrt(sigw2/d) (numpy), and a round-off bound for each draw:
    backward-stable solves (Cholesky here and there, LU here) are exact for C + E with
    |E| <= c N eps |C|, which moves y^T C^-1 y by <= N eps kappa(C) of itself and log det C by
    <= N (N eps kappa(C)) (Higham, Thm 10.3/10.4); c = 10 for the products around them, twice for
    two computations; kappa(C) computed (<= 1 + (siga2/h) |F|^2 / sig2 ~ 1e3 N here)."""
    out, bounds = [], []
    EPS = np.finfo(np.float64).eps
    for X, Y, vb in zip(t.X.numpy(), t.Y.numpy(), v.numpy()):
        h, d = vb.shape
        W = vb * math.sqrt(t.sigw2 / d)
        F = phi(torch.from_numpy(X @ W.T)).numpy()
        C = t.siga2 / h * F @ F.T + t.sig2 * np.eye(len(X))
        y = Y[:, 0]
        quad = y @ np.linalg.solve(C, y)
        out.append(0.5 * (vb**2).sum() + 0.5 * quad + 0.5 * np.linalg.slogdet(C)[1])
        rel = 10 * len(X) * EPS * np.linalg.cond(C)
        bounds.append(2 * (rel * (0.5 * abs(quad) + 0.5 * len(X)) + 10 * vb.size * EPS * (vb**2).sum()))
    return np.array(out), np.array(bounds)


@pytest.mark.parametrize("activation", ["erf", "relu", "gelu"])
@pytest.mark.parametrize("h", [4, 25])  # h < N (Woodbury form) and h > N (N x N form)
def test_potential_matches_the_dense_formula(activation, h):
    t, g = _target(activation)
    v = torch.randn(2, h, 3, generator=g, dtype=torch.float64)
    U = t.potential(v).numpy()
    ref, bound = _dense_potential(t, v, get(activation).phi)
    # both computations are backward stable: within the bound computed from kappa(C) above
    assert np.all(np.abs(U - ref) <= bound), (U - ref, bound)


@pytest.mark.parametrize("activation", ["erf", "relu", "softplus"])
def test_autograd_gradient_is_a_central_difference(activation):
    t, g = _target(activation, sig2=1e-2)
    v = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    direction = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    _, grad = t.data_term_and_grad(v)
    slope = (grad * direction).sum((-1, -2))
    step = 1e-5
    fd = (t.data_term(v + step * direction) - t.data_term(v - step * direction)) / (2 * step)
    # truncation ~ step^2 |Phi'''| / 6 and rounding ~ eps |Phi| / step: both ~1e-9 of |Phi| ~ 10 here;
    # ReLU's kink is crossed with probability ~ step, not at these seeds
    torch.testing.assert_close(slope, fd, rtol=1e-6, atol=1e-6)


def test_a_non_positive_definite_kernel_is_nan_not_an_exception():
    t, g = _target("erf")
    bad = CollapsedPosterior(t.X, t.Y, t.phi, t.sigw2, t.siga2, sig2=-1.0)
    v = torch.zeros(2, 4, 3, dtype=torch.float64)  # F = erf(0) = 0: C = -I
    phi, grad = bad.data_term_and_grad(v)
    assert torch.isnan(phi).all() and torch.isnan(grad).all()

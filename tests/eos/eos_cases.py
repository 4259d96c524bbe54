"""Data, parameters and an independent dense action shared by the EoS tests."""
from __future__ import annotations

from dataclasses import replace

import torch

from shallow_collapse import activations, data
from shallow_collapse.params import EoSParams

# The paper's AK hyper-parameters (configs/adaptive_kernels*.yml) are the defaults.
PAPER = EoSParams()
SCHEDULE = (1e5, 1e4, 2e3, 1e3)


def paper(**changes) -> EoSParams:
    """The paper's EoS parameters with ``changes``."""
    return replace(PAPER, **changes)


def paper_data(N, d, seed=0, repeat=0):
    return data.gaussian_data((N // 2, N // 2), d, (-2.0, 2.0), (0.5, 0.5), seed, repeat)


def random_sigma(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(d, d, generator=g, dtype=torch.float64)
    return R @ R.T / d + 0.3 * torch.eye(d, dtype=torch.float64)


def dense_action(X, y, Sigma, chi, *, activation="erf", sigw2=1.0, siga2=1.0 / 128, sig2=1e-6):
    """S(Sigma) written independently of the solver: plain torch ops (differentiable), a dense
    solve and slogdet instead of the Cholesky path, and no closed-form gradient."""
    N, d = X.shape
    M = siga2 * activations.kernel_phi(X @ Sigma @ X.T, activation) + sig2 * torch.eye(N, dtype=torch.float64)
    prior = 0.5 * chi * ((d / sigw2) * torch.trace(Sigma) - torch.linalg.slogdet(Sigma)[1])
    return prior + 0.5 * y @ torch.linalg.solve(M, y) + 0.5 * torch.linalg.slogdet(M)[1]


def dense_derivative_1d(X, y, s, chi, **params):
    """dS/ds at Sigma = [[s]] by autograd through :func:`dense_action` (d = 1)."""
    v = torch.tensor([[s]], dtype=torch.float64, requires_grad=True)
    dense_action(X, y, v, chi, **params).backward()
    return float(v.grad)


def two_well_problem():
    """d = 1 data whose action at chi = 10 has two local minima (found by a scan of S over
    s in [1e-6, 1e3]): s ~ 0.18 (S ~ 19812.6) and s ~ 10.9 (S ~ 19679.3, the global one)."""
    ds = data.gaussian_data((32, 32), 1, (-1.0, 1.0), (1.5, 1.5), 0, 0)
    return ds, paper(sig2=1e-3, h=10.0)

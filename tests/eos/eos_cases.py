"""Data, parameters and an independent dense action shared by the EoS tests."""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from shallow_collapse import data
from shallow_collapse.params import EoSParams

from conftest import dense_action  # noqa: F401 (re-exported for the EoS tests)

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


def reference_q_g(K, A, activation, siga2):
    """``(Q, scale * G)`` of the fused EoS forms written as plain dense torch (the evaluation this
    project used before the compiled loops, with the ReLU cosine snapped at +-1 as in
    :class:`~shallow_collapse.closed_forms.ReluFamilyMap`): the oracle of the fast path."""
    diag = torch.diagonal(K)
    if activation == "erf":
        D = 1.0 + 2.0 * diag
        rr = 2.0 * torch.outer(D.rsqrt(), D.rsqrt())
        C = (K * rr).clamp(-1.0, 1.0)
        Q = siga2 * (2.0 / math.pi) * torch.asin(C)
        B = A * (1.0 - C * C).clamp_min(1e-300).rsqrt()
        G = B * rr - torch.diag(2.0 * (B * C).sum(1) / D)
        return Q, siga2 * (2.0 / math.pi) * G
    n = torch.sqrt(torch.outer(diag, diag))
    cos = (K / n).clamp(-1.0, 1.0)
    cos = torch.where(cos.abs() > 1.0 - 8 * torch.finfo(torch.float64).eps, cos.sign(), cos)
    sin = (1.0 - cos * cos).clamp_min(0.0).sqrt()
    theta = torch.atan2(sin, cos)
    Q = siga2 * n * (sin + (math.pi - theta) * cos) / (2.0 * math.pi)
    G = A * (math.pi - theta) / (2.0 * math.pi) + torch.diag((A * n * sin).sum(1) / (2.0 * math.pi * diag))
    return Q, siga2 * G


def reference_state(X, y, Sigma, activation, siga2, sig2):
    """``(Q, alpha, nll, T, T_scale)`` at ``Sigma`` by :func:`reference_q_g` and torch's dense
    Cholesky; ``T_scale = max(|X|^T |G| |X|)``, the scale of the round-off of the sum T = X^T G X."""
    K = X @ Sigma @ X.T
    Q, _ = reference_q_g(K, torch.zeros_like(K), activation, siga2)
    M = Q + sig2 * torch.eye(len(y), dtype=torch.float64)
    L = torch.linalg.cholesky(M)
    alpha = torch.cholesky_solve(y[:, None], L)[:, 0]
    A = torch.cholesky_inverse(L) - torch.outer(alpha, alpha)
    _, G = reference_q_g(K, A, activation, siga2)
    T = X.T @ G @ X
    nll = 0.5 * float(y @ alpha) + float(torch.log(torch.diagonal(L)).sum())
    return Q, alpha, nll, 0.5 * (T + T.T), float((X.abs().T @ G.abs() @ X.abs()).max())

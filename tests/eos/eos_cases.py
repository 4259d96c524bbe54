"""Data, parameters and an independent dense action shared by the EoS tests."""
from __future__ import annotations

import math
import warnings
from dataclasses import replace

import torch

from shallow_collapse import data
from shallow_collapse.params import EoSParams

from conftest import dense_action, kernel_phi, solve_round_off  # noqa: F401 (dense_action re-exported for the EoS tests)

EPS = torch.finfo(torch.float64).eps

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


def reference_q_g(K, A, activation, siga2, envelope=False):
    """``(Q, scale * G)`` of the fused EoS forms written as plain dense torch (the evaluation this
    project used before the compiled loops, with the ReLU cosine snapped at +-1 as in
    :class:`~shallow_collapse.closed_forms.ReluFamilyMap`): the oracle of the fast path.
    ``envelope=True``: G with every term replaced by its size (|A|, |C|, diagonal sums added), the
    scale of G's round-off (an entry errs by a few eps of it, a diagonal sum by N eps of it)."""
    diag = torch.diagonal(K)
    if envelope:
        K, A = K.abs(), A.abs()
    sign = 1.0 if envelope else -1.0
    if activation == "erf":
        D = 1.0 + 2.0 * diag
        rr = 2.0 * torch.outer(D.rsqrt(), D.rsqrt())
        C = (K * rr).clamp(-1.0, 1.0)
        Q = siga2 * (2.0 / math.pi) * torch.asin(C)
        B = A * (1.0 - C * C).clamp_min(1e-300).rsqrt()
        G = B * rr + sign * torch.diag(2.0 * (B * C).sum(1) / D)
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
    """``(Q, alpha, nll, T)`` at ``Sigma`` by :func:`reference_q_g` and torch's dense Cholesky."""
    K = X @ Sigma @ X.T
    Q, _ = reference_q_g(K, torch.zeros_like(K), activation, siga2)
    M = Q + sig2 * torch.eye(len(y), dtype=torch.float64)
    L = torch.linalg.cholesky(M)
    alpha = torch.cholesky_solve(y[:, None], L)[:, 0]
    A = torch.cholesky_inverse(L) - torch.outer(alpha, alpha)
    _, G = reference_q_g(K, A, activation, siga2)
    T = X.T @ G @ X
    nll = 0.5 * float(y @ alpha) + float(torch.log(torch.diagonal(L)).sum())
    return Q, alpha, nll, 0.5 * (T + T.T)


def kernel_jacobian(X, Sigma, activation, siga2):
    """``J[i, j, a, b] = dQ_ij / dSigma_ab`` ``(N, N, d, d)`` of ``Q = siga2 Kphi(X Sigma X^T)`` by
    autograd; ReLU at d = 1 (every pair collinear, where acos has no derivative) by homogeneity:
    Q(s) = s Q(1), so J = Q / s (Q from :func:`reference_q_g`, which snaps the cosine at +-1)."""
    if activation == "relu" and Sigma.shape == (1, 1):
        K = X @ Sigma @ X.T
        return (reference_q_g(K, K, "relu", siga2)[0] / Sigma[0, 0])[:, :, None, None]
    # forward mode: d^2 directional derivatives (reverse mode would take N^2 backward passes); its
    # first use makes torch script its jvp decompositions, which warns that torch.jit is deprecated
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        return torch.func.jacfwd(lambda S: siga2 * kernel_phi(X @ S @ X.T, activation))(Sigma)


def t_round_off(X, y, Sigma, activation, siga2, sig2):
    """``(bound, kappa(M))``: ``bound`` on ``max|T - T'|`` for two float64 computations of
    ``T_ab = sum_ij A_ij dQ_ij/dSigma_ab`` (A held fixed), ``A = M^{-1} - alpha alpha^T``, each
    from its own backward-stable factorisation of ``M = Q + sig2 I``. Per computation:
    - the sums: T = X^T G X is two nested sums of N terms and G's diagonal one more, so it errs by
      <= 3 N eps sum_ij |A_ij| |J_ijab| (Higham, section 4.2; J = dQ/dSigma);
    - A: the factorisation is exact for M + E, ||E||_2 <= N eps ||M||_2 (``solve_round_off``); to
      first order dA = -M^-1 E M^-1 + M^-1 E a a^T + a a^T E M^-1 (a = alpha), so T_ab moves by
      tr(E W_ab) <= ||E||_2 ||W_ab||_* with W_ab = -M^-1 J_ab M^-1 + a a^T J_ab M^-1 + M^-1 J_ab a a^T.
    This grows with kappa(M) through M^-1 and alpha (ReLU at sig2 = 1e-6: ~2e-6 of max|T|, at
    sig2 = 1e-2: ~1e-13), and it is computed here, not assumed; a wrong or missing term of T
    (O(1) relative) stays far outside it."""
    N, d = X.shape
    J = kernel_jacobian(X, Sigma, activation, siga2)
    K = X @ Sigma @ X.T
    M = reference_q_g(K, K, activation, siga2)[0] + sig2 * torch.eye(N, dtype=torch.float64)
    M_inv = torch.linalg.inv(M)
    aa = torch.outer(M_inv @ y, M_inv @ y)
    sums = 3 * N * EPS * float(torch.einsum("ij,ijab->ab", (M_inv - aa).abs(), J.abs()).max())
    w = 0.0
    for a in range(d):
        for b in range(a, d):
            J_ab = 0.5 * (J[:, :, a, b] + J[:, :, b, a])
            W = -M_inv @ J_ab @ M_inv + aa @ J_ab @ M_inv + M_inv @ J_ab @ aa
            w = max(w, float(torch.linalg.matrix_norm(W, "nuc")))
    norm_M = float(torch.linalg.matrix_norm(M, 2))
    return 2 * (sums + solve_round_off(N, 1.0) * norm_M * w), float(torch.linalg.cond(M))


def kernel_map_round_off(K, Q):
    """Bound on ``max|Q - Q'|`` for two float64 evaluations of ``Q = siga2 Kphi(K)`` entrywise (no
    sums): each entry is a few correctly rounded operations, amplified by the map's condition in
    K: at most sqrt(1 + 2 max K_ii) for erf (asin near C = +-1, 1 - C^2 >= 1 / (1 + 2 K_ii)) and
    ~1 for ReLU (the cosine snapped at +-1). 64 eps max|Q| times that: independent of N and of the
    solve; a wrong constant in a kernel map is O(1)."""
    return 64 * EPS * math.sqrt(1.0 + 2.0 * float(torch.diagonal(K).max())) * float(Q.abs().max())


def action_round_off(X, y, S, chi, params):
    """``(abs_tol, rel)``: a round-off bound on the action S(Sigma) computed by two backward-stable
    paths, and ``rel = N eps kappa(M)``, the relative error bound of M^{-1} y and M^{-1}.

    A Cholesky factorisation (or LU solve) of M is exact for M + E with ||E|| <= c N eps ||M||
    (Higham, Thm 10.3/10.4; c ~ 1 normwise in practice). Then with x = M^{-1} y:
    - the data term q = y^T M^{-1} y changes by |x^T E x| <= ||E|| ||x||^2 <= ||E|| q / lambda_min,
      i.e. by at most N eps kappa(M) q;
    - log det M changes by |tr(M^{-1} E)| <= N ||E|| / lambda_min = N (N eps kappa(M)).
    The prior part (d x d, well conditioned) adds a few eps of its size, covered by the slack.
    kappa(M) is computed here (~1e7 at sig2 = 1e-6, ~1e3 at 1e-2). ``params``: a dict with
    activation, sigw2, siga2, sig2. The same expression bounds one computation against the exact
    value."""
    N = len(y)
    K = X @ S @ X.T
    M = reference_q_g(K, K, params["activation"], params["siga2"])[0] + params["sig2"] * torch.eye(N, dtype=torch.float64)
    rel = solve_round_off(N, float(torch.linalg.cond(M)))
    q = float(y @ torch.linalg.solve(M, y))
    d = S.shape[0]
    prior = 0.5 * chi * ((d / params["sigw2"]) * float(torch.trace(S)) + abs(float(torch.linalg.slogdet(S)[1])))
    return rel * (0.5 * q + 0.5 * N) + 64 * torch.finfo(torch.float64).eps * prior, rel


def action_gap_bound(X, y, params, Sigma1, Sigma2, chi):
    """Bound on the difference of the computed actions at two nearby points (two solutions of
    one EoS within the solver's rtol): the exact difference is, by the trapezoid rule,
    <(g1 + g2)/2, Sigma2 - Sigma1> plus a remainder cubic in |Sigma2 - Sigma1| (~1e-8 relative,
    so negligible; x2 covers it), with the gradients g by autograd through :func:`dense_action`;
    each computed action adds its round-off (:func:`action_round_off`, ~N eps kappa(M))."""
    grads = []
    for S in (Sigma1, Sigma2):
        S = S.detach().clone().requires_grad_(True)
        dense_action(X, y, S, chi, **params).backward()
        grads.append(0.5 * (S.grad + S.grad.T))
    trapezoid = abs(float((0.5 * (grads[0] + grads[1]) * (Sigma2 - Sigma1)).sum()))
    round_off = sum(action_round_off(X, y, S.detach(), chi, params)[0] for S in (Sigma1, Sigma2))
    return 2 * trapezoid + round_off

"""The GP likelihood helper against a dense numpy computation, in both of its forms."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from shallow_collapse.gp import gp_likelihood, readout_posterior

EPS = np.finfo(np.float64).eps


def _case(N, h, C, sig2, seed=0):
    g = torch.Generator().manual_seed(seed)
    F = torch.erf(torch.randn(2, N, h, generator=g, dtype=torch.float64))
    Y = torch.randn(2, N, C, generator=g, dtype=torch.float64)
    return F, Y, 0.5 / h, sig2


def _dense(F, Y, scale, sig2):
    """quad, logdet, readout mean, trace of its covariance, E|a|^2 and kappa(K) from the singular
    value decomposition F = U diag(s) V^T (numpy; independent of the Cholesky forms):
    K = U diag(scale s^2 + sig2) U^T (+ sig2 on U's complement), S = V diag(1 / (s^2/sig2 + 1/scale)) V^T
    (+ scale on V's complement), m = S F^T Y / sig2."""
    out = []
    for f, y in zip(F.numpy(), Y.numpy()):
        (N, h), C = f.shape, y.shape[1]
        U, sv, Vt = np.linalg.svd(f, full_matrices=True)
        k = len(sv)
        lam = np.full(N, sig2)
        lam[:k] += scale * sv**2
        z = U.T @ y
        quad = float((z**2 / lam[:, None]).sum())
        logdet = float(np.log(lam).sum())
        shrink = np.zeros(h)
        shrink[:k] = (sv / sig2) / (sv**2 / sig2 + 1 / scale)
        m = Vt.T @ (shrink[:, None] * np.pad(z[:k], ((0, h - k), (0, 0))))
        s_diag = np.full(h, scale)
        s_diag[:k] = 1 / (sv**2 / sig2 + 1 / scale)
        tr_s = float(s_diag.sum())
        out.append((quad, logdet, m, tr_s, float((m**2).sum() + C * tr_s), lam.max() / lam.min()))
    return out


# N <= h: the N x N form; N > h: the h x h (Woodbury) form. sig2 from the paper's 1e-6 to 1e-1.
@pytest.mark.parametrize("N, h", [(12, 30), (30, 12)])
@pytest.mark.parametrize("sig2", [1e-1, 1e-6])
def test_likelihood_and_readout_match_the_dense_formulas(N, h, sig2):
    F, Y, scale, sig2 = _case(N, h, 2, sig2)
    like, readout = gp_likelihood(F, Y, scale, sig2), readout_posterior(F, Y, scale, sig2)
    assert like.ok.all() and readout.ok.all()
    for b, (quad, logdet, m, tr_s, a2, kappa) in enumerate(_dense(F, Y, scale, sig2)):
        # Backward-stable Cholesky solves: relative error <= c N eps kappa(K) in both forms (the
        # Woodbury form's subtraction |Y|^2 - scale |L^-1 F^T Y|^2 loses at most kappa digits too);
        # c = 10 covers the few triangular solves and products on top of the factorisation.
        bound = 10 * N * EPS * kappa
        assert abs(like.quad[b].item() - quad) <= bound * abs(quad)
        assert abs(like.logdet[b].item() - logdet) <= 10 * N * EPS * (abs(logdet) + N * np.log(kappa))
        np.testing.assert_allclose(readout.mean[b].numpy(), m, rtol=0, atol=bound * np.abs(m).max())
        assert abs(readout.cov_trace[b].item() - tr_s) <= bound * tr_s + 10 * h * EPS * scale * h
        assert abs(readout.sq_norm[b].item() - a2) <= bound * a2 + 10 * h * EPS * scale * h
        np.testing.assert_allclose(readout.f_mean[b].numpy(), F[b].numpy() @ m, rtol=0,
                                   atol=bound * np.abs(F[b].numpy() @ m).max())


def test_both_forms_agree_where_both_apply():
    """The same K through the Woodbury form (N = 9 > h = 8) and through the N x N form (one zero
    column appended: K is unchanged and now N <= h)."""
    F, Y, _, sig2 = _case(9, 8, 1, 1e-3)
    scale = 0.01
    wood = gp_likelihood(F, Y, scale, sig2)  # N = 9 > h = 8
    padded = torch.cat([F, torch.zeros(2, 9, 1, dtype=F.dtype)], dim=-1)  # same K, N = 9 <= h = 9
    direct = gp_likelihood(padded, Y, scale, sig2)
    kappa = max(c[-1] for c in _dense(F, Y, scale, sig2))
    torch.testing.assert_close(wood.quad, direct.quad, rtol=10 * 9 * EPS * kappa, atol=0)
    torch.testing.assert_close(wood.logdet, direct.logdet, rtol=0, atol=10 * 9 * EPS * 9 * np.log(kappa))


def test_a_matrix_that_is_not_positive_definite_is_a_flag_not_an_exception():
    F = torch.zeros(2, 4, 6, dtype=torch.float64)
    Y = torch.ones(2, 4, 1, dtype=torch.float64)
    like = gp_likelihood(F, Y, 0.1, -1.0)  # K = -I
    assert not like.ok.any() and torch.isnan(like.quad).all() and torch.isnan(like.logdet).all()
    readout = readout_posterior(F, Y, 0.1, -1.0)
    assert not readout.ok.any() and torch.isnan(readout.f_mean).all()

"""The neuron updates of one Gibbs sweep as one compiled loop (numba), for erf and the ReLU family.

Same algorithm, same random numbers and same state as :func:`.gibbs.sweep`'s torch loop (which
serves every activation): per chain and neuron, B u = M u + kappa p (p . u), the elliptical slice
with its shrinking bracket, then M += kappa p p^T - gamma r r^T (docs/MATH.md section 9). The torch
loop pays some 30 small tensor operations per candidate, which at N <= 256 cost several times the
O(N^2) products themselves; here the products are BLAS gemv calls and the rest is scalar code. A
chain whose bracket is cut keeps w_j and its inverse unchanged (the torch loop applies the
algebraically trivial update instead): the two loops agree to rounding.

Activations are chosen by kernel map alone (:data:`CODES`): erf, and phi(z) = p z + q |z| for the
ReLU family (relu, leaky_relu, abs; bit for bit the registry's values for relu and abs).
"""
from __future__ import annotations

import math

import numba
import numpy as np
import torch

from ..closed_forms import ErfMap, ReluFamilyMap

__all__ = ["activation_code", "sweep_neurons"]

ERF, RELU_FAMILY = 0, 1
_jit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")


def activation_code(activation) -> tuple[int, float, float] | None:
    """(code, p, q) of an :class:`~shallow_collapse.activations.Activation` the compiled loop knows
    (by its kernel map), or None (then the torch loop runs)."""
    km = getattr(activation, "kernel_map", None)
    if isinstance(km, ErfMap):
        return ERF, 0.0, 0.0
    if isinstance(km, ReluFamilyMap):
        return RELU_FAMILY, (1.0 + km.alpha) / 2.0, (1.0 - km.alpha) / 2.0
    return None


@_jit
def _phi(z, out, code, p, q):
    if code == ERF:
        for n in range(z.shape[0]):
            out[n] = math.erf(z[n])
    else:
        for n in range(z.shape[0]):
            out[n] = p * z[n] + q * abs(z[n])


@_jit
def _log_lik(rho, omega, c):
    s = 0.0
    for k in range(omega.shape[0]):
        s += omega[k] * omega[k]
    return -0.5 * omega.shape[0] * math.log1p(c * rho) + 0.5 * c * s / (1.0 + c * rho)


@_jit
def _column_dot(A, m, v):
    s = 0.0
    for n in range(v.shape[0]):
        s += A[n, m] * v[n]
    return s


@_jit
def _chain(X, Y, W, F, M, Z, order, nu, uni, c, prior_std, code, p_act, q_act):
    N, d = X.shape
    h, C = W.shape[0], Y.shape[1]
    K = uni.shape[1] - 1
    phi_j, u, z, r = np.empty(N), np.empty(N), np.empty(N), np.empty(N)
    omega, pY, w, w0, nv = np.empty(C), np.empty(C), np.empty(d), np.empty(d), np.empty(d)
    evaluations, cuts = 0.0, 0.0
    for i in range(h):
        j = order[i]
        for n in range(N):
            phi_j[n] = F[n, j]
        pvec = np.dot(M, phi_j)
        s0 = np.dot(phi_j, pvec)
        den = 1.0 - c * s0
        kappa = c / den
        for k in range(C):
            pY[k] = _column_dot(Y, k, pvec)
            omega[k] = pY[k] / den
        threshold = _log_lik(s0 / den, omega, c) + math.log(uni[i, 0])
        if not math.isfinite(threshold):
            continue  # a chain that is not finite does not move
        for a in range(d):
            w0[a] = W[j, a]
            nv[a] = nu[j, a] * prior_std
        theta = 2.0 * math.pi * uni[i, 1]
        lo, hi = theta - 2.0 * math.pi, theta
        accepted = False
        rho = 0.0
        for k in range(K):
            evaluations += 1.0
            ct, st = math.cos(theta), math.sin(theta)
            for a in range(d):
                w[a] = w0[a] * ct + nv[a] * st
            z[:] = np.dot(X, w)
            _phi(z, u, code, p_act, q_act)
            q = np.dot(M, u)
            pu = kappa * np.dot(pvec, u)
            for n in range(N):
                r[n] = q[n] + pu * pvec[n]
            rho = np.dot(u, r)
            for m in range(C):
                omega[m] = _column_dot(Z, m, u) + pu * pY[m]
            if _log_lik(rho, omega, c) > threshold:
                accepted = True
                break
            if theta < 0.0:
                lo = theta
            else:
                hi = theta
            if k + 1 < K:
                theta = lo + (hi - lo) * uni[i, 2 + k]
        if not accepted:
            cuts += 1.0
            continue
        gamma = c / (1.0 + c * rho)
        for a in range(N):
            ka, ga = kappa * pvec[a], gamma * r[a]
            for b in range(N):
                M[a, b] += ka * pvec[b] - ga * r[b]
            for m in range(C):
                Z[a, m] += ka * pY[m] - ga * omega[m]
        for a in range(d):
            W[j, a] = w[a]
        for n in range(N):
            F[n, j] = u[n]
    return evaluations / h, cuts


def sweep_neurons(target, state, noise, code: tuple[int, float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Update every neuron of every chain once, in place on ``state`` (CPU float64 tensors, shared
    with numpy); returns (mean candidates per update, cuts) per chain ``(B,)``."""
    arrays = [t.numpy() for t in (target.X, target.Y, state.W, state.F, state.form.M, state.form.Z,
                                  noise.order, noise.nu, noise.uniform)]
    B = arrays[0].shape[0]
    evaluations, cuts = np.zeros(B), np.zeros(B)
    for b in range(B):  # one call per chain: each array is C-contiguous, so np.dot is BLAS gemv
        evaluations[b], cuts[b] = _chain(*(np.ascontiguousarray(a[b]) if i < 2 or i > 5 else a[b]
                                           for i, a in enumerate(arrays)),
                                         target.c, target.prior_std, *code)
    return torch.from_numpy(evaluations), torch.from_numpy(cuts)

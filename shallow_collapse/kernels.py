"""Infinite-width kernels of fully-connected networks (MATH.md section 5).

Every function takes kernels of shape ``(..., N, N)`` (any leading batch dimensions,
e.g. repeats) and returns the same shape. Compute in float64: the arcsin/arccos maps are
ill-conditioned near +-1 and NC1 differences between methods are often small.

Composable pieces:
- :func:`input_kernel`: pre-activation kernel of layer 1 from data ``X``.
- :func:`erf_maps`, :func:`relu_maps`: ``(Kphi, Kdphi)`` for a pre-activation kernel.
- :func:`limiting_kernels`: the whole recursion (NNGP of every layer and the output NTK).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .devices import torch_threads
from .metrics import one_hot, traces_from_block_sums

__all__ = [
    "input_kernel", "erf_maps", "relu_maps", "activation_maps", "LimitingKernels",
    "limiting_kernels", "limiting_kernels_nc1", "kernel_names", "ACTIVATIONS",
]


def input_kernel(X: torch.Tensor, weight_std: float = 1.0, bias_std: float = 0.0) -> torch.Tensor:
    """K^1 = sb^2 + (sw^2 / d) X X^T for ``X`` of shape ``(..., N, d)``; returns ``(..., N, N)``."""
    d = X.shape[-1]
    return bias_std**2 + (weight_std**2 / d) * (X @ X.transpose(-1, -2))


def _diagonals(K, k_row, k_col):
    """Row and column variances, broadcastable against ``K`` (taken from its diagonal if None)."""
    if k_row is None:
        diag = torch.diagonal(K, dim1=-2, dim2=-1)
        return diag.unsqueeze(-1), diag.unsqueeze(-2)
    return k_row, k_col


def erf_maps(K, k_row=None, k_col=None):
    """E[erf(u)erf(v)] and E[erf'(u)erf'(v)] for (u, v) ~ N(0, [[K_ii, K_ij], [K_ij, K_jj]]).

    Kphi_ij = (2/pi) arcsin(2K_ij / sqrt(D_i D_j)),  Kdphi_ij = (4/pi) (D_i D_j - 4K_ij^2)^(-1/2),
    with D_i = 1 + 2K_ii. ``K`` is ``(..., n, m)``; ``k_row`` (``(..., n, 1)``) and ``k_col``
    (``(..., 1, m)``) are the variances K_ii and K_jj, read off the diagonal of a square ``K`` when
    omitted (passing them lets a block of rows, or the diagonal itself, be mapped alone).
    For a PSD kernel D_i D_j - 4K_ij^2 >= 1, so only round-off needs guarding.
    """
    k_row, k_col = _diagonals(K, k_row, k_col)
    r = ((1.0 + 2.0 * k_row) * (1.0 + 2.0 * k_col)).rsqrt()
    ratio = (2.0 * K * r).clamp_(-1.0, 1.0)
    Kphi = torch.asin(ratio).mul_(2.0 / math.pi)
    Kdphi = ratio.mul_(ratio).neg_().add_(1.0).clamp_min_(1e-300).rsqrt_().mul_(r * (4.0 / math.pi))
    return Kphi, Kdphi


_SNAP = 1.0 - 8 * torch.finfo(torch.float64).eps


def relu_maps(K, k_row=None, k_col=None):
    """E[relu(u)relu(v)] and E[step(u)step(v)] for (u, v) ~ N(0, K) (arc-cosine kernels).

    With cos(theta) = K_ij / sqrt(K_ii K_jj) clipped into [-1, 1] and theta = atan2(sin, cos):
    Kphi = sqrt(K_ii K_jj)(sin theta + (pi - theta) cos theta) / (2 pi),
    Kdphi = (pi - theta) / (2 pi). A zero-variance point (K_ii = 0) gives Kphi = 0, Kdphi = 1/2.
    Shapes as in :func:`erf_maps`.
    """
    k_row, k_col = _diagonals(K, k_row, k_col)
    norm = (k_row * k_col).clamp_min(0.0).sqrt()
    cos = torch.where(norm > 0, K / torch.where(norm > 0, norm, 1.0), 1.0).clamp_(-1.0, 1.0)
    # Within a few ulps of +-1, round-off eps would become theta ~ sqrt(2 eps) ~ 1e-8: snap it.
    cos = torch.where(cos.abs() > _SNAP, cos.sign(), cos)
    sin = (1.0 - cos * cos).clamp_min_(0.0).sqrt_()
    theta = torch.atan2(sin, cos)
    Kphi = (sin + (math.pi - theta) * cos).mul_(norm / (2.0 * math.pi))
    Kdphi = theta.neg_().add_(math.pi).div_(2.0 * math.pi)
    return Kphi, Kdphi


ACTIVATIONS = {"erf": erf_maps, "relu": relu_maps}


def activation_maps(K, activation: str, k_row=None, k_col=None):
    """``(Kphi, Kdphi)`` of ``K`` for ``activation`` in :data:`ACTIVATIONS` (see :func:`erf_maps`)."""
    try:
        maps = ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}") from None
    return maps(K, k_row, k_col)


@dataclass
class LimitingKernels:
    """Kernels of an L-layer network at infinite width, each ``(..., N, N)``.

    ``pre[l]`` is the pre-activation NNGP K^{l+1} (``pre[-1]`` is the output's, K^L);
    ``post[l]`` is the post-activation kernel Kphi(K^{l+1}) of hidden layer l+1 (length L-1);
    ``ntk`` is the output tangent kernel Theta^L.
    """

    pre: list[torch.Tensor]
    post: list[torch.Tensor]
    ntk: torch.Tensor

    @property
    def nngp(self) -> torch.Tensor:
        """Last hidden layer's post-activation kernel: what the sweeps call the NNGP."""
        return self.post[-1]


def _recursion(K, k_row, k_col, L, activation, hidden_weight_std, final_weight_std, bias_std):
    """Run the layer recursion on a block K^1 whose row/column variances are k_row, k_col."""
    if L < 2:
        raise ValueError(f"L must be >= 2 (one hidden layer at least), got {L}")
    sb2 = bias_std**2
    pre, post, ntk = [K], [], K
    for layer in range(2, L + 1):
        s2 = (final_weight_std if layer == L else hidden_weight_std) ** 2
        Kphi, Kdphi = activation_maps(K, activation, k_row, k_col)
        k_row = sb2 + s2 * activation_maps(k_row, activation, k_row, k_row)[0]
        k_col = sb2 + s2 * activation_maps(k_col, activation, k_col, k_col)[0]
        K = sb2 + s2 * Kphi
        ntk = K + s2 * Kdphi * ntk
        pre.append(K)
        post.append(Kphi)
    return LimitingKernels(pre=pre, post=post, ntk=ntk)


def limiting_kernels(X, L=2, activation="erf", hidden_weight_std=1.0, final_weight_std=1.0,
                     bias_std=0.0) -> LimitingKernels:
    """NNGP of every layer and the output NTK for data ``X`` of shape ``(..., N, d)``.

    K^1 = sb^2 + (sw^2/d) X X^T;  K^l = sb^2 + s_l^2 Kphi(K^{l-1});
    Theta^1 = K^1;  Theta^l = K^l + s_l^2 Kdphi(K^{l-1}) * Theta^{l-1},
    with s_l = ``hidden_weight_std`` for hidden layers and ``final_weight_std`` for layer L.
    """
    K = input_kernel(X, hidden_weight_std, bias_std)
    diag = torch.diagonal(K, dim1=-2, dim2=-1)
    return _recursion(K, diag.unsqueeze(-1), diag.unsqueeze(-2), L, activation,
                      hidden_weight_std, final_weight_std, bias_std)


def kernel_names(L: int) -> list[str]:
    """Names of the kernels :func:`limiting_kernels_nc1` reports, in order."""
    return ([f"pre{l}" for l in range(1, L + 1)] + [f"post{l}" for l in range(1, L)] + ["ntk"])


def _named(kernels: LimitingKernels) -> list[torch.Tensor]:
    return [*kernels.pre, *kernels.post, kernels.ntk]


def limiting_kernels_nc1(X, labels, L=2, activation="erf", hidden_weight_std=1.0,
                         final_weight_std=1.0, bias_std=0.0, block_elements=2**17) -> dict:
    """NC1 of every limiting kernel of ``X`` ``(..., N, d)`` without forming any N x N matrix.

    Returns ``{name: tensor of shape (...)}`` with the names of :func:`kernel_names`
    (``post{L-1}`` is what the sweeps call the NNGP). The recursion is elementwise given the
    variances, so it runs on blocks of rows of the upper triangle (each about
    ``block_elements`` entries, small enough to stay in cache) and only the C x C class block
    sums and the traces are accumulated. Equal to :func:`limiting_kernels` followed by
    :func:`~shallow_collapse.metrics.nc1_kernel` up to round-off; about 10x faster at N=2048.
    """
    lead, (N, d) = X.shape[:-2], X.shape[-2:]
    Xf = X.reshape(-1, N, d)
    Y = one_hot(labels.to(X.device), X.dtype)
    n = Y.sum(0)
    rows = max(8, block_elements // N)
    k1 = bias_std**2 + (hidden_weight_std**2 / d) * (Xf * Xf).sum(-1)  # (B, N)
    count = 2 * L
    S = X.new_zeros(Xf.shape[0], count, Y.shape[1], Y.shape[1])
    trace = X.new_zeros(Xf.shape[0], count)
    with torch_threads(1):  # small blocks: threads cost more than they give (see torch_threads)
        _accumulate_blocks(Xf, Y, k1, rows, S, trace, L, activation, hidden_weight_std, final_weight_std, bias_std)
    tr_w, tr_b = traces_from_block_sums(S, trace, n)
    nc1 = (tr_w / tr_b).reshape(*lead, count)
    return {name: nc1[..., k] for k, name in enumerate(kernel_names(L))}


def _accumulate_blocks(Xf, Y, k1, rows, S, trace, L, activation, hidden_weight_std, final_weight_std, bias_std):
    """Add each row block's class block sums and trace into ``S`` and ``trace`` (in place)."""
    N = Xf.shape[-2]
    for item, x in enumerate(Xf):
        for a in range(0, N, rows):
            b = min(N, a + rows)
            block = input_kernel_rows(x[a:b], x[a:], hidden_weight_std, bias_std)
            kernels = _recursion(block, k1[item, a:b, None], k1[item, None, a:], L, activation,
                                 hidden_weight_std, final_weight_std, bias_std)
            Yr, Yc = Y[a:b], Y[b:]
            for k, M in enumerate(_named(kernels)):
                off = Yr.T @ M[:, b - a:] @ Yc
                S[item, k] += Yr.T @ M[:, : b - a] @ Yr + off + off.T
                trace[item, k] += torch.diagonal(M[:, : b - a]).sum()


def input_kernel_rows(X_rows, X_cols, weight_std=1.0, bias_std=0.0):
    """Block of K^1 between rows ``X_rows`` ``(n, d)`` and ``X_cols`` ``(m, d)``; ``(n, m)``."""
    return torch.addmm(X_rows.new_full((1, 1), bias_std**2), X_rows, X_cols.T,
                       alpha=weight_std**2 / X_rows.shape[-1])

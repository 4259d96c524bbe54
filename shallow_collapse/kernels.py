"""Infinite-width kernels of fully-connected networks (MATH.md section 5).

Every function takes kernels of shape ``(..., N, N)`` (any leading batch dimensions,
e.g. repeats) and returns the same shape. Compute in float64: the arcsin/arccos maps are
ill-conditioned near +-1 and NC1 differences between methods are often small. The network is a
:class:`~shallow_collapse.params.NetworkParams` (the paper's by default); each activation's
``(Kphi, Kdphi)`` maps live in :mod:`shallow_collapse.activations`.

Composable pieces:
- :func:`input_kernel`: pre-activation kernel of layer 1 from data ``X``.
- :func:`limiting_kernels`: the whole recursion (NNGP of every layer and the output NTK).
- :func:`limiting_kernels_nc1`: NC1 of every kernel of the recursion without N x N matrices.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .devices import torch_threads
from .metrics import one_hot, traces_from_block_sums
from .params import NetworkParams

__all__ = ["input_kernel", "LimitingKernels", "limiting_kernels", "limiting_kernels_nc1", "kernel_names"]

PAPER_NETWORK = NetworkParams()


def input_kernel(X: torch.Tensor, net: NetworkParams = PAPER_NETWORK) -> torch.Tensor:
    """K^1 = sb^2 + (sw^2 / d) X X^T for ``X`` of shape ``(..., N, d)``; returns ``(..., N, N)``."""
    d = X.shape[-1]
    return net.bias_std**2 + (net.hidden_weight_std**2 / d) * (X @ X.transpose(-1, -2))


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


def _recursion(K, k_row, k_col, net: NetworkParams):
    """Run the layer recursion on a block K^1 whose row/column variances are k_row, k_col."""
    L = net.L
    if L < 2:
        raise ValueError(f"L must be >= 2 (one hidden layer at least), got {L}")
    maps = net.act.kernel_map.maps
    sb2 = net.bias_std**2
    pre, post, ntk = [K], [], K
    for layer in range(2, L + 1):
        s2 = (net.final_weight_std if layer == L else net.hidden_weight_std) ** 2
        Kphi, Kdphi = maps(K, k_row, k_col)
        k_row = sb2 + s2 * maps(k_row, k_row, k_row)[0]
        k_col = sb2 + s2 * maps(k_col, k_col, k_col)[0]
        K = sb2 + s2 * Kphi
        ntk = K + s2 * Kdphi * ntk
        pre.append(K)
        post.append(Kphi)
    return LimitingKernels(pre=pre, post=post, ntk=ntk)


def limiting_kernels(X, net: NetworkParams = PAPER_NETWORK) -> LimitingKernels:
    """NNGP of every layer and the output NTK of the network ``net`` for data ``X`` ``(..., N, d)``.

    K^1 = sb^2 + (sw^2/d) X X^T;  K^l = sb^2 + s_l^2 Kphi(K^{l-1});
    Theta^1 = K^1;  Theta^l = K^l + s_l^2 Kdphi(K^{l-1}) * Theta^{l-1},
    with s_l = ``hidden_weight_std`` for hidden layers and ``final_weight_std`` for layer L.
    """
    K = input_kernel(X, net)
    diag = torch.diagonal(K, dim1=-2, dim2=-1)
    return _recursion(K, diag.unsqueeze(-1), diag.unsqueeze(-2), net)


def kernel_names(L: int) -> list[str]:
    """Names of the kernels :func:`limiting_kernels_nc1` reports, in order."""
    return ([f"pre{l}" for l in range(1, L + 1)] + [f"post{l}" for l in range(1, L)] + ["ntk"])


def _named(kernels: LimitingKernels) -> list[torch.Tensor]:
    return [*kernels.pre, *kernels.post, kernels.ntk]


def limiting_kernels_nc1(X, labels, net: NetworkParams = PAPER_NETWORK, *, block_elements=2**17) -> dict:
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
    k1 = net.bias_std**2 + (net.hidden_weight_std**2 / d) * (Xf * Xf).sum(-1)  # (B, N)
    count = 2 * net.L
    S = X.new_zeros(Xf.shape[0], count, Y.shape[1], Y.shape[1])
    trace = X.new_zeros(Xf.shape[0], count)
    with torch_threads(1):  # small blocks: threads cost more than they give (see torch_threads)
        _accumulate_blocks(Xf, Y, k1, rows, S, trace, net)
    tr_w, tr_b = traces_from_block_sums(S, trace, n)
    nc1 = (tr_w / tr_b).reshape(*lead, count)
    return {name: nc1[..., k] for k, name in enumerate(kernel_names(net.L))}


def _accumulate_blocks(Xf, Y, k1, rows, S, trace, net):
    """Add each row block's class block sums and trace into ``S`` and ``trace`` (in place)."""
    N = Xf.shape[-2]
    for item, x in enumerate(Xf):
        for a in range(0, N, rows):
            b = min(N, a + rows)
            block = input_kernel_rows(x[a:b], x[a:], net)
            kernels = _recursion(block, k1[item, a:b, None], k1[item, None, a:], net)
            Yr, Yc = Y[a:b], Y[b:]
            for k, M in enumerate(_named(kernels)):
                off = Yr.T @ M[:, b - a:] @ Yc
                S[item, k] += Yr.T @ M[:, : b - a] @ Yr + off + off.T
                trace[item, k] += torch.diagonal(M[:, : b - a]).sum()


def input_kernel_rows(X_rows, X_cols, net: NetworkParams = PAPER_NETWORK):
    """Block of K^1 between rows ``X_rows`` ``(n, d)`` and ``X_cols`` ``(m, d)``; ``(n, m)``."""
    return torch.addmm(X_rows.new_full((1, 1), net.bias_std**2), X_rows, X_cols.T,
                       alpha=net.hidden_weight_std**2 / X_rows.shape[-1])

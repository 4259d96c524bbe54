"""Neural-collapse metric NC1 from features or from a kernel (MATH.md sections 3 and 4).

Conventions: ``labels`` is an integer tensor of shape ``(N,)`` with values ``0..C-1`` (rows need
not be sorted by class); features ``H`` have shape ``(..., N, p)``; kernels ``K = H H^T`` have
shape ``(..., N, N)``. Leading dimensions are batch dimensions (e.g. repeats) and are kept.
The number of classes ``C`` is the number of distinct labels present.
"""
from __future__ import annotations

import math

import torch

__all__ = ["one_hot", "feature_traces", "kernel_traces", "nc1_features", "nc1_features_pinv",
           "nc1_pinv_from_means", "nc1_kernel", "traces_from_block_sums", "relative_nc1", "log10"]


def one_hot(labels: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """``(N, C)`` indicator matrix of the classes present in ``labels``."""
    classes = torch.unique(labels)
    return (labels.unsqueeze(-1) == classes).to(dtype)


def _class_means(H: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    Y = one_hot(labels.to(H.device), H.dtype)
    counts = Y.sum(0)
    means = (Y.T @ H) / counts.unsqueeze(-1)  # (..., C, p)
    return means, Y


def feature_traces(H: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tr(Sigma_W), Tr(Sigma_B) of features ``H`` ``(..., N, p)``; each of shape ``(...)``."""
    means, Y = _class_means(H, labels)
    within = H - Y @ means
    tr_w = within.pow(2).sum((-1, -2)) / H.shape[-2]
    between = means - H.mean(-2, keepdim=True)
    tr_b = between.pow(2).sum((-1, -2)) / means.shape[-2]
    return tr_w, tr_b


def nc1_features(H: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """NC1 = Tr(Sigma_W) / Tr(Sigma_B) of features ``H`` ``(..., N, p)``; shape ``(...)``."""
    tr_w, tr_b = feature_traces(H, labels)
    return tr_w / tr_b


def nc1_features_pinv(H: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Tr(Sigma_W Sigma_B^+) / C of features ``H`` ``(..., N, p)``; shape ``(...)``.

    Sigma_B has rank <= C-1; its pseudo-inverse uses the default relative cutoff of
    ``torch.linalg.pinv`` (hermitian), so the result is the within-class scatter measured in the
    span of the class means.
    """
    means, Y = _class_means(H, labels)
    within = H - Y @ means
    sigma_w = within.transpose(-1, -2) @ within / H.shape[-2]
    between = means - H.mean(-2, keepdim=True)
    C = means.shape[-2]
    sigma_b = between.transpose(-1, -2) @ between / C
    pinv = torch.linalg.pinv(sigma_b, hermitian=True)
    return (sigma_w * pinv.transpose(-1, -2)).sum((-1, -2)) / C


def nc1_pinv_from_means(H: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Tr(Sigma_W Sigma_B^+) / C of features ``H`` ``(..., N, p)``, equal to
    :func:`nc1_features_pinv` but in O(N p C) instead of O(p^3).

    With M the ``(C, p)`` centred class means, Sigma_B = M^T M / C, so Sigma_B^+ = C M^+ M^+^T
    with M^+ = M^T G^+, G = M M^T (C x C). Hence Tr(Sigma_W Sigma_B^+)/C = ||W M^T G^+||_F^2 / N,
    W the within-class deviations. G has the non-zero eigenvalues of C Sigma_B, and G^+ drops the
    eigenvalues below p * eps * max|eigenvalue|: the default cutoff of ``torch.linalg.pinv``
    (hermitian) on the p x p Sigma_B that :func:`nc1_features_pinv` inverts.
    """
    means, Y = _class_means(H, labels)
    within = H - Y @ means
    M = means - H.mean(-2, keepdim=True)
    evals, evecs = torch.linalg.eigh(M @ M.transpose(-1, -2))
    tol = H.shape[-1] * torch.finfo(H.dtype).eps * evals.abs().amax(-1, keepdim=True)
    inv = torch.where(evals.abs() > tol, 1.0 / evals, torch.zeros_like(evals))
    G_pinv = (evecs * inv.unsqueeze(-2)) @ evecs.transpose(-1, -2)
    B = (within @ M.transpose(-1, -2)) @ G_pinv  # (..., N, C)
    return B.pow(2).sum((-1, -2)) / H.shape[-2]


def kernel_traces(K: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tr(Sigma_W), Tr(Sigma_B) of the features behind ``K = H H^T`` ``(..., N, N)``.

    Block sums S = Y^T K Y (Y the one-hot label matrix) give, exactly for any class sizes n_c,
    Tr(Sigma_W) = (Tr K - sum_c S_cc / n_c) / N and
    Tr(Sigma_B) = (1/C) sum_c [S_cc / n_c^2 - 2 S_c* / (n_c N) + S / N^2].
    """
    Y = one_hot(labels.to(K.device), K.dtype)
    S = Y.T @ K @ Y  # (..., C, C)
    return traces_from_block_sums(S, torch.diagonal(K, dim1=-2, dim2=-1).sum(-1), Y.sum(0))


def traces_from_block_sums(S: torch.Tensor, trace: torch.Tensor, n: torch.Tensor):
    """Tr(Sigma_W), Tr(Sigma_B) from class block sums ``S`` ``(..., C, C)``, ``Tr K`` ``(...)``
    and class sizes ``n`` ``(C,)`` (see :func:`kernel_traces`)."""
    N, C = n.sum(), n.shape[-1]
    S_cc = torch.diagonal(S, dim1=-2, dim2=-1)
    S_c = S.sum(-1)
    S_all = S_c.sum(-1, keepdim=True)
    tr_w = (trace - (S_cc / n).sum(-1)) / N
    tr_b = (S_cc / n**2 - 2.0 * S_c / (n * N) + S_all / N**2).sum(-1) / C
    return tr_w, tr_b


def nc1_kernel(K: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """NC1 = Tr(Sigma_W) / Tr(Sigma_B) of the kernel ``K`` ``(..., N, N)``; shape ``(...)``."""
    tr_w, tr_b = kernel_traces(K, labels)
    return tr_w / tr_b


def relative_nc1(nc1, data_nc1, tau: float = 1e-8):
    """log10( NC1(H) / (NC1(X) + tau) ): how much a representation collapses beyond its input."""
    if isinstance(nc1, torch.Tensor) or isinstance(data_nc1, torch.Tensor):
        return torch.log10(torch.as_tensor(nc1) / (torch.as_tensor(data_nc1) + tau))
    return math.log10(nc1 / (data_nc1 + tau)) if nc1 > 0 else float("nan")


def log10(x: float) -> float:
    """log10 that returns NaN (not an exception) for non-positive or NaN input."""
    return math.log10(x) if x > 0 else float("nan")

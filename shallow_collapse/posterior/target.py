"""The collapsed posterior of the network the EoS describe: a density over the first layer W alone.

Network (docs/MATH.md, the network the EoS describe): f(x) = sum_c a_c phi(w_c . x), priors
w_c ~ N(0, (sigw2/d) I_d), a ~ N(0, (siga2/h) I_h), likelihood Y ~ N(f(X), sig2). The readout is
linear-Gaussian and integrates out exactly (:mod:`shallow_collapse.gp`). In prior-whitened
coordinates v = W sqrt(d / sigw2) (so the prior of v is N(0, I)) the potential is

    U(v) = |v|^2 / 2 + Phi(v),   Phi(v) = tr(Y^T C_W^{-1} Y) / 2 + (C / 2) log det C_W,
    C_W = (siga2 / h) phi(X W^T) phi(X W^T)^T + sig2 I_N,

with C target columns (the constant N C log(2 pi) / 2 dropped). The gradient comes by autograd,
so any activation of the registry works. Batched: ``X`` ``(B, N, d)``, ``Y`` ``(B, N, C)``,
``v`` ``(B, h, d)``, one chain per batch entry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..gp import gp_likelihood

__all__ = ["CollapsedPosterior"]


@dataclass(frozen=True)
class CollapsedPosterior:
    """U(v) of the module docstring on data ``X`` ``(B, N, d)`` and targets ``Y`` ``(B, N, C)``."""

    X: torch.Tensor
    Y: torch.Tensor
    phi: Callable
    sigw2: float
    siga2: float
    sig2: float

    def weights(self, v: torch.Tensor) -> torch.Tensor:
        """W = v sqrt(sigw2 / d): ``(B, h, d)``."""
        return v * math.sqrt(self.sigw2 / v.shape[-1])

    def features(self, v: torch.Tensor) -> torch.Tensor:
        """phi(X W^T): ``(B, N, h)``."""
        return self.phi(self.X @ self.weights(v).transpose(-1, -2))

    def scale(self, h: int) -> float:
        """The readout's prior variance siga2 / h (the kernel is scale F F^T)."""
        return self.siga2 / h

    def data_term(self, v: torch.Tensor) -> torch.Tensor:
        """Phi(v) per chain ``(B,)``; NaN where C_W is not positive definite."""
        like = gp_likelihood(self.features(v), self.Y, self.scale(v.shape[-2]), self.sig2)
        return like.nll(self.Y.shape[-1])

    def potential(self, v: torch.Tensor) -> torch.Tensor:
        """U(v) per chain ``(B,)``."""
        return 0.5 * v.pow(2).sum((-1, -2)) + self.data_term(v)

    def data_term_and_grad(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Phi(v) ``(B,)``, grad Phi(v) ``(B, h, d)``) by autograd; a chain whose Phi is not finite
        gets a NaN gradient (its proposal is then rejected)."""
        with torch.enable_grad():
            v_ = v.detach().requires_grad_(True)
            phi_v = self.data_term(v_)
            finite = torch.isfinite(phi_v)
            (grad,) = torch.autograd.grad(torch.where(finite, phi_v, 0.0).sum(), v_)
        grad = torch.where(finite[:, None, None], grad, math.nan)
        return phi_v.detach(), grad

"""The solver's options as one typed group (the science parameters stay in :class:`EoSParams`)."""
from __future__ import annotations

from dataclasses import dataclass

from ..params import EoSParams


@dataclass(frozen=True, kw_only=True)
class SolverOptions:
    """How a branch is solved: ``rtol`` (converged when max|Sigma - Sigma_new| / max|Sigma| <= rtol),
    ``maxiter`` (per step: L-BFGS iterations per round, Anderson iterations, Newton steps),
    ``inner_maxiter`` (Krylov iterations per Newton step), ``max_subdivisions`` (nested
    subdivisions of a failed continuation step), and the ``anderson`` strategy's memory, mixing
    ``beta``, relative Tikhonov regularisation and stall window (0 disables it)."""

    rtol: float = EoSParams.rtol
    maxiter: int = EoSParams.maxiter
    inner_maxiter: int = EoSParams.inner_maxiter
    max_subdivisions: int = EoSParams.max_subdivisions
    anderson_memory: int = 3
    anderson_beta: float = 1.0
    anderson_regularization: float = 1e-10
    anderson_stall: int = 8

    @classmethod
    def from_params(cls, params: EoSParams, **anderson) -> "SolverOptions":
        """The solver fields of ``params`` with the ``anderson_*`` options given."""
        return cls(rtol=params.rtol, maxiter=params.maxiter, inner_maxiter=params.inner_maxiter,
                   max_subdivisions=params.max_subdivisions, **anderson)

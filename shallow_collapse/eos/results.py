"""What a solve returns: every attempted step, every competing candidate, and the result."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

@dataclass
class StepRecord:
    """One attempted continuation step (failed attempts are kept, with ``accepted`` False).

    ``rel_residual`` and ``action`` are those of the step's returned point at this ``factor``.
    """

    factor: float
    iterations: int
    evaluations: int
    rel_residual: float
    action: float
    converged: bool
    seconds: float
    accepted: bool
    depth: int  # 0 for a factor of the schedule, k for one inserted by the k-th subdivision
    message: str = ""


@dataclass
class Candidate:
    """One solution found for chi = h (the branch of a strategy, or a restart from Sigma_0);
    ``rel_residual`` and ``action`` at chi = h, ``factor`` where its branch stopped.

    ``sigma_gap`` = max|Sigma - Sigma_chosen| / max|Sigma_chosen|.
    """

    origin: str
    converged: bool
    factor: float
    rel_residual: float
    action: float
    evaluations: int
    sigma_gap: float = math.nan
    message: str = ""


@dataclass
class EoSResult:
    """Outcome of :func:`solve_eos` (tensors on CPU, float64).

    ``Sigma``, ``Sigma0`` ``(d, d)``: the chosen solution (the converged candidate of least action;
    the primary branch's last accepted point when none converged) and the NNGP start.
    ``Q``, ``Q0`` ``(N, N)``: the kernel at ``Sigma`` and at ``Sigma0``.
    ``alpha``, ``fbar``, ``fbar0`` ``(N,)``. ``converged``: the chosen point solves the EoS at chi = h
    to ``rel_residual <= rtol``. ``rel_residual`` and ``action``: those of ``Sigma`` at chi = h
    (also when the branch stopped earlier, at chi = ``factor``: how far it is from a solution).
    ``curvature``: the least second directional derivative of S found at ``Sigma``, relative to
    that of the KL term (positive at a local minimum; nan when not checked). ``steps``: every
    attempted step of the primary branch. ``candidates``: every solution that competed.
    ``noise``: the float64 noise of ``rel_residual`` at ``Sigma`` where the solve stalled next to a
    solution with that noise above rtol (nan otherwise); ``noise_limited``: it stalled there with
    ``rel_residual <= noise`` at chi = h, and S curves upward there (``curvature > 0``): float64
    cannot tell this point from the solution (see :func:`~shallow_collapse.eos.nc1_error_bound`).
    ``Sigma_next`` ``(d, d)``: ``Sigma_new(Sigma)`` at chi = h.
    """

    Sigma: torch.Tensor
    Sigma0: torch.Tensor
    Q: torch.Tensor
    Q0: torch.Tensor
    alpha: torch.Tensor
    fbar: torch.Tensor
    fbar0: torch.Tensor
    converged: bool
    rel_residual: float
    action: float
    curvature: float
    factor: float
    evaluations: int
    seconds: float
    strategy: str
    origin: str
    steps: list[StepRecord] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    failed_factor: float | None = None
    message: str = ""
    noise: float = math.nan
    noise_limited: bool = False
    Sigma_next: torch.Tensor | None = None

    @property
    def certified(self) -> bool:
        """Converged to a point where S curves upward along every direction checked."""
        return self.converged and self.curvature > 0

    @property
    def status(self) -> str:
        """``ok`` (converged and certified), ``noise_limited`` (see the class docstring),
        ``not_converged``, ``not_minimum`` (a stationary point where S curves downward along a
        checked direction) or ``nan``."""
        if not bool(torch.isfinite(self.Q).all()) or not math.isfinite(self.rel_residual):
            return "nan"
        if not self.converged:
            return "noise_limited" if self.noise_limited else "not_converged"
        return "ok" if self.certified else "not_minimum"

    def steps_table(self) -> list[dict]:
        return [vars(s).copy() for s in self.steps]


"""The continuation: follow the annealing factors from the NNGP limit with one strategy.

``Sigma_0 = (sigw2/d) I`` is the exact solution at chi = inf; every factor warm-starts from the
last accepted solution; a failed step is retried after inserting ``sqrt(chi_prev chi)`` (``10 chi``
after chi = inf), nested up to ``max_subdivisions``; then the branch stops and says where. A step
that stalls next to a solution at the float64 noise floor of the map is not subdivided (a smaller
step in chi cannot help): at an intermediate factor it still serves as a warm start, at the last
one the branch ends there, not converged.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .evaluator import EoSEvaluator, EoSState
from ..params import SolverOptions
from .results import StepRecord
from .strategies import STRATEGIES, AndersonMemory, BranchContext


@dataclass
class Branch:
    """What one strategy reached: its last accepted (chi, state) and the attempted steps."""

    origin: str
    chi: float
    state: EoSState
    steps: list[StepRecord]
    evaluations: int
    converged: bool
    failed_factor: float | None = None
    message: str = ""
    noise: float = math.nan  # float64 noise of rel_residual where the branch stalled next to a solution


def schedule(annealing_factors, h: float, anneal: bool) -> list[float]:
    """The factors followed: ``annealing_factors`` when ``anneal``, always ending at ``h``."""
    factors = [float(f) for f in annealing_factors] if anneal else []
    if any(not (f > 0) for f in factors):
        raise ValueError(f"annealing factors must be positive, got {factors}")
    if not factors or factors[-1] != float(h):
        factors.append(float(h))
    return factors


def follow(ev: EoSEvaluator, strategy: str, factors: list[float], state0: EoSState, options: SolverOptions, *,
           origin: str, on_accept=None, log=None) -> Branch:
    """Follow ``factors`` from the NNGP limit ``state0`` with ``strategy`` (a name of
    :data:`~shallow_collapse.eos.strategies.STRATEGIES`), warm-starting every step from the last
    accepted solution and subdividing failed steps geometrically."""
    step = STRATEGIES[strategy].step
    e_start = ev.evaluations
    memory = AndersonMemory(options.anderson_memory)
    memory.add(state0)
    context = BranchContext(accepted=[(math.inf, state0)], memory=memory)  # chi = inf: the NNGP limit
    accepted = context.accepted
    steps: list[StepRecord] = []
    pending = [(f, 0) for f in factors]  # (factor, depth)
    while pending:
        chi, depth = pending.pop(0)
        prev_chi, prev = accepted[-1]
        t0, e0 = time.perf_counter(), ev.evaluations
        out = step(ev, chi, prev, context, options)
        new, rel, ok, msg = out.state, out.rel_residual, out.converged, out.message
        record = StepRecord(factor=chi, iterations=out.iterations, evaluations=ev.evaluations - e0,
                            rel_residual=rel, action=ev.action(new, chi), converged=ok,
                            seconds=time.perf_counter() - t0, accepted=ok, depth=depth, message=msg)
        steps.append(record)
        if log is not None:
            log.debug("EoS %s chi=%g depth=%d iterations=%d evaluations=%d rel_residual=%.3g action=%.10g "
                      "converged=%s", origin, chi, depth, out.iterations, record.evaluations, rel, record.action, ok)
        if ok:
            accepted.append((chi, new))
            if on_accept is not None:
                on_accept(chi, new, record)
            continue
        if out.near_solution:
            if pending:
                accepted.append((chi, new))
                continue
            message = f"chi={chi:g} not solved to rtol {options.rtol:g}: {msg}"
            return Branch(origin, chi, new, steps, ev.evaluations - e_start, False, chi, message, out.noise)
        if depth >= options.max_subdivisions:
            message = (f"step to chi={chi:g} from chi={prev_chi:g} did not converge after "
                       f"{options.max_subdivisions} subdivisions: rel_residual {rel:.3g} > rtol {options.rtol:g} "
                       f"({msg})")
            return Branch(origin, prev_chi, prev, steps, ev.evaluations - e_start, False, chi, message)
        mid = 10.0 * chi if math.isinf(prev_chi) else math.sqrt(prev_chi * chi)
        pending[:0] = [(mid, depth + 1), (chi, depth + 1)]
        memory.clear(keep_last=False)
        memory.add(prev)
    chi, state = accepted[-1]
    return Branch(origin, chi, state, steps, ev.evaluations - e_start, True)

"""Adaptive kernel of a 2-layer network: the Equations of State, their action and their solver
(docs/MATH.md sections 6 and 7; docs/SOLVER.md).

One module per concept:

- :mod:`.evaluator`: the map ``Sigma -> Sigma_new`` and the action S at one Sigma
  (:class:`EoSEvaluator`, :func:`action`);
- :mod:`.strategies`: how one continuation step is solved, a name -> :class:`Strategy` table
  (:data:`STRATEGIES`: ``minimize``, ``anderson``, ``newton-krylov``) with one step signature;
- :mod:`.continuation`: following the annealing factors from the NNGP limit, subdividing failures;
- :mod:`.certificate`: the check that a solution is a local minimum of S;
- :mod:`.solve`: :func:`solve_eos`, the least-action candidate, certified, as an :class:`EoSResult`;
- :mod:`.tolerances` (every tolerance, with its source); the solver's options are
  :class:`~shallow_collapse.params.SolverOptions`, beside the parameters of the network, so that a
  config is read without importing the solver.
"""
from __future__ import annotations

from .certificate import nc1_error_bound
from .evaluator import PAPER_EOS, EoSEvaluator, EoSState, EvaluationError, action, nngp_sigma
from ..params import SolverOptions
from .results import Candidate, EoSResult, StepRecord
from .solve import solve_eos
from .strategies import STRATEGIES

__all__ = ["STRATEGIES", "EoSEvaluator", "EoSState", "StepRecord", "Candidate", "EoSResult", "solve_eos",
           "action", "nngp_sigma", "EvaluationError", "SolverOptions", "PAPER_EOS", "nc1_error_bound"]

"""Every tolerance and budget of the EoS solver, each with where its value comes from.

"Measured" names the computation that set the value; "chosen" marks a safeguard whose exact
value was not tuned (any value of that order behaves the same on the paper's data).
"""
from __future__ import annotations

# -- minimize --------------------------------------------------------------------------------------
# L-BFGS on S hands over to Anderson polishing below this relative residual. Measured on the
# paper's data (erf and ReLU, d = 1..128): 1e-4 needs the fewest evaluations (262 over ten cells,
# against 352 at 1e-6 and 610 running L-BFGS to its own stop).
POLISH_FROM = 1e-4
# The polish is accepted only where S did not rise above the action at its start by more than this
# relative amount (chosen: above the float64 round-off of S, a sum of O(N) terms, and below any
# difference between two distinct minima seen in the tests).
POLISH_ACTION_RISE = 1e-9
# Budget, Tikhonov regularisation, mixing and stall window of the polishing Anderson run (chosen;
# the polish converges in 2-6 iterations where measured, so the budget is only a safety net).
POLISH_MAXITER = 50
POLISH_REGULARIZATION = 1e-10
POLISH_BETA = 1.0
POLISH_STALL = 10
# Secant pairs in the polishing memory: d (d + 1) / 2, the number of unknowns, at most this (chosen).
POLISH_MEMORY_MAX = 10
# Newton polish (strategies._newton_polish), run only after a first L-BFGS + Anderson round
# stalled. Forward-difference step of the Hessian in whitened coordinates (relative change of
# Sigma): the Hessian's relative error is about noise / step (noise: the float64 noise of the
# gradient relative to chi, 6e-8..8e-5 measured at ReLU sig2 = 1e-6) plus step (truncation: the
# third derivatives of the KL term are O(1) in these coordinates); 1e-3 keeps both <= 0.1, so the
# Newton iteration still contracts by about 10x per step where the noise is largest.
NEWTON_FD_STEP = 1e-3
# A step is taken only where the gradient norm falls to at most this factor of the current one
# (chosen: a halving, as ANDERSON_STALL_FACTOR; a Newton step with a Hessian 10% off divides it by
# about 10, while a step that only moves within the noise floor rarely halves it).
NEWTON_ACCEPT = 0.5
# Newton steps at most (chosen: at a 10x contraction per step, 8 steps take a residual from 1e-1
# to below rtol = 1e-8; quadratic convergence near the minimum needs fewer).
NEWTON_MAXITER = 8
# Each Hessian costs d (d + 1) / 2 evaluations; the polish runs only up to this many unknowns
# (d <= 8: 36 evaluations per step, about the cost of a first L-BFGS round there).
NEWTON_MAX_UNKNOWNS = 36
# L-BFGS-B: corrections kept and the function-evaluation budget per iteration (scipy's own
# defaults are 10 and 15000; chosen so one round costs at most ~2 evaluations per iteration).
LBFGS_CORRECTIONS = 10
LBFGS_FUN_PER_ITER = 2
LBFGS_FUN_EXTRA = 20
# An unusable trial point (EvaluationError) is answered with an action this many times |S| above
# the last usable one, so that the line search backtracks; at most this many times per run
# (chosen: each backtrack at least halves the step in More-Thuente's interpolation).
LBFGS_BACKTRACK_PENALTY = 1e3
LBFGS_MAX_BACKTRACKS = 30

# -- anderson --------------------------------------------------------------------------------------
# A residual this many times the best one restarts the history from the best point (chosen).
ANDERSON_DIVERGED = 1e3
# A stall is less than this factor of decrease of the best residual over the stall window (chosen:
# a halving; Anderson on a contraction decreases far faster where it works).
ANDERSON_STALL_FACTOR = 0.5
# An indefinite trial point is pulled halfway toward the best point at most this many times
# (2^-30 of the step: at that point the best point itself is used in effect).
ANDERSON_MAX_SHRINK = 30
# Failed evaluations (EvaluationError) tolerated per step, and the damping of the step taken
# after one (chosen).
ANDERSON_MAX_RESTARTS = 8
ANDERSON_RESTART_DAMPING = 0.25

# -- newton-krylov ---------------------------------------------------------------------------------
# The scaled residual's tolerance is rtol times this: max|Sigma| may shrink by up to that factor
# between the start of the step and the solution.
NEWTON_KRYLOV_FTOL_FACTOR = 0.5
# Residual returned to newton_krylov for an unusable point (the scaled residual is O(1) at worst
# on a usable point; chosen far above it).
NEWTON_KRYLOV_UNUSABLE = 1e6

# -- certificate -----------------------------------------------------------------------------------
# Random symmetric directions besides the scale direction (chosen), and the relative step of the
# forward difference of the gradient (chosen: truncation error ~ CERTIFY_STEP relative, round-off
# ~ eps / CERTIFY_STEP relative; tests/eos/test_certificate.py checks it against 1 - slope at d = 1).
CERTIFY_DIRECTIONS = 2
CERTIFY_STEP = 1e-4
# Curvature along directions the solver explored: a recent evaluation at relative distance in
# [CERTIFY_EXPLORED_MIN, CERTIFY_STEP] from the solution gives the same forward difference as an
# extra evaluation would, for free. The lower bound keeps the difference above round-off (erf: T
# has ~1e-12 relative noise, hence <= 1e-6 relative error in the curvature). Two directions count
# as distinct when |cos| <= CERTIFY_DISTINCT in the whitened inner product. Evaluations kept:
RECENT_EVALUATIONS = 12
CERTIFY_EXPLORED_MIN = 1e-6
CERTIFY_DISTINCT = 0.9

# -- solutions -------------------------------------------------------------------------------------
# Candidates whose Sigma differ by less than this (relative to max|Sigma|) are the same solution:
# two points within rtol = 1e-8 of one fixed point differ by at most rtol times the conditioning
# of (I - J) (measured up to ~34 at d = 1), far below it.
SAME_POINT = 1e-6
# Relative scaling of Sigma that probes the float64 noise of the map (see strategies.noise_floor):
# the exact residual moves by about NOISE_STEP |1 - J| (|J| < 1e3 where measured), below the
# noise floors measured (6e-8..8e-5 at ReLU sig2 = 1e-6).
NOISE_STEP = 1e-11

# A solve that stalls at chi = h with rel_residual <= this times the float64 noise of the map
# (measured 6e-8..8e-5 at ReLU sig2 = 1e-6, d >= 2), the noise above rtol, and S curving upward
# there, is `noise_limited`: float64 cannot resolve the residual further. The noise is estimated
# from two samples only; on the ReLU sig2 = 1e-6 balanced grid (N <= 512, d = 2) the stalls
# measured were 0.09, 1.1, 2.6, 3.4 and 4.3 times that estimate, hence 5 (the NC1 error bound
# uses max(rel_residual, noise), so a larger residual widens the bound, never hides it).
NOISE_LIMITED_FACTOR = 5.0
# ... and only where that noise is above this too: below it, the tolerance asked for is under the
# float64 resolution of a well-conditioned map (measured 2e-11 for erf, N = 64, d = 2), which is
# the caller's choice, reported as not_converged; above it, the problem itself is noisy (ReLU at
# sig2 = 1e-6: 6e-8..8e-5 measured).
NOISE_LIMITED_MIN = 1e-9

# -- numerical guards ------------------------------------------------------------------------------
# Added to a regularisation so that it is never exactly zero (a zero history).
TINY = 1e-300

"""The certificate: a local minimum of the action told from other stationary points."""
from __future__ import annotations


import torch
from scipy.optimize import brentq

from shallow_collapse import eos
from shallow_collapse.eos import tolerances
from shallow_collapse.eos.certificate import curvature

from eos_cases import PAPER, dense_derivative_1d, paper_data, t_round_off, two_well_problem


def test_certificate_tells_minima_from_the_maximum_between_them():
    ds, params = two_well_problem()
    chi = params.h
    ev = eos.EoSEvaluator(ds.X, ds.y, params)
    deriv = lambda s: dense_derivative_1d(ds.X, ds.y, s, chi, sig2=params.sig2)  # noqa: E731
    # Stationary points by bracketed roots of dS/ds: the two wells and the barrier between them.
    points = [brentq(deriv, a, b, xtol=1e-14) for a, b in ((0.05, 0.5), (0.5, 5.0), (5.0, 30.0))]
    curvatures = [curvature(ev, ev.state(torch.tensor([[s]], dtype=torch.float64)), chi) for s in points]
    assert curvatures[0] > 0 and curvatures[2] > 0 and curvatures[1] < 0


def test_curvature_is_one_minus_the_slope_of_the_map_at_d1():
    """At a stationary point the Hessian of S is (chi/2) Sigma^{-1} (I - J) Sigma^{-1}, J the
    Jacobian of Sigma -> Sigma_new (docs/MATH.md section 7): at d = 1 the relative curvature is
    1 - J exactly. J from a central difference of the map, independent of the certificate."""
    ds = paper_data(256, 1)
    result = eos.solve_eos(ds.X, ds.y, PAPER)
    ev = eos.EoSEvaluator(ds.X, ds.y, PAPER)
    s, h = float(result.Sigma), 1e-6
    new = [float(ev.sigma_new(ev.state(torch.tensor([[v]], dtype=torch.float64)).T, 500.0)) for v in (s * (1 + h), s * (1 - h))]
    slope = (new[0] - new[1]) / (2 * h * s)
    assert slope < -1  # the unstable map that made plain iteration collapse
    # Both are finite differences: the certificate's forward one with a relative step eps in
    # [CERTIFY_EXPLORED_MIN, CERTIFY_STEP] = [1e-6, 1e-4], this central one with h = 1e-6. T carries
    # a round-off of at most t_bound (t_round_off, ~N eps kappa(M): kappa ~ 2e6 here), so the
    # certificate's ratio errs by <= t_bound s / (eps chi / 2) and the slope by <= 2 Sigma_new^2
    # t_bound / chi / (2 h s) (Sigma_new = 1 / (1 + T / chi)); the forward difference's truncation
    # is ~ eps times the change of the map's slope over a relative step of 1, taken as 10 |1 - slope|
    # (x10 margin). ~2% of ~34 in all, where the fixed 2e-3 relative it replaces was below the
    # round-off part alone; a lost factor of chi/2 or a sign in the certificate is O(1).
    t_bound, _ = t_round_off(ds.X, ds.y, result.Sigma, "erf", PAPER.siga2, PAPER.sig2)
    s_new = float(ev.sigma_new(ev.state(result.Sigma).T, 500.0))
    tol = (t_bound * s / (tolerances.CERTIFY_EXPLORED_MIN * 500.0 / 2) + 2 * s_new**2 * t_bound / 500.0 / (2 * h * s)
           + tolerances.CERTIFY_STEP * 10 * abs(1 - slope))
    assert tol < 0.05 * abs(1 - slope)
    assert abs(result.curvature - (1 - slope)) <= tol

"""The certificate: a local minimum of the action told from other stationary points."""
from __future__ import annotations

import math

import torch
from scipy.optimize import brentq

from shallow_collapse import eos
from shallow_collapse.eos.certificate import curvature

from eos_cases import PAPER, dense_derivative_1d, paper_data, two_well_problem


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
    # Both are finite differences with relative steps 1e-4 (certificate) and 1e-6: agreement to
    # ~1e-3 relative of a value ~30.
    assert math.isclose(result.curvature, 1 - slope, rel_tol=2e-3)

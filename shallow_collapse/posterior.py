"""Bayesian posterior of the 2-layer network the EoS describe, sampled with Langevin dynamics.

The model (docs/MATH.md section 9): f(x) = sum_c a_c phi(w_c . x), priors w_c ~ N(0, (sigw2/d) I),
a_c ~ N(0, siga2/h), likelihood y_i ~ N(f(x_i), sig2). Its potential (minus log density) is

    U(W, a) = |f(X) - y|^2 / (2 sig2) + (d / (2 sigw2)) |W|^2 + (h / (2 siga2)) |a|^2.

:func:`langevin` runs unadjusted, preconditioned Langevin dynamics (by default in the
Leimkuhler-Matthews form, ``theta <- theta - eta P grad U + sqrt(eta P / 2) (xi_n + xi_{n+1})``)
for a batch of independent chains (float64, full batch), P one scalar per layer and chain: the
inverse of that layer's largest curvature (:func:`layer_curvatures`), so ``eta`` is dimensionless
and the scheme is stable for eta < 2. An unadjusted scheme is biased by a power of eta;
:func:`sample_posterior` runs it at three step sizes eta, eta/2, eta/4 for the same physical
time, extrapolates every reported number to eta = 0 with a straight line (:func:`richardson`)
and checks that the three points lie on it.

Chains are batched: ``X`` ``(B, N, d)`` holds the data of each chain (chains of one draw share
it), ``W`` ``(B, h, d)`` and ``a`` ``(B, h)`` their weights. Per retained sample the sampler
records only scalars that are linear in the kernel (so their chain averages are the statistics
of the posterior-averaged kernel): Tr(Sigma_W), Tr(Sigma_B) of (siga2/h) phi(X W^T) phi(X W^T)^T
(by the kernel trick, from the features), Tr of (1/h) W^T W, and the running sums of f(X) and
of (1/h) W^T W.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import metrics

__all__ = ["PosteriorTarget", "ChainStats", "layer_curvatures", "langevin", "split_rhat", "effective_size",
           "richardson", "ratio_log10", "PosteriorResult", "sample_posterior", "map_point"]


@dataclass(frozen=True)
class PosteriorTarget:
    """The potential U of the module docstring on data ``X`` ``(B, N, d)``, targets ``y`` ``(B, N)``.

    ``likelihood=False`` drops the data term (the posterior is then the prior).
    """

    X: torch.Tensor
    y: torch.Tensor
    phi: Callable
    sigw2: float
    siga2: float
    sig2: float
    likelihood: bool = True

    def features(self, W: torch.Tensor) -> torch.Tensor:
        """phi(X W^T): ``(B, N, h)``."""
        return self.phi(self.X @ W.transpose(-1, -2))

    def potential(self, W: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """U per chain ``(B,)``."""
        h, d = W.shape[-2:]
        prior = (d / (2 * self.sigw2)) * W.pow(2).sum((-1, -2)) + (h / (2 * self.siga2)) * a.pow(2).sum(-1)
        if not self.likelihood:
            return prior
        f = (self.features(W) @ a.unsqueeze(-1)).squeeze(-1)
        return prior + (f - self.y).pow(2).sum(-1) / (2 * self.sig2)

    def grad(self, W: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dU/dW, dU/da) per chain, by autograd (any activation phi)."""
        with torch.enable_grad():
            W_, a_ = W.detach().requires_grad_(True), a.detach().requires_grad_(True)
            gW, ga = torch.autograd.grad(self.potential(W_, a_).sum(), (W_, a_))
        return gW, ga

    def prior_draw(self, generators: list[torch.Generator], h: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One prior draw per chain, chain b from ``generators[b]``: ``W`` ``(B, h, d)``, ``a`` ``(B, h)``."""
        d = self.X.shape[-1]
        W = torch.stack([torch.randn(h, d, generator=g, dtype=torch.float64) for g in generators])
        a = torch.stack([torch.randn(h, generator=g, dtype=torch.float64) for g in generators])
        return (W * math.sqrt(self.sigw2 / d)).to(self.X.device), (a * math.sqrt(self.siga2 / h)).to(self.X.device)


def _elementwise_slope(phi: Callable, z: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        z_ = z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(phi(z_).sum(), z_)
    return g


@torch.no_grad()
def layer_curvatures(target: PosteriorTarget, W: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest Gauss-Newton curvature of U in each layer at (W, a), per chain ``(B,)`` each.

    a: lambda_max(F F^T) / sig2 + h / siga2 with F = phi(X W^T) (exact: U is quadratic in a).
    W: lambda_max(J J^T) / sig2 + d / sigw2 with J J^T = ((phi'(Z) diag(a)^2 phi'(Z)^T) o X X^T),
    the Gauss-Newton part of the W block. Without the likelihood only the prior terms remain.
    """
    h, d = W.shape[-2:]
    lam_W = torch.full(W.shape[:-2], d / target.sigw2, dtype=W.dtype, device=W.device)
    lam_a = torch.full(W.shape[:-2], h / target.siga2, dtype=W.dtype, device=W.device)
    if not target.likelihood:
        return lam_W, lam_a
    Z = target.X @ W.transpose(-1, -2)
    F = target.phi(Z)
    lam_a = lam_a + torch.linalg.eigvalsh(F @ F.transpose(-1, -2))[..., -1] / target.sig2
    G = _elementwise_slope(target.phi, Z) * a.unsqueeze(-2)
    JJ = (G @ G.transpose(-1, -2)) * (target.X @ target.X.transpose(-1, -2))
    lam_W = lam_W + torch.linalg.eigvalsh(JJ)[..., -1] / target.sig2
    return lam_W, lam_a


@dataclass
class ChainStats:
    """What :func:`langevin` records, per retained sample and chain (``S`` samples, ``B`` chains).

    ``tr_w``, ``tr_b``: traces of Sigma_W, Sigma_B of the sample's kernel (siga2/h) F F^T ``(S, B)``;
    ``sigma_trace``: Tr (1/h) W^T W ``(S, B)``; ``readout_norm``: |a|^2 ``(S, B)``; ``f_sum`` ``(B, N)`` and ``sigma_sum`` ``(B, d, d)``:
    sums over samples of f(X) and (1/h) W^T W; ``diverged`` ``(B,)``: a non-finite value or a
    weight beyond 1e6 times its prior scale appeared (the chain is frozen from then on).
    """

    tr_w: np.ndarray
    tr_b: np.ndarray
    sigma_trace: np.ndarray
    readout_norm: np.ndarray
    f_sum: torch.Tensor
    sigma_sum: torch.Tensor
    diverged: np.ndarray
    steps: int = 0
    seconds: float = 0.0
    W: torch.Tensor | None = field(default=None, repr=False)
    a: torch.Tensor | None = field(default=None, repr=False)

    @property
    def samples(self) -> int:
        return self.tr_w.shape[0]


def _noise(generators, shape, dtype, device):
    return torch.stack([torch.randn(shape, generator=g, dtype=dtype) for g in generators]).to(device)


@torch.no_grad()
def langevin(target: PosteriorTarget, W: torch.Tensor, a: torch.Tensor, labels: torch.Tensor, *, step: float,
             precond: tuple[torch.Tensor, torch.Tensor], burn_in: int, samples: int, thin: int,
             generators: list[torch.Generator], temperature: float = 1.0, scheme: str = "lm") -> ChainStats:
    """Run the chains from (W, a): ``burn_in`` steps, then ``samples * thin`` steps recording every
    ``thin``-th state (see :class:`ChainStats`). ``precond`` = (P_W, P_a) ``(B,)`` each; the step of
    layer l is ``step * P_l`` (P_W = 0 freezes W: the readout's exactly Gaussian conditional posterior).

    ``scheme`` ``lm`` (default): the Leimkuhler-Matthews form theta_{n+1} = theta_n - eta P grad U +
    sqrt(eta P / 2) (xi_n + xi_{n+1}), exact in every Gaussian direction for any eta < 2 (Euler
    inflates the variance of a direction of curvature 1/P by 1/(1 - eta/2)) and of second order in
    eta for smooth targets; ``euler``: Euler-Maruyama, theta - eta P grad U + sqrt(2 eta P) xi_n.
    ``temperature`` 0 is preconditioned gradient descent on U (the MAP).
    """
    B, h, d = W.shape
    P_W, P_a = (p.reshape(B, *([1] * k)) for p, k in zip(precond, (2, 1)))
    eta_W, eta_a = step * P_W, step * P_a
    # Euler-Maruyama: + sqrt(2 eta P) xi_n. Leimkuhler-Matthews: + sqrt(eta P / 2) (xi_n + xi_{n+1}).
    factor = 2.0 if scheme == "euler" else 0.5
    noise_W, noise_a = (torch.sqrt(factor * e * temperature) for e in (eta_W, eta_a))
    xi_W = _noise(generators, (h, d), W.dtype, W.device) if scheme == "lm" and temperature > 0 else 0.0
    xi_a = _noise(generators, (h,), W.dtype, W.device) if scheme == "lm" and temperature > 0 else 0.0
    scale_W, scale_a = 1e6 * math.sqrt(target.sigw2 / d), 1e6 * math.sqrt(target.siga2 / h)
    alive = torch.ones(B, dtype=torch.bool, device=W.device)
    rec = {k: [] for k in ("tr_w", "tr_b", "sigma_trace", "readout_norm")}
    f_sum = torch.zeros(target.y.shape, dtype=W.dtype, device=W.device)
    sigma_sum = torch.zeros(B, d, d, dtype=W.dtype, device=W.device)
    start = time.perf_counter()
    total = burn_in + samples * thin
    for t in range(1, total + 1):
        gW, ga = target.grad(W, a)
        W_new, a_new = W - eta_W * gW, a - eta_a * ga
        if temperature > 0:
            next_W, next_a = _noise(generators, (h, d), W.dtype, W.device), _noise(generators, (h,), W.dtype, W.device)
            W_new += noise_W * (next_W + xi_W)
            a_new += noise_a * (next_a + xi_a)
            if scheme == "lm":
                xi_W, xi_a = next_W, next_a
        ok = (torch.isfinite(W_new).all((-1, -2)) & torch.isfinite(a_new).all(-1)
              & (W_new.abs().amax((-1, -2)) < scale_W) & (a_new.abs().amax(-1) < scale_a))
        alive &= ok
        W = torch.where(alive.view(B, 1, 1), W_new, W)
        a = torch.where(alive.view(B, 1), a_new, a)
        if t > burn_in and (t - burn_in) % thin == 0:
            F = target.features(W) * math.sqrt(target.siga2 / h)  # kernel (siga2/h) F F^T
            tr_w, tr_b = metrics.feature_traces(F, labels)
            S = W.transpose(-1, -2) @ W / h
            rec["tr_w"].append(tr_w)
            rec["tr_b"].append(tr_b)
            rec["sigma_trace"].append(torch.diagonal(S, dim1=-2, dim2=-1).sum(-1))
            rec["readout_norm"].append(a.pow(2).sum(-1))
            f_sum += (F @ a.unsqueeze(-1)).squeeze(-1) / math.sqrt(target.siga2 / h)
            sigma_sum += S
    dead = ~alive.cpu().numpy()
    out = {k: torch.stack(v).cpu().numpy() if v else np.zeros((0, B)) for k, v in rec.items()}
    for v in out.values():
        v[:, dead] = np.nan
    return ChainStats(**out, f_sum=f_sum, sigma_sum=sigma_sum, diverged=dead, steps=total,
                      seconds=time.perf_counter() - start, W=W, a=a)


# -- diagnostics and estimates --------------------------------------------------------------------

def split_rhat(x: np.ndarray) -> float:
    """Split R-hat (Gelman et al., BDA3 section 11.4) of draws ``x`` ``(S, M)`` (S per chain, M chains):
    each chain is cut in two halves, R-hat = sqrt(((n-1)/n W + B/n) / W). NaN with fewer than 4 draws."""
    S = x.shape[0] // 2
    if S < 2:
        return math.nan
    halves = np.concatenate([x[:S], x[S:2 * S]], axis=1)
    within = halves.var(axis=0, ddof=1).mean()
    between = S * halves.mean(axis=0).var(ddof=1)
    if within <= 0:
        return math.nan if between > 0 else 1.0
    return float(math.sqrt(((S - 1) / S * within + between / S) / within))


def effective_size(x: np.ndarray) -> float:
    """Effective sample size of draws ``x`` ``(S, M)``: S M / (1 + 2 sum_t rho_t), rho_t the
    autocorrelation averaged over chains, summed over Geyer's initial positive pairs."""
    S, M = x.shape
    if S < 4:
        return math.nan
    y = x - x.mean(axis=0)
    var = (y**2).mean(axis=0)
    if not np.all(var > 0):  # a stuck chain: no evidence of mixing (NaN fails every ESS gate)
        return float(S * M) if not np.any(var > 0) else math.nan
    n = 1 << (2 * S - 1).bit_length()
    spec = np.fft.rfft(y, n=n, axis=0)
    acov = np.fft.irfft(spec * np.conj(spec), n=n, axis=0)[:S] / S
    rho = (acov / var).mean(axis=1)
    tau = -1.0
    for k in range(0, S - 1, 2):
        pair = rho[k] + rho[k + 1]
        if pair <= 0:
            break
        tau += 2 * pair
    return float(S * M / max(tau, 1e-12))


def ratio_log10(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """log10(mean(num) / mean(den)) over independent replicates ``(M,)`` and its standard error
    by the delta method (the covariance of numerator and denominator included)."""
    M = len(num)
    mn, md = num.mean(), den.mean()
    value = math.log10(mn / md) if mn > 0 and md > 0 else math.nan
    if M < 2:
        return value, math.nan
    cov = np.cov(np.stack([num / mn, den / md]), ddof=1)
    var = (cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]) / M
    return value, math.sqrt(max(var, 0.0)) / math.log(10)


def mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean of independent replicates ``(M,)`` and its standard error."""
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


def richardson(steps, values, errors) -> tuple[float, float, float]:
    """Extrapolate ``values`` measured at ``steps`` (independent errors ``errors``) to step 0 with
    a weighted least-squares line v = v0 + b step. Returns (v0, its standard error, z), z =
    sqrt(chi^2 / dof) of the fit (three steps: one dof, z = |second difference| / its standard
    error): large z says the bias is not linear in the step over this range (NaN for two steps)."""
    s, v, e = (np.asarray(x, dtype=float) for x in (steps, values, errors))
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(e)) and np.all(e > 0)):
        return math.nan, math.nan, math.nan
    A = np.stack([np.ones_like(s), s], axis=1)
    w = 1.0 / e**2
    cov = np.linalg.inv(A.T @ (A * w[:, None]))
    coef = cov @ (A.T @ (w * v))
    z = math.nan
    if len(s) >= 3:
        resid = v - A @ coef
        z = float(math.sqrt(np.sum(w * resid**2) / (len(s) - 2)))  # sqrt(chi2 / dof)
    return float(coef[0]), float(math.sqrt(cov[0, 0])), z


def jackknife_mse(f_means: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """MSE of the chain-averaged f (``f_means`` ``(M, N)``, one row per chain) against ``y``
    ``(N,)``, with its jackknife standard error over chains."""
    M = len(f_means)
    value = float(((f_means.mean(0) - y) ** 2).mean())
    if M < 2:
        return value, math.nan
    loo = np.array([((np.delete(f_means, m, 0).mean(0) - y) ** 2).mean() for m in range(M)])
    return value, float(math.sqrt((M - 1) / M * ((loo - loo.mean()) ** 2).sum()))


# The numbers each step level reports (value, standard error), extrapolated to step 0.
ESTIMATES = ("log10_nc1", "log10_sample_nc1", "mse", "sigma_trace")


def level_estimates(stats: ChainStats, chains: slice, y: np.ndarray) -> dict:
    """The estimates of :data:`ESTIMATES` and the diagnostics of the chains ``chains`` at one step level.

    ``log10_nc1``: NC1 of the posterior-averaged kernel (ratio of chain-averaged traces, delta-method
    SE over chains); ``log10_sample_nc1``: log10 of the mean NC1 of single samples; ``mse``: of the
    posterior mean of f; ``sigma_trace``: Tr of the posterior mean of (1/h) W^T W. ``rhat``: the
    largest split R-hat and ``ess`` the smallest effective size over the per-sample series tr_w,
    tr_b, NC1 and Tr (1/h) W^T W.
    """
    tw, tb, st = (getattr(stats, k)[:, chains] for k in ("tr_w", "tr_b", "sigma_trace"))
    nc1 = tw / tb
    out = {"log10_nc1": ratio_log10(tw.mean(0), tb.mean(0))}
    m, se = mean_se(nc1.mean(0))
    out["log10_sample_nc1"] = (metrics.log10(m), se / (m * math.log(10)) if m > 0 else math.nan)
    f_means = (stats.f_sum[chains] / stats.samples).cpu().numpy()
    out["mse"] = jackknife_mse(f_means, y)
    out["sigma_trace"] = mean_se(st.mean(0))
    series = (tw, tb, nc1, st)
    finite = all(np.all(np.isfinite(x)) for x in series)
    out["rhat"] = max(split_rhat(x) for x in series) if finite else math.nan
    out["ess"] = min(effective_size(x) for x in series) if finite else math.nan
    return out


@dataclass
class PosteriorResult:
    """One draw's posterior estimate: ``estimates[name] = (value, se)`` at step 0 (Richardson),
    ``levels`` the per-level estimates (largest step first), ``steps`` the step sizes, ``z`` the
    standardised misfit of the extrapolation of ``log10_nc1`` (the step-size check), ``status`` ok /
    not_converged / diverged with ``message``, ``sigma`` ``(d, d)`` the posterior mean of
    (1/h) W^T W at the smallest step, ``fbar`` ``(N,)`` the posterior mean of f there."""

    estimates: dict
    levels: list
    steps: list
    z: float
    rhat: float
    ess: float
    status: str
    message: str
    sigma: np.ndarray
    fbar: np.ndarray
    total_steps: int = 0
    seconds: float = 0.0


def _status(levels: list[dict], z: float, diverged: bool, rhat_max: float, ess_min: float, z_max: float,
            value: float = 0.0):
    if diverged:
        return "diverged", "a chain diverged (non-finite or exploding weights); lower langevin_step"
    if not math.isfinite(value):
        return "nan", "the step-0 estimate of log10 NC1 is not finite"
    rhat = max(lv["rhat"] for lv in levels)
    ess = min(lv["ess"] for lv in levels)
    if not (rhat <= rhat_max):
        return "not_converged", f"split R-hat {rhat:.3g} > {rhat_max:g}: more burn-in or samples"
    if not (ess >= ess_min):
        return "not_converged", f"effective sample size {ess:.3g} < {ess_min:g}: more samples or thinning"
    if len(levels) < 3:
        return "not_converged", f"no step-size check with {len(levels)} step sizes (3 or more are needed)"
    if not (z <= z_max):
        return "not_converged", (f"step-size check failed: the estimates are not linear in the step "
                                 f"(misfit {z:.3g} standard errors > {z_max:g}); lower langevin_step")
    return "ok", ""


Z_MAX = 3.0  # the largest standardised misfit of the step-0 extrapolation a converged cell may show


def sample_posterior(target: PosteriorTarget, labels: torch.Tensor, h: int, params, seeds: list[int],
                     groups: int = 1) -> list[PosteriorResult]:
    """Sample the posterior of ``target`` with ``params`` (:class:`~shallow_collapse.params.LangevinParams`).

    ``target`` holds ``groups * params.chains`` chains: group g (one data draw) is chains
    ``g*M .. g*M+M-1``, chain b starts from a prior draw of seed ``seeds[b]``. Schedule: a pilot of
    ``burn_in`` steps at the preconditioner of the prior draw; the preconditioner is then fixed at
    the inverse layer curvatures of the pilot's end state, and each level k = 0..levels-1 runs from
    there at step ``step / 2^k`` for the same physical time (``burn_in * 2^k`` steps of burn-in,
    ``samples`` samples every ``thin * 2^k`` steps). Returns one result per group.
    """
    M = params.chains
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    W, a = target.prior_draw(generators, h)
    start = time.perf_counter()
    lam = layer_curvatures(target, W, a)
    pilot = langevin(target, W, a, labels, step=params.step, precond=tuple(1 / l for l in lam),
                     burn_in=params.burn_in, samples=0, thin=1, generators=generators)
    lam_end = layer_curvatures(target, pilot.W, pilot.a)
    precond = tuple(1 / torch.nan_to_num(torch.maximum(l0, l1), nan=math.inf) for l0, l1 in zip(lam, lam_end))
    steps, runs = [], []
    for k in range(params.levels):
        steps.append(params.step / 2**k)
        runs.append(langevin(target, pilot.W, pilot.a, labels, step=steps[-1], precond=precond,
                             burn_in=params.burn_in * 2**k, samples=params.samples, thin=params.thin * 2**k,
                             generators=generators))
    seconds = time.perf_counter() - start
    total = pilot.steps + sum(r.steps for r in runs)
    y = target.y.cpu().numpy()
    results = []
    for g in range(groups):
        chains = slice(g * M, (g + 1) * M)
        levels = [level_estimates(r, chains, y[g * M]) for r in runs]
        estimates, misfits = {}, {}
        for name in ESTIMATES:
            v0, se0, misfits[name] = richardson(steps, [lv[name][0] for lv in levels],
                                                [lv[name][1] for lv in levels])
            estimates[name] = (v0, se0)
        z = misfits["log10_nc1"]
        diverged = bool(pilot.diverged[chains].any() or any(r.diverged[chains].any() for r in runs))
        status, message = _status(levels, z, diverged, params.rhat_max, params.ess_min, Z_MAX,
                                  estimates["log10_nc1"][0])
        last = runs[-1]
        results.append(PosteriorResult(
            estimates=estimates, levels=levels, steps=steps, z=z, rhat=max(lv["rhat"] for lv in levels),
            ess=min(lv["ess"] for lv in levels), status=status, message=message,
            sigma=(last.sigma_sum[chains].sum(0) / (M * last.samples)).cpu().numpy(),
            fbar=(last.f_sum[chains].sum(0) / (M * last.samples)).cpu().numpy(),
            total_steps=total, seconds=seconds / groups))
    return results


def map_point(target: PosteriorTarget, labels: torch.Tensor, h: int, seeds: list[int], *, step: float,
              steps: int) -> dict:
    """The MAP network reached by preconditioned gradient descent on U (Langevin without noise;
    what SGD with weight decay equal to the priors converges to) from the prior draws of ``seeds``.

    Returns per chain ``(B,)``: ``log10_nc1`` of its kernel, ``mse``, ``grad_ratio`` (preconditioned
    gradient norm at the end over that at the start) and ``diverged``.
    """
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    W, a = target.prior_draw(generators, h)
    precond = tuple(1 / l for l in layer_curvatures(target, W, a))

    def grad_norm(W, a):
        gW, ga = target.grad(W, a)
        return (precond[0] * gW.pow(2).sum((-1, -2)) + precond[1] * ga.pow(2).sum(-1)).sqrt()

    g0 = grad_norm(W, a)
    run = langevin(target, W, a, labels, step=step, precond=precond, burn_in=steps, samples=0, thin=1,
                   generators=generators, temperature=0.0)
    W, a = run.W, run.a
    F = target.features(W)
    tw, tb = metrics.feature_traces(F, labels)
    f = (F @ a.unsqueeze(-1)).squeeze(-1)
    nc1 = (tw / tb).cpu().numpy()
    return {"log10_nc1": np.array([metrics.log10(float(v)) for v in nc1]),
            "mse": ((f - target.y) ** 2).mean(-1).cpu().numpy(),
            "grad_ratio": (grad_norm(W, a) / g0).cpu().numpy(), "diverged": run.diverged}

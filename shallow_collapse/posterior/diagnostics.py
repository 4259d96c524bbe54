"""Convergence diagnostics and estimates from independent chains: split R-hat, effective sample
size, and log10 of a ratio of chain means with its standard error."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["split_rhat", "effective_size", "ratio_log10"]


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
    autocorrelation averaged over chains, summed over Geyer's initial positive pairs. NaN when a
    chain never moved while another did (no evidence of mixing)."""
    S, M = x.shape
    if S < 4:
        return math.nan
    y = x - x.mean(axis=0)
    var = (y**2).mean(axis=0)
    if not np.all(var > 0):
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
    """log10(mean(num) / mean(den)) over independent replicates ``(M,)`` (one per chain) and its
    standard error by the delta method (the covariance of numerator and denominator included)."""
    M = len(num)
    mn, md = num.mean(), den.mean()
    value = math.log10(mn / md) if mn > 0 and md > 0 else math.nan
    if M < 2 or not math.isfinite(value):
        return value, math.nan
    cov = np.cov(np.stack([num / mn, den / md]), ddof=1)
    var = (cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]) / M
    return value, math.sqrt(max(var, 0.0)) / math.log(10)

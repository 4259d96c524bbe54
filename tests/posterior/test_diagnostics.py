"""The chains' diagnostics from arviz-stats (rank R-hat, bulk / tail ESS, MCSE of the mean) and the
traces file ArviZ opens: each checked against a computation made here (a rank-normalised split
R-hat written from Vehtari et al. 2021, the known ESS of iid and AR(1) chains, sd / sqrt(ESS)).

The Monte Carlo tolerances come from the spread of each estimate over independent seeds, measured
once with this module's functions and quoted in the comments (200 seeds unless said otherwise);
each test runs one fixed seed, so each bound is several of those standard deviations wide."""
from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy import stats

from shallow_collapse.posterior.diagnostics import (
    TAIL_PROB, ess_bulk, ess_tail, load_traces, mcse_mean, rhat, save_traces)

S, M = 1000, 4


def _ar1(rng, rho, S, M):
    """AR(1) chains ``(S, M)`` with unit stationary variance, started in the stationary law."""
    x = np.empty((S, M))
    x[0] = rng.standard_normal(M)
    noise = math.sqrt(1 - rho**2) * rng.standard_normal((S, M))
    for t in range(1, S):
        x[t] = rho * x[t - 1] + noise[t]
    return x


def _classic_rhat(chains):
    """R-hat of chains ``(n, K)``: sqrt(((n-1)/n W + B/n) / W), B = n var(chain means), W = mean
    chain variance (Gelman et al., BDA3 11.4)."""
    n = chains.shape[0]
    W = chains.var(axis=0, ddof=1).mean()
    B = n * chains.mean(axis=0).var(ddof=1)
    return math.sqrt(((n - 1) / n * W + B / n) / W)


def _reference_rank_rhat(x):
    """Rank-normalised split R-hat of ``(S, M)`` draws, S even, from Vehtari et al. (2021),
    section 4: chains cut in halves; pooled ranks r mapped to z = Phi^-1((r - 3/8) / (N + 1/4));
    the classic R-hat of z (bulk) and of the folded draws |x - median| so mapped (tail); the max."""
    half = x.shape[0] // 2
    split = np.concatenate([x[:half], x[half:]], axis=1)

    def z(a):
        r = stats.rankdata(a, method="average").reshape(a.shape)
        return stats.norm.ppf((r - 3 / 8) / (a.size + 1 / 4))

    return max(_classic_rhat(z(split)), _classic_rhat(z(np.abs(split - np.median(split)))))


def test_rhat_is_the_rank_normalised_folded_split_rhat():
    """The wrapper hands ArviZ chains on the right axis: its value is the reference's, to rounding,
    on mixed chains, on chains around different means and on chains of different spreads."""
    rng = np.random.default_rng(0)
    iid = rng.standard_normal((S, M))
    for x in (iid, iid + np.arange(M), iid * np.array([3.0, 1.0, 1.0, 1.0])):
        assert rhat(x) == pytest.approx(_reference_rank_rhat(x), rel=1e-12)


def test_iid_chains_look_converged():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((S, M))
    # rhat ~ 1 + (B/W - 1) / (2n), B/W ~ chi2_7 / 7 over 8 half-chains of n = 500: sd ~ 5e-4
    # (seen: mean 1.0003, sd 4.8e-4, max 1.0024 over 200 seeds); 0.005 is ~10 sd
    assert abs(rhat(x) - 1) < 0.005
    # ESS of iid draws is S M; its estimate spreads by sd 166 (4.2%) for bulk and 155 (4.0%) for
    # tail, means 3961 and 3850 (the tail's indicators lose a little); +-20% is ~5 sd
    assert ess_bulk(x) == pytest.approx(S * M, rel=0.20)
    assert ess_tail(x) == pytest.approx(S * M, rel=0.20)
    # MCSE of the mean of iid draws: sd / sqrt(S M); the ratio spreads by sd 2.1%: +-10% is ~5 sd
    assert mcse_mean(x) == pytest.approx(x.std(ddof=1) / math.sqrt(S * M), rel=0.10)


def test_ar1_chains_have_the_known_effective_size():
    """AR(1) with coefficient rho: integrated autocorrelation time (1 + rho) / (1 - rho), so the
    ESS of the mean (and of the bulk: the ranks of Gaussian draws map back to nearly the draws)
    is S M (1 - rho) / (1 + rho), here 1684 of 32000."""
    rho, S_ar, M_ar = 0.9, 4000, 8
    x = _ar1(np.random.default_rng(2), rho, S_ar, M_ar)
    ess = S_ar * M_ar * (1 - rho) / (1 + rho)
    # ess_bulk / ess: mean 1.003, sd 0.068, range 0.81-1.18 over 200 seeds; +-25% is ~3.7 sd
    assert ess_bulk(x) == pytest.approx(ess, rel=0.25)
    # mcse / (sd / sqrt(ess)): mean 1.001, sd 0.035, range 0.92-1.11; +-15% is ~4.3 sd
    assert mcse_mean(x) == pytest.approx(x.std(ddof=1) / math.sqrt(ess), rel=0.15)
    assert abs(rhat(x) - 1) < 0.01  # mixed, only slowly: converged by the 1.01 rule


def test_chains_around_different_means_are_not_converged():
    x = np.random.default_rng(3).standard_normal((S, M)) + np.arange(M)
    # classic R-hat of unit-variance chains with means 0..3: sqrt(1 + var(means)) = sqrt(1 + 5/3)
    # = 1.63; the normal scores of the ranks compress that to ~1.51 (min 1.509 over 20 seeds)
    assert _classic_rhat(x) == pytest.approx(math.sqrt(1 + 5 / 3), rel=0.02)
    assert rhat(x) > 1.4
    assert ess_bulk(x) < 0.05 * S * M  # the chains' offsets are one long-lived "autocorrelation"


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_a_stuck_chain_is_never_converged(q):
    """One chain stuck at a constant while three move: at the 25% and 75% quantiles of the others
    ArviZ's own rank R-hat is only ~1.10 (and ~1.52 elsewhere), so the stuck chain is decided here:
    R-hat +inf, ESS 0, MCSE +inf, which survive max / min over series and any threshold."""
    x = np.random.default_rng(4).standard_normal((S, M))
    x[:, 0] = np.quantile(x[:, 1:], q)
    assert rhat(x) == math.inf
    assert ess_bulk(x) == 0.0 and ess_tail(x) == 0.0
    assert mcse_mean(x) == math.inf
    assert max(1.0, rhat(x)) == math.inf and not rhat(x) <= 1.01


def test_every_chain_stuck_at_its_own_value_is_not_converged():
    x = np.tile(np.arange(M, dtype=float), (S, 1))
    assert rhat(x) == math.inf and ess_bulk(x) == 0.0


def test_a_constant_series_is_its_own_mean():
    """Every draw equal: R-hat 1, ESS S M, MCSE 0 (ArviZ itself gives 0/0 = NaN for the R-hat)."""
    x = np.full((S, M), 2.5)
    assert rhat(x) == 1.0
    assert ess_bulk(x) == ess_tail(x) == S * M
    assert mcse_mean(x) == 0.0


def test_a_difference_in_spread_is_caught_by_the_folded_rhat_and_the_tail_ess():
    """Chains with equal means, one with 3 times the sd: the classic split R-hat (and the bulk,
    rank-normalised one) see nothing; ArviZ's method='rank' takes the max with the folded R-hat,
    which does, and the tail ESS collapses while the bulk ESS does not."""
    from arviz_stats.base import array_stats

    x = np.random.default_rng(5).standard_normal((S, M))
    x[:, 0] *= 3
    # classic split R-hat (BDA3 11.4, computed here): mean 0.99991, sd 6.2e-4, max 1.0020 over 100 seeds
    halves = np.concatenate([x[: S // 2], x[S // 2:]], axis=1)
    within, between = halves.var(0, ddof=1).mean(), (S // 2) * halves.mean(0).var(ddof=1)
    n = S // 2
    assert math.sqrt(((n - 1) / n * within + between / n) / within) < 1.01
    bulk_only = float(array_stats.rhat(x.T, chain_axis=0, draw_axis=1, method="z_scale"))
    folded = float(array_stats.rhat(x.T, chain_axis=0, draw_axis=1, method="folded"))
    assert bulk_only < 1.01 < folded
    # rank R-hat: mean 1.146, sd 0.011, min 1.126 over 100 seeds: > 1.1 is ~4 sd in
    assert rhat(x) == pytest.approx(folded, rel=1e-12) and rhat(x) > 1.1
    # tail ESS: mean 34, max 43.5 over 100 seeds, against a bulk ESS of 3924 (sd 200)
    assert ess_tail(x) < 0.05 * ess_bulk(x)
    assert ess_bulk(x) == pytest.approx(S * M, rel=0.25)
    assert TAIL_PROB == (0.05, 0.95)


@pytest.mark.parametrize("x", [
    np.zeros((0, 4)), np.zeros((3, 4)), np.arange(12.0).reshape(3, 4), np.zeros((1000, 0)),
], ids=["no draws", "3 constant draws", "3 draws", "no chains"])
def test_too_few_draws_give_nan(x):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN quietly: no RuntimeWarning either
        for f in (rhat, ess_bulk, ess_tail, mcse_mean):
            assert math.isnan(f(x))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_draw_gives_nan(bad):
    x = np.random.default_rng(6).standard_normal((S, M))
    x[10, 2] = bad  # ArviZ alone gives a finite rank R-hat and ESS for an infinite draw
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for f in (rhat, ess_bulk, ess_tail, mcse_mean):
            assert math.isnan(f(x))


def test_one_chain_has_an_effective_size_but_no_rhat():
    x = np.random.default_rng(7).standard_normal((S, 1))
    assert math.isnan(rhat(x))  # ArviZ compares chains: it needs two
    assert ess_bulk(x) == pytest.approx(S, rel=0.25)
    assert mcse_mean(x) == pytest.approx(x.std(ddof=1) / math.sqrt(S), rel=0.15)
    assert isinstance(ess_bulk(x), float) and isinstance(rhat(np.ones((4, 2))), float)


def test_draws_not_shaped_draws_by_chains_are_refused():
    with pytest.raises(ValueError, match="S draws, M chains"):
        rhat(np.zeros(100))


def test_traces_round_trip_and_open_in_arviz(tmp_path):
    import arviz_base
    import arviz_stats
    import xarray

    rng = np.random.default_rng(8)
    series = {"tr_w": rng.standard_normal((50, 3)), "tr_b": rng.gamma(2.0, size=(50, 3)) * 1e-310}
    attrs = {"N": 16, "d": 2, "activation": "erf", "seeds": [3, 4, 5], "sig2": 0.05, "whiten": True,
             "chains": np.int64(3), "eps": np.array(1e-3), "kinds": ("nngp", "ak"), "flags": [True, False]}
    path = tmp_path / "traces.nc"
    save_traces(path, series, attrs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traces.nc"]  # no partial file left

    tree = load_traces(path)
    assert isinstance(tree, xarray.DataTree)
    for name, x in series.items():
        var = tree["posterior"][name]
        assert var.dims == ("chain", "draw") and var.dtype == np.float64
        assert np.array_equal(var.values.T, x)  # bit for bit, the subnormal scale included
    assert list(tree["posterior"]["chain"].values) == [0, 1, 2]
    assert list(tree["posterior"]["draw"].values) == list(range(50))
    assert tree.attrs["N"] == 16 and tree.attrs["d"] == 2 and tree.attrs["activation"] == "erf"
    assert list(tree.attrs["seeds"]) == [3, 4, 5] and tree.attrs["sig2"] == 0.05
    assert tree.attrs["whiten"] == 1 and list(tree.attrs["flags"]) == [1, 0]  # netCDF has no boolean
    assert tree.attrs["chains"] == 3 and tree.attrs["eps"] == 1e-3
    assert list(tree.attrs["kinds"]) == ["nngp", "ak"]
    assert tree["posterior"].attrs["creation_library"] == "ArviZ"

    # ArviZ opens the file itself, and its DataTree interface computes the same diagnostics
    with arviz_base.convert_to_datatree(str(path)) as opened:
        assert np.array_equal(opened["posterior"]["tr_w"].values.T, series["tr_w"])
        assert float(arviz_stats.rhat(opened)["tr_w"]) == pytest.approx(rhat(series["tr_w"]), rel=1e-12)
        bulk = arviz_stats.ess(opened, method="bulk")
        assert float(bulk["tr_b"]) == pytest.approx(ess_bulk(series["tr_b"]), rel=1e-12)
    with xarray.open_datatree(path) as opened:
        assert opened.attrs["activation"] == "erf"

    save_traces(path, {"tr_w": np.zeros((2, 5))})  # overwrites: more chains than draws is fine
    assert load_traces(path)["posterior"]["tr_w"].shape == (5, 2) and "N" not in load_traces(path).attrs


@pytest.mark.parametrize("series, attrs, error", [
    ({}, None, ValueError),
    ({"a": np.zeros((10, 2)), "b": np.zeros((10, 3))}, None, ValueError),
    ({"a": np.zeros(10)}, None, ValueError),
    ({"draw": np.zeros((10, 2))}, None, ValueError),
    ({"a": np.zeros((10, 2))}, {"k": None}, TypeError),
    ({"a": np.zeros((10, 2))}, {"k": {"nested": 1}}, TypeError),
    ({"a": np.zeros((10, 2))}, {"k": [1, "mixed"]}, TypeError),
    ({"a": np.zeros((10, 2))}, {"k": [[1, 2], [3, 4]]}, TypeError),
    ({"a": np.zeros((10, 2))}, {"k": [1, None]}, TypeError),
    ({"a": np.zeros((10, 2))}, {"k": 2**64}, TypeError),
], ids=["empty", "shapes differ", "1-D", "name draw", "None", "dict", "mixed list", "nested list",
        "None in a list", "int beyond int64"])
def test_save_traces_refuses_what_it_cannot_write(tmp_path, series, attrs, error):
    with pytest.raises(error):
        save_traces(tmp_path / "t.nc", series, attrs)
    assert list(tmp_path.iterdir()) == []


def test_importing_the_module_does_not_import_arviz():
    """arviz-stats, arviz-base and xarray take over a second to import: the module loads them on
    its first diagnostic or trace call, not at import."""
    code = ("import sys, shallow_collapse.posterior.diagnostics; "
            "print(sorted(m for m in ('arviz_stats', 'arviz_base', 'xarray', 'h5netcdf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_traces_are_written_while_dask_names_a_distributed_scheduler_with_no_client(tmp_path):
    """After an ``executor: dask`` sweep a process may keep dask's scheduler set to
    dask.distributed with no client; xarray's writer asks dask for it, and the write must not fail."""
    dask = pytest.importorskip("dask")
    x = np.random.default_rng(0).standard_normal((8, 2))
    with dask.config.set(scheduler="dask.distributed"):
        save_traces(tmp_path / "t.nc", {"a": x})
    np.testing.assert_array_equal(load_traces(tmp_path / "t.nc")["posterior"]["a"].values.T, x)

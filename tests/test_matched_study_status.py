"""study_table: a noise_limited AK cell (certified, with an NC1 error bound) is usable like ok."""
from shallow_collapse.matched_study import study_table


def _point(ak_status):
    lang = {"method": "langevin", "N": 64, "in_features": 2, "repeat": 0, "log10_nc1": -1.0,
            "se_log10_nc1": 0.01, "status": "ok"}
    ak = {"method": "ak", "N": 64, "in_features": 2, "repeat": 0, "log10_nc1": -1.5, "status": ak_status}
    return {"h": 64, "sig2": 1e-6, "rows": {"fcn_bulk_balanced": [lang], "adaptive_kernels_bulk_balanced": [ak]}}


def test_noise_limited_ak_is_usable_and_not_converged_is_not():
    # The AK lies 50 standard errors from the sampler: flagged only when its answer is usable.
    assert study_table([_point("ok")])[0]["ak_outside"]
    assert study_table([_point("noise_limited")])[0]["ak_outside"]
    assert not study_table([_point("not_converged")])[0]["ak_outside"]

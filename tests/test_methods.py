"""The registry of sweep methods: every record is complete and the layers above read it."""
from __future__ import annotations

from shallow_collapse.config import SCHEMA
from shallow_collapse.jobs import JOBS
from shallow_collapse.methods import METHODS, ROWS
from shallow_collapse.paper import PAPER_SWEEPS
from shallow_collapse.plots.captions import caption

SCOPES = {spec.scope for spec in SCHEMA.values()}


def test_every_method_makes_its_two_sweep_jobs_and_owns_its_first_row():
    assert len({m.prefix for m in METHODS}) == len(METHODS)
    for m in METHODS:
        assert {f"{m.prefix}_bulk_balanced", f"{m.prefix}_bulk_imbalanced"} <= set(JOBS), m.prefix
        assert m.reports[0] in {row.name for row in m.owns}, m.prefix
        assert set(m.scopes) <= SCOPES and set(m.memory_keys) <= set(SCHEMA), m.prefix
        assert JOBS[f"{m.prefix}_bulk_balanced"].target.keywords["methods"] == m.reports


def test_every_reported_row_is_owned_once_and_captioned():
    owned = [row.name for m in METHODS for row in m.owns]
    assert len(owned) == len(set(owned)) == len(ROWS)
    for m in METHODS:
        assert set(m.reports) <= set(ROWS), m.prefix
    for row in ROWS.values():
        assert set(row.scopes) <= SCOPES and set(row.versus) <= set(ROWS), row.name
        assert caption(f"{row.name}_nc1").startswith(row.label), row.name


def test_the_paper_runs_the_methods_marked_for_it_in_registry_order():
    assert PAPER_SWEEPS["balanced"] == [f"{m.prefix}_bulk_balanced" for m in METHODS if m.paper]
    assert [job.removesuffix("_bulk_balanced") for job in PAPER_SWEEPS["balanced"]] == [
        "limiting_kernels", "fcn", "adaptive_kernels"]

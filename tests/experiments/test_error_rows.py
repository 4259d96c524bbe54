"""experiments.error_rows: the rows every method writes for a cell whose computation raised."""
import math

from shallow_collapse.experiments import error_rows


def test_one_error_row_per_method_and_repeat_with_a_one_line_message():
    rows = error_rows(["ak", "nngp"], [0, 2], RuntimeError("out of\nmemory"), network_seed=[5, 6], device="cpu")
    assert [(r["method"], r["repeat"], r["network_seed"]) for r in rows] == [("ak", 0, 5), ("ak", 2, 6),
                                                                             ("nngp", 0, 5), ("nngp", 2, 6)]
    for row in rows:
        assert row["status"] == "error" and math.isnan(row["nc1"]) and row["device"] == "cpu"
        assert row["message"] == "RuntimeError: out of memory"


def test_the_message_is_cut_at_300_characters():
    (row,) = error_rows(["fcn"], [0], ValueError("x" * 1000))
    assert len(row["message"]) == 300 and row["message"].startswith("ValueError: xxx")

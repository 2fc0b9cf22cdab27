"""The one-standard-error rule that picks the teacher's config, in the search and at full budget."""

from __future__ import annotations

import pytest

from shrinkflow.search.choose import smallest_near_best, standard_error


def found(accuracy: float, params: float, rows: int = 270) -> dict[str, float]:
    return {"val_accuracy": accuracy, "params": params, "val_rows": float(rows)}


def test_the_standard_error_is_never_zero_and_shrinks_with_rows():
    assert 0 < standard_error(1.0, 270) < standard_error(1.0, 50)
    assert standard_error(0.99, 10_000) < 0.0015
    # digits: one of 270 validation rows is within one standard error of 100 %, two are not
    assert 1 / 270 < standard_error(1.0, 270) < 2 / 270


def test_a_smaller_config_within_one_standard_error_wins():
    reference, smaller = found(1.0, 76_000), found(269 / 270, 38_000)
    assert smallest_near_best([reference, smaller], 1.0, incumbent=0) == 1
    assert smallest_near_best([reference, found(268 / 270, 38_000)], 1.0, incumbent=0) == 0
    assert smallest_near_best([reference, smaller], 0.0, incumbent=0) == 0  # strict


def test_the_incumbent_keeps_its_place_against_noise_of_the_same_size():
    reference, luckier = found(265 / 270, 76_000), found(266 / 270, 76_000)
    assert smallest_near_best([reference, luckier], 1.0, incumbent=0) == 0
    # without an incumbent, the more accurate of two equals wins
    assert smallest_near_best([reference, luckier], 1.0) == 1
    # a gain beyond the tolerance replaces it
    assert smallest_near_best([reference, found(270 / 270, 76_000)], 1.0, incumbent=0) == 1


def test_latency_breaks_a_tie_in_size_and_unknown_rows_make_the_rule_strict():
    fast = {**found(0.98, 1_000), "latency_ms": 0.1}
    slow = {**found(0.98, 1_000), "latency_ms": 0.3}
    assert smallest_near_best([slow, fast], 1.0) == 1
    without_rows = [{"val_accuracy": 0.99, "params": 10.0}, {"val_accuracy": 0.98, "params": 1.0}]
    assert smallest_near_best(without_rows, 5.0) == 0


@pytest.mark.parametrize("accuracy", [0.0, 0.5, 1.0])
def test_the_standard_error_is_finite_at_the_extremes(accuracy):
    assert 0 < standard_error(accuracy, 10) < 0.5

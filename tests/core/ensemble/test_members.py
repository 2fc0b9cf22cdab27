"""shrinkflow.ensemble.members: the best on validation, one per lineage, within a total size."""

from __future__ import annotations

import pytest

from shrinkflow.ensemble import EnsembleError, pick_members
from shrinkflow.errors import UserError


def row(name: str, lineage: str, val_accuracy: float, size: int, accuracy: float = 0.5) -> dict:
    # `accuracy` (test) is deliberately at odds with val_accuracy: the choice must not read it
    return {"candidate": name, "lineage": lineage, "val_accuracy": val_accuracy,
            "size_bytes": size, "accuracy": accuracy}


ROWS = [
    row("teacher", "teacher", 0.99, 80_000, accuracy=0.1),
    row("student-kd", "student-kd", 0.97, 20_000, accuracy=0.99),
    row("student-kd-fp16", "student-kd", 0.97, 10_000, accuracy=0.99),
    row("student-kd-int8_static", "student-kd", 0.98, 5_000, accuracy=0.99),
    row("pruned", "pruned", 0.96, 30_000),
    row("mlp", "mlp", 0.90, 2_000),
]


def test_pick_members__takes_the_top_k_by_validation_one_per_lineage():
    # given three variants of student-kd / when the top 3 are picked
    pick = pick_members(ROWS, top_k=3, max_total_bytes=None)
    # then the best student-kd variant stands for its lineage, and test accuracy plays no part
    assert pick.names == ["teacher", "student-kd-int8_static", "pruned"], pick.reason
    assert "one per lineage" in pick.reason


def test_pick_members__equal_validation_accuracy_prefers_the_smaller_file_then_the_name():
    rows = [row("b", "b", 0.9, 100), row("a", "a", 0.9, 100), row("big", "big", 0.9, 900)]
    assert pick_members(rows, top_k=2, max_total_bytes=None).names == ["a", "b"]
    variants = [row("s", "s", 0.9, 500), row("s-int8", "s", 0.9, 100), row("t", "t", 0.8, 1)]
    assert pick_members(variants, top_k=2, max_total_bytes=None).names == ["s-int8", "t"], (
        "among equally accurate variants of one lineage the smaller file should stand for it")


def test_pick_members__skips_candidates_that_would_exceed_the_size_budget():
    # given a budget the teacher alone nearly fills
    pick = pick_members(ROWS, top_k=3, max_total_bytes=40_000)
    # then the teacher is skipped, and the next best that fit are taken
    assert pick.names == ["student-kd-int8_static", "pruned", "mlp"], pick.reason
    assert "37000 bytes of max_total_bytes=40000" in pick.reason


def test_pick_members__fewer_than_two_possible_returns_no_names_and_says_why():
    # given one lineage only
    variants = [r for r in ROWS if r["lineage"] == "student-kd"]
    pick = pick_members(variants, top_k=3, max_total_bytes=None)
    assert pick.names == [] and "2 lineages" in pick.reason and "student-kd" in pick.reason
    # given a budget that fits one member only
    tight = pick_members(ROWS, top_k=3, max_total_bytes=6_000)
    assert tight.names == [] and "student-kd-int8_static" in tight.reason, tight.reason
    # given a budget that fits nothing
    none = pick_members(ROWS, top_k=3, max_total_bytes=100)
    assert none.names == [] and "smallest, mlp" in none.reason, none.reason


def test_pick_members__explicit_names_are_taken_exactly_in_order():
    # variants of one lineage and a budget that would not allow them: explicit wins
    pick = pick_members(ROWS, top_k=2, max_total_bytes=1, explicit=["mlp", "student-kd", "student-kd-fp16"])
    assert pick.names == ["mlp", "student-kd", "student-kd-fp16"]


def test_pick_members__unknown_explicit_name_is_a_user_error_listing_the_candidates():
    with pytest.raises(EnsembleError, match="'studnet-kd'") as raised:
        pick_members(ROWS, top_k=2, max_total_bytes=None, explicit=["teacher", "studnet-kd"])
    assert isinstance(raised.value, UserError) and isinstance(raised.value, ValueError)
    assert "student-kd-int8_static" in str(raised.value), "the message should list the available names"


@pytest.mark.parametrize("explicit", [["teacher"], ["teacher", "teacher"]])
def test_pick_members__explicit_needs_two_distinct_members(explicit):
    with pytest.raises(EnsembleError, match="at least 2|more than once"):
        pick_members(ROWS, top_k=2, max_total_bytes=None, explicit=explicit)


def test_pick_members__top_k_below_two_is_rejected():
    with pytest.raises(EnsembleError, match="top_k=1"):
        pick_members(ROWS, top_k=1, max_total_bytes=None)

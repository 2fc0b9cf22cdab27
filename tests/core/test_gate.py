"""shrinkflow.gate: acceptance and choice read validation only; latency ties inside the noise."""

from __future__ import annotations

import random

from shrinkflow import gate


def row(name: str, val_accuracy: float, size: int, latency: float, val_drop: float,
        accuracy: float = 0.9, drop: float = 0.0) -> dict:
    return {"candidate": name, "val_accuracy": val_accuracy, "size_bytes": size,
            "latency_ms_p50_b1": latency, "val_accuracy_drop_pp": val_drop,
            "accuracy": accuracy, "accuracy_drop_pp": drop}


BASELINE = row("baseline", 0.99, 80_000, 0.090, 0.0)
SMALL = row("small", 0.987, 3_000, 0.005, 0.3)
WORSE = row("worse", 0.985, 5_000, 0.006, 0.5)  # bigger, slower and less accurate than SMALL
LOSSY = row("lossy", 0.95, 1_000, 0.004, 4.0)


def test_pareto_front_drops_dominated_candidates():
    front = gate.pareto_front([BASELINE, SMALL, WORSE, LOSSY])
    assert [r["candidate"] for r in front] == ["baseline", "small", "lossy"]


def test_choose_takes_the_fastest_acceptable_front_member():
    # given: LOSSY is faster still but loses 4 pp on validation
    chosen = gate.choose([BASELINE, SMALL, WORSE, LOSSY], 0.5)
    assert chosen is not None and chosen["candidate"] == "small"


def test_choose_returns_none_when_nothing_is_within_tolerance():
    assert gate.choose([LOSSY], 0.5) is None


def test_acceptable_includes_the_tolerance_itself():
    assert gate.acceptable(WORSE, 0.5) and not gate.acceptable(WORSE, 0.49)


def test_latencies_inside_the_noise_tie_and_the_smaller_file_wins():
    # given: the same graph stored three ways; their latencies differ, but not beyond the noise
    fp32 = row("student", 0.98, 20_000, 0.020, 0.2)
    fp16 = row("student-fp16", 0.98, 10_000, 0.039, 0.2)
    int8 = row("student-int8", 0.98, 5_000, 0.042, 0.2)
    slow = row("teacher", 0.99, 80_000, 0.090, 0.0)
    same_graph = {"student", "student-fp16", "student-int8"}

    def faster(a: dict, b: dict) -> bool:  # only the teacher is told apart
        return a["candidate"] in same_graph and b["candidate"] == "teacher"

    # when
    chosen = gate.choose([fp32, fp16, int8, slow], 0.5, faster=faster)
    # then: not the one that happened to time fastest, but the smallest of those that tie
    assert chosen["candidate"] == "student-int8"
    # while with plain latency comparisons the noisy lowest figure would have won
    assert gate.choose([fp32, fp16, int8, slow], 0.5)["candidate"] == "student"


def test_the_choice_is_unchanged_when_the_test_labels_are_shuffled():
    # given: thirty candidates, then the same with test scores as shuffled test labels give them
    rng = random.Random(0)
    rows = [row(f"c{i}", rng.uniform(0.97, 1.0), rng.randint(1_000, 90_000),
                rng.uniform(0.01, 0.1), rng.uniform(0.0, 1.0)) for i in range(30)]
    chosen = gate.choose(rows, 0.5)["candidate"]
    for _ in range(5):
        shuffled = [{**r, "accuracy": rng.uniform(0.0, 1.0), "accuracy_drop_pp": rng.uniform(-50, 50)}
                    for r in rows]
        # then: the same candidate is chosen
        assert gate.choose(shuffled, 0.5)["candidate"] == chosen


# ---------------------------------------------------------------------------------------------
# Promotion checks
# ---------------------------------------------------------------------------------------------
def test_a_challenger_behind_the_champion_beyond_the_tolerance_fails():
    assert not gate.accuracy_check(0.95, 0.96, max_drop_pp=0.5).passed
    assert gate.accuracy_check(0.958, 0.96, max_drop_pp=0.5).passed
    assert gate.accuracy_check(0.97, 0.96, max_drop_pp=0.0).passed


def test_without_a_champion_the_accuracy_check_passes():
    check = gate.accuracy_check(0.5, None, max_drop_pp=0.0)
    assert check.passed and "no champion" in check.detail


def test_budgets_pass_without_a_limit_and_fail_above_it():
    assert gate.budget_check("size", 10_000, None, "bytes").passed
    assert gate.budget_check("size", 10_000, 10_000, "bytes").passed
    over = gate.budget_check("latency", 0.2, 0.1, "ms")
    assert not over.passed and "budget 0.1 ms" in over.detail
    assert gate.failed([over, gate.budget_check("size", 1, None, "bytes")]) == [over]

"""shrinkflow.gate: which candidates are acceptable, on the Pareto front, and deployed."""

from __future__ import annotations

from shrinkflow import gate


def row(name: str, accuracy: float, size: int, latency: float, drop: float) -> dict:
    return {"candidate": name, "accuracy": accuracy, "size_bytes": size,
            "latency_ms_p50_b1": latency, "accuracy_drop_pp": drop}


BASELINE = row("baseline", 0.99, 80_000, 0.090, 0.0)
SMALL = row("small", 0.987, 3_000, 0.005, 0.3)
WORSE = row("worse", 0.985, 5_000, 0.006, 0.5)  # bigger, slower and less accurate than SMALL
LOSSY = row("lossy", 0.95, 1_000, 0.004, 4.0)


def test_pareto_front_drops_dominated_candidates():
    front = gate.pareto_front([BASELINE, SMALL, WORSE, LOSSY])
    assert [r["candidate"] for r in front] == ["baseline", "small", "lossy"]


def test_choose_takes_the_smallest_acceptable_front_member():
    # given: LOSSY is smallest but loses 4 pp
    chosen = gate.choose([BASELINE, SMALL, WORSE, LOSSY], max_drop_pp=0.5)
    assert chosen is not None and chosen["candidate"] == "small"


def test_choose_returns_none_when_nothing_is_within_tolerance():
    assert gate.choose([LOSSY], max_drop_pp=0.5) is None


def test_acceptable_includes_the_tolerance_itself():
    assert gate.acceptable(WORSE, 0.5) and not gate.acceptable(WORSE, 0.49)

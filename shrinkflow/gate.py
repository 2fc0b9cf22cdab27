"""Accuracy-aware acceptance and choice of the model to deploy: pure functions over metrics.

A candidate is acceptable when its accuracy drop against the teacher stays within the tolerance
(params.yaml `compare.max_accuracy_drop_pp`, default 0.5 pp). Among acceptable candidates the
Pareto front over (accuracy, size, latency) is kept, and the deployed one is the smallest file on
that front, ties broken by lower batch-1 latency: on a CPU target, bytes and latency are what
compression is for, and the tolerance has already bounded the accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Row = Mapping[str, Any]  # one candidate's metrics: accuracy, size_bytes, latency_ms_p50_b1, ...


def acceptable(row: Row, max_drop_pp: float) -> bool:
    return row["accuracy_drop_pp"] <= max_drop_pp + 1e-9


def dominates(a: Row, b: Row) -> bool:
    """a is at least as good as b everywhere and strictly better somewhere."""
    better_or_equal = (a["accuracy"] >= b["accuracy"] and a["size_bytes"] <= b["size_bytes"]
                       and a["latency_ms_p50_b1"] <= b["latency_ms_p50_b1"])
    strictly = (a["accuracy"] > b["accuracy"] or a["size_bytes"] < b["size_bytes"]
                or a["latency_ms_p50_b1"] < b["latency_ms_p50_b1"])
    return better_or_equal and strictly


def pareto_front(rows: Sequence[Row]) -> list[Row]:
    """Candidates no other candidate dominates on (accuracy up, size down, latency down)."""
    return [row for row in rows if not any(dominates(other, row) for other in rows)]


def choose(rows: Sequence[Row], max_drop_pp: float) -> Row | None:
    """The candidate to deploy, or None when no candidate is within the tolerance."""
    front = pareto_front([row for row in rows if acceptable(row, max_drop_pp)])
    if not front:
        return None
    return min(front, key=lambda row: (row["size_bytes"], row["latency_ms_p50_b1"]))

"""Accuracy-aware acceptance and choice of the model to deploy: pure functions over metrics.

Every decision here reads the validation split; test accuracy is reported beside it and never
read here, so the reported test figure is not the one the choice was fitted to.

A candidate is acceptable when its validation accuracy drop against the teacher
(`val_accuracy_drop_pp`) stays within the tolerance (params.yaml `compare.max_accuracy_drop_pp`),
and, when those rules are set, when it agrees with the teacher on enough validation samples
(`compare.min_agreement`) and loses little accuracy on the strongly corrupted validation inputs
(`compare.max_robustness_drop_pp`; `shrinkflow.judge`).
Among acceptable candidates the Pareto front over (validation accuracy, file size, batch-1
latency) is kept, and the deployed one is the fastest on that front: a CPU target is what
compression is for, and the tolerance has already bounded the accuracy. Latencies that differ by
less than the timing noise, or by less than `compare.min_speedup`, tie (`faster` tells; see
`shrinkflow.measure.Noise`): a gain of a few percent is not worth a bigger file. Among the tied,
the smaller file wins, then the higher validation accuracy, then the name (so the choice is
reproducible).

Promotion of a registered version (`Check`s) reads validation too: the challenger must be at least
as accurate as the champion, both re-evaluated now, within a tolerance, and meet the size and
latency budgets; the integration check (the registered model served back) is made by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Row = Mapping[str, Any]  # one candidate: candidate, val_accuracy, size_bytes, latency_ms_p50_b1, ...
# faster(a, b): is candidate a faster than candidate b beyond the timing noise?
Faster = Callable[[Row, Row], bool]


def plainly_faster(a: Row, b: Row) -> bool:
    """Without a measure of the noise: the lower median latency is faster."""
    return a["latency_ms_p50_b1"] < b["latency_ms_p50_b1"]


def within_drop(drop_pp: float, max_drop_pp: float) -> bool:
    """An accuracy drop within its limit, read as a count of rows: differences of float accuracies
    carry rounding (6 rows of 2,000 read 0.30000000000000027 pp)."""
    return drop_pp <= max_drop_pp + 1e-9


ROBUSTNESS_RULE = "val_robustness_drop_pp_strong"  # what compare.max_robustness_drop_pp bounds
AGREEMENT_RULE = "val_agreement"  # what compare.min_agreement bounds


@dataclass(frozen=True)
class Rules:
    """What a deployable candidate must meet on validation (None: the rule is off)."""

    max_drop_pp: float
    min_agreement: float | None = None
    max_robustness_drop_pp: float | None = None

    def describe(self) -> str:
        """The rules in words, e.g. 'within 0.5 pp of the teacher on validation'."""
        parts = [f"within {self.max_drop_pp} pp of the teacher on validation"]
        if self.min_agreement is not None:
            parts.append(f"agreeing with it on at least {self.min_agreement:.0%} of the "
                         "validation samples")
        if self.max_robustness_drop_pp is not None:
            parts.append(f"losing at most {self.max_robustness_drop_pp} pp on strongly corrupted "
                         "validation inputs")
        return ", ".join(parts)


def acceptable(row: Row, rules: Rules | float) -> bool:
    """Within the accuracy tolerance (a float: that alone), and the other rules that are set."""
    rules = rules if isinstance(rules, Rules) else Rules(rules)
    return (within_drop(row["val_accuracy_drop_pp"], rules.max_drop_pp)
            and (rules.min_agreement is None or row[AGREEMENT_RULE] >= rules.min_agreement)
            and (rules.max_robustness_drop_pp is None
                 or within_drop(row[ROBUSTNESS_RULE], rules.max_robustness_drop_pp)))


def dominates(a: Row, b: Row, faster: Faster = plainly_faster) -> bool:
    """a is at least as good as b everywhere and strictly better somewhere."""
    at_least = (a["val_accuracy"] >= b["val_accuracy"] and a["size_bytes"] <= b["size_bytes"]
                and not faster(b, a))
    better = (a["val_accuracy"] > b["val_accuracy"] or a["size_bytes"] < b["size_bytes"]
              or faster(a, b))
    return at_least and better


def pareto_front(rows: Sequence[Row], faster: Faster = plainly_faster) -> list[Row]:
    """Candidates no other candidate dominates on (val accuracy up, size down, latency down)."""
    return [row for row in rows if not any(dominates(other, row, faster) for other in rows)]


def choose(rows: Sequence[Row], rules: Rules | float,
           faster: Faster = plainly_faster) -> Row | None:
    """The candidate to deploy, or None when no candidate meets the rules (a float: the accuracy
    tolerance alone)."""
    front = pareto_front([row for row in rows if acceptable(row, rules)], faster)
    if not front:
        return None
    quickest = min(front, key=lambda row: row["latency_ms_p50_b1"])
    tied = [row for row in front if not faster(quickest, row)]
    return min(tied, key=lambda row: (row["size_bytes"], -row["val_accuracy"], row["candidate"]))


# ---------------------------------------------------------------------------------------------
# Promotion: may a registered challenger replace the champion?
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    name: str  # accuracy | size | latency | integration
    passed: bool
    detail: str  # what was compared, in words

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


def accuracy_check(challenger: float, champion: float | None, max_drop_pp: float) -> Check:
    """The challenger's validation accuracy against the champion's, both measured now."""
    if champion is None:
        return Check("accuracy", True, f"no champion yet; challenger {challenger:.4f} on validation")
    drop_pp = 100.0 * (champion - challenger)
    return Check("accuracy", within_drop(drop_pp, max_drop_pp),
                 f"challenger {challenger:.4f} vs champion {champion:.4f} on validation "
                 f"({drop_pp:+.2f} pp behind, at most {max_drop_pp} pp allowed)")


def budget_check(name: str, value: float, limit: float | None, unit: str) -> Check:
    """A size or latency budget; no limit passes."""
    if limit is None:
        return Check(name, True, f"{value:,.4g} {unit}, no budget set")
    return Check(name, value <= limit, f"{value:,.4g} {unit}, budget {limit:,.4g} {unit}")


def failed(checks: Sequence[Check]) -> list[Check]:
    return [check for check in checks if not check.passed]

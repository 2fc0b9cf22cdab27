"""Accuracy-aware search: the highest pruning ratio whose accuracy drop stays within a limit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from torch import nn

from shrinkflow.data import Split
from shrinkflow.measure import evaluate, torch_predictor

# prune_at(ratio) returns the model pruned (and fine-tuned) to `ratio`
PruneAt = Callable[[float], nn.Module]


@dataclass(frozen=True)
class SearchTry:
    ratio: float
    accuracy: float
    drop_pp: float  # teacher accuracy minus this accuracy, in percentage points
    accepted: bool


@dataclass(frozen=True)
class SearchResult:
    """The highest accepted ratio (None if none was) with its model, and every ratio tried."""

    ratio: float | None
    model: nn.Module | None
    teacher_accuracy: float
    max_drop_pp: float
    tries: tuple[SearchTry, ...]

    def records(self) -> list[dict[str, float | bool]]:
        """One plain dict per try (for a table or an MLflow artifact)."""
        return [asdict(t) for t in self.tries]


def _accuracy(model: nn.Module, split: Split) -> float:
    return evaluate(torch_predictor(model), split.x, split.y)["accuracy"]


def search_ratio(
    teacher: nn.Module,
    prune_at: PruneAt,
    evaluation: Split,
    max_drop_pp: float,
    ratios: Sequence[float],
    stop_at_first_failure: bool = True,
) -> SearchResult:
    """Try `ratios` in ascending order; keep the highest whose accuracy drop is <= `max_drop_pp`.

    `prune_at(ratio)` returns the pruned (and fine-tuned) model; it is the same search for
    structured and unstructured pruning. Accuracy is measured on `evaluation` (a validation
    split: choosing on the test split would leak). Accuracy falls with the ratio, so by default
    the search stops at the first rejected ratio and saves the remaining (costly) tries;
    stop_at_first_failure=False tries them all.
    """
    if not ratios:  # prune.search_ratios may be an empty list
        raise ValueError("prune.search_ratios: no ratio to try")
    teacher_accuracy = _accuracy(teacher, evaluation)
    tries: list[SearchTry] = []
    best_ratio: float | None = None
    best_model: nn.Module | None = None
    for ratio in sorted(set(ratios)):
        candidate = prune_at(ratio)
        accuracy = _accuracy(candidate, evaluation)
        drop_pp = (teacher_accuracy - accuracy) * 100.0
        accepted = drop_pp <= max_drop_pp + 1e-9  # 0.5 pp must pass a 0.5 pp limit despite rounding
        tries.append(SearchTry(ratio, accuracy, drop_pp, accepted))
        if accepted:
            best_ratio, best_model = ratio, candidate
        elif stop_at_first_failure:
            break
    return SearchResult(best_ratio, best_model, teacher_accuracy, max_drop_pp, tuple(tries))

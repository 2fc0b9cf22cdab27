"""Which trial's config the baseline trains: the search's best, or params.yaml's own.

The reference trial trained the baseline config as it is, under the same budget as every other
trial, so the two compare fairly. A searched config replaces it only when it is more accurate on
validation, or as accurate with fewer parameters. With several objectives the candidates are the
Pareto front (`study.best_trials`), restricted to the budgets in params (`max_params`,
`max_latency_ms`), and the most accurate of them is taken (ties: fewer parameters, then lower
latency); a reference outside a budget loses to any trial within it.
Everything here reads validation figures only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from shrinkflow.config import SearchConfig
from shrinkflow.search.study import REFERENCE_ATTR


@dataclass(frozen=True)
class Choice:
    """The config the baseline trains (`values` {} keeps params.yaml's) and why."""

    values: dict[str, Any]
    reason: str
    trial: int | None = None  # the chosen trial's number (None: params.yaml's config)
    figures: dict[str, float] = field(default_factory=dict)  # chosen/reference objectives


def objectives(trial: FrozenTrial, cfg: SearchConfig) -> dict[str, float]:
    """A complete trial's objective values by name, and its parameter count."""
    found = dict(zip(cfg.objectives, trial.values, strict=True))
    found.setdefault("params", float(trial.user_attrs.get("params", 0)))
    if "latency_ms" in trial.user_attrs:
        found.setdefault("latency_ms", float(trial.user_attrs["latency_ms"]))
    return found


def _within_budget(figures: dict[str, float], cfg: SearchConfig) -> bool:
    return ((cfg.max_params is None or figures["params"] <= cfg.max_params)
            and (cfg.max_latency_ms is None or figures.get("latency_ms", 0.0) <= cfg.max_latency_ms))


def _rank(figures: dict[str, float]) -> tuple[float, float, float]:
    # most accurate first; then fewer parameters, then lower latency
    return (-figures["val_accuracy"], figures["params"], figures.get("latency_ms", 0.0))


def front(study: optuna.Study, cfg: SearchConfig) -> list[FrozenTrial]:
    """The trials choice picks among: the Pareto front (several objectives) or every complete
    trial (one objective)."""
    if len(cfg.objectives) > 1:
        return list(study.best_trials)
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def choose(study: optuna.Study, cfg: SearchConfig) -> Choice:
    """The baseline's config: the best eligible trial if it beats the reference trial."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reference = next((trial for trial in complete if trial.user_attrs.get(REFERENCE_ATTR)), None)
    if reference is None:
        return Choice({}, "the reference trial (params.yaml's config) did not finish: nothing to "
                          "compare the search with, params.yaml's config is kept")
    eligible = [trial for trial in front(study, cfg) if _within_budget(objectives(trial, cfg), cfg)]
    if not eligible:
        return Choice({}, "no trial on the front is within search.max_params/max_latency_ms: "
                          "params.yaml's config is kept")
    best = min(eligible, key=lambda trial: _rank(objectives(trial, cfg)))
    mine, theirs = objectives(best, cfg), objectives(reference, cfg)
    figures = {**{f"chosen_{k}": v for k, v in mine.items()},
               **{f"reference_{k}": v for k, v in theirs.items()}}
    if best.number != reference.number and (not _within_budget(theirs, cfg) or _rank(mine) < _rank(theirs)):
        return Choice(dict(best.params), f"trial {best.number}: val accuracy "
                      f"{mine['val_accuracy']:.4f} with {mine['params']:.0f} params vs "
                      f"params.yaml's {theirs['val_accuracy']:.4f} with {theirs['params']:.0f}",
                      best.number, figures)
    return Choice({}, f"no trial beat params.yaml's config on validation "
                      f"({theirs['val_accuracy']:.4f}, {theirs['params']:.0f} params)",
                  None, figures)

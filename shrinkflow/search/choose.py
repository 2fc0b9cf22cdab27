"""Which config the teacher is trained with: the search's proposal, or params.yaml's own.

The rule, here and in `baseline`'s full-budget confirmation, is the one-standard-error rule of
model selection: of the configs whose validation accuracy is within `search.within_se` standard
errors of the most accurate one's, take the smallest (fewest parameters, then lowest latency;
among equals params.yaml's config, else the most accurate). A validation split of a few hundred
rows cannot tell apart accuracies one row apart: then the smaller model is the better teacher,
and a config of the same size is no reason to change params.yaml's.

The reference trial trained the baseline config as it is, under the same budget as every other
trial, so the two compare fairly. With several objectives the candidates are the Pareto front
(`study.best_trials`) within the budgets in params (`max_params`, `max_latency_ms`); a reference
outside a budget loses to any trial within it. Everything here reads validation figures only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def standard_error(accuracy: float, rows: int) -> float:
    """Standard error of an accuracy measured on `rows` rows, Agresti-Coull style (two successes
    and two failures added), so that 100 % on a small split is not taken as exact."""
    adjusted = (accuracy * rows + 2) / (rows + 4)
    return math.sqrt(adjusted * (1 - adjusted) / (rows + 4))


def smallest_near_best(figures: Sequence[dict[str, float]], within_se: float,
                       incumbent: int | None = None) -> int:
    """Index of the config the one-standard-error rule picks from `figures` (each with
    val_accuracy, params, and optionally val_rows and latency_ms; without val_rows the rule is
    strict). The `incumbent` (params.yaml's config) loses only to a config more accurate by more
    than the tolerance, or within it and smaller: a change needs more than noise behind it."""
    best = max(figures, key=lambda found: found["val_accuracy"])
    rows = int(best.get("val_rows", 0))
    floor = best["val_accuracy"] - (within_se * standard_error(best["val_accuracy"], rows)
                                    if rows else 0.0)
    near = [i for i, found in enumerate(figures) if found["val_accuracy"] >= floor]
    return min(near, key=lambda i: (figures[i]["params"], figures[i].get("latency_ms", 0.0),
                                    i != incumbent, -figures[i]["val_accuracy"], i))


def comparison(mine: dict[str, float], theirs: dict[str, float]) -> str:
    """'val accuracy A with P params vs params.yaml's B with Q'."""
    return (f"val accuracy {mine['val_accuracy']:.4f} with {mine['params']:.0f} params vs "
            f"params.yaml's {theirs['val_accuracy']:.4f} with {theirs['params']:.0f}")


def objectives(trial: FrozenTrial, cfg: SearchConfig) -> dict[str, float]:
    """A complete trial's objective values by name, its parameter count and validation rows."""
    found = dict(zip(cfg.objectives, trial.values, strict=True))
    found.setdefault("params", float(trial.user_attrs.get("params", 0)))
    if "latency_ms" in trial.user_attrs:
        found.setdefault("latency_ms", float(trial.user_attrs["latency_ms"]))
    if "val_rows" in trial.user_attrs:
        found["val_rows"] = float(trial.user_attrs["val_rows"])
    return found


def _within_budget(figures: dict[str, float], cfg: SearchConfig) -> bool:
    return ((cfg.max_params is None or figures["params"] <= cfg.max_params)
            and (cfg.max_latency_ms is None or figures.get("latency_ms", 0.0) <= cfg.max_latency_ms))


def front(study: optuna.Study, cfg: SearchConfig) -> list[FrozenTrial]:
    """The trials choice picks among: the Pareto front (several objectives) or every complete
    trial (one objective)."""
    if len(cfg.objectives) > 1:
        return list(study.best_trials)
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def choose(study: optuna.Study, cfg: SearchConfig) -> Choice:
    """The baseline's config: the trial the one-standard-error rule picks among the eligible
    trials and the reference, or params.yaml's own."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reference = next((trial for trial in complete if trial.user_attrs.get(REFERENCE_ATTR)), None)
    if reference is None:
        return Choice({}, "the reference trial (params.yaml's config) did not finish: nothing to "
                          "compare the search with, params.yaml's config is kept")
    theirs = objectives(reference, cfg)
    incumbent = 0 if _within_budget(theirs, cfg) else None
    pool = ([reference] if incumbent == 0 else []) + [
        trial for trial in front(study, cfg)
        if trial.number != reference.number and _within_budget(objectives(trial, cfg), cfg)]
    if not pool:
        return Choice({}, "no trial on the front is within search.max_params/max_latency_ms: "
                          "params.yaml's config is kept")
    best = pool[smallest_near_best([objectives(trial, cfg) for trial in pool], cfg.within_se,
                                   incumbent)]
    mine = objectives(best, cfg)
    figures = {**{f"chosen_{k}": v for k, v in mine.items()},
               **{f"reference_{k}": v for k, v in theirs.items()}}
    if best.number != reference.number:
        return Choice(dict(best.params), f"trial {best.number}: {comparison(mine, theirs)}",
                      best.number, figures)
    return Choice({}, f"no trial beat params.yaml's config on validation "
                      f"({theirs['val_accuracy']:.4f}, {theirs['params']:.0f} params) by more "
                      f"than {cfg.within_se:g} standard error, or came that close with fewer "
                      f"parameters",
                  None, figures)

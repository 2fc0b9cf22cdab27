"""The search space: which baseline keys a trial varies, and how a trial's values become a config.

`search.space` mirrors params.yaml's `baseline` section: `{model: {width: [32, 64]}, train: {lr:
{low: 0.001, high: 0.01, log: true}}}`. A list is a set of choices, a `Range` is numeric (integer
when its ends are integers). Optuna names each dimension by its dotted key (`model.width`), which
is also how the trial's values are applied to the baseline config, logged to MLflow and plotted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from shrinkflow.config import BaselineConfig, Dimension, Range, SearchConfig

if TYPE_CHECKING:  # optuna is imported by the stage that searches, not by `baseline`
    import optuna

Values = dict[str, Any]  # {"model.width": 64, "train.lr": 0.003, ...}


def dimensions(cfg: SearchConfig, baseline: BaselineConfig) -> dict[str, Dimension]:
    """The space as {dotted key: choices or range}, in declaration order, widened to hold the
    baseline's own value: the params.yaml model is always a point of the space (the reference
    trial every search starts with)."""
    space: dict[str, Dimension] = {}
    for section, keys in cfg.space.items():
        for name, dimension in keys.items():
            own = getattr(getattr(baseline, section), name)
            if isinstance(dimension, Range):
                space[f"{section}.{name}"] = dimension.model_copy(
                    update={"low": min(dimension.low, own), "high": max(dimension.high, own)})
            else:
                space[f"{section}.{name}"] = dimension if own in dimension else (own, *dimension)
    return space


def ask(trial: optuna.Trial, key: str, dimension: Dimension) -> Any:
    """The trial's value of one dimension: a choice, or a number of the range."""
    if not isinstance(dimension, Range):
        return trial.suggest_categorical(key, list(dimension))
    if dimension.integer:
        return trial.suggest_int(key, int(dimension.low), int(dimension.high),
                                 step=int(dimension.step or 1), log=dimension.log)
    return trial.suggest_float(key, float(dimension.low), float(dimension.high),
                               step=dimension.step, log=dimension.log)


def suggest(trial: optuna.Trial, space: Mapping[str, Dimension]) -> Values:
    """Ask the trial for a value of every dimension of `space` (see `dimensions`)."""
    return {key: ask(trial, key, dimension) for key, dimension in space.items()}


def grid(space: Mapping[str, Dimension], points: int, reference: Values) -> dict[str, list[Any]]:
    """Every value the grid sampler tries: the choices, or `points` values spread over a range
    (log-spaced for a log range, whole and stepped numbers kept whole and on the step), plus the
    `reference` trial's own value (so the grid holds params.yaml's config)."""
    values_of: dict[str, list[Any]] = {}
    for key, dimension in space.items():
        if not isinstance(dimension, Range):
            values_of[key] = list(dimension)
            continue
        spread = np.geomspace if dimension.log else np.linspace
        values = spread(dimension.low, dimension.high, points)
        if dimension.step is not None:
            values = dimension.low + np.round((values - dimension.low) / dimension.step) * dimension.step
        values = np.round(values).astype(int) if dimension.integer else values
        values_of[key] = sorted({value.item() for value in values} | {reference[key]})
    return values_of


def current(space: Mapping[str, Dimension], baseline: BaselineConfig) -> Values:
    """The baseline config's own values of the searched keys (the reference trial)."""
    return {key: getattr(getattr(baseline, section), name)
            for key in space for section, name in [key.split(".")]}


def apply(baseline: BaselineConfig, values: Mapping[str, Any], **train: Any) -> BaselineConfig:
    """`baseline` with a trial's values (dotted keys) set, and `train` keys on top."""
    sections = baseline.model_dump()
    for key, value in values.items():
        section, name = key.split(".")
        sections[section][name] = value
    sections["train"].update(train)
    return BaselineConfig.model_validate(sections)

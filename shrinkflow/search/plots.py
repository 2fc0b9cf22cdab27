"""A study's figures, drawn by Optuna's matplotlib visualisation into PNG files.

optimization_history.png  every trial's validation accuracy and the best so far
intermediate_values.png   per-epoch validation accuracy of every trial (where pruning cut them),
                          when the trials report one
param_importances.png     how much each searched key mattered (fANOVA), from 2 complete trials on
pareto_front.png          several objectives: the trade-off, the front highlighted
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from shrinkflow.plots import pyplot

log = logging.getLogger("shrinkflow.search")


def _figures(study: optuna.Study, names: tuple[str, ...]) -> dict[str, Callable[[], Any]]:
    from optuna.visualization import matplotlib as vis

    multi = len(names) > 1
    # one objective: Optuna knows its direction; several: plot the accuracy (importances are
    # computed for low targets, hence the minus sign)
    history = {"target": lambda trial: trial.values[0]} if multi else {}
    importance = {"target": lambda trial: -trial.values[0]} if multi else {}
    figures = {"optimization_history": lambda: vis.plot_optimization_history(
                   study, target_name=names[0], **history)}
    trials = study.get_trials(deepcopy=False)
    if any(trial.intermediate_values for trial in trials):
        figures["intermediate_values"] = lambda: vis.plot_intermediate_values(study)
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
        figures["param_importances"] = lambda: vis.plot_param_importances(
            study, target_name=names[0], **importance)
    if multi:
        figures["pareto_front"] = lambda: vis.plot_pareto_front(study, target_names=list(names))
    return figures


def draw(study: optuna.Study, objectives: tuple[str, ...], folder: Path) -> list[Path]:
    """Write the study's figures into `folder`; returns the files written. A figure Optuna
    cannot draw for this study (too few trials of a kind) is skipped with a log line."""
    plt = pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in _figures(study, objectives).items():
        try:
            with warnings.catch_warnings():  # matplotlib visualisation is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot()
        except (ValueError, RuntimeError) as exc:
            log.info("search plot %s skipped: %s", name, exc)
            continue
        first_axes = axes.flat[0] if hasattr(axes, "flat") else axes
        if name == "intermediate_values":
            first_axes.set(xlabel="epoch", ylabel="validation accuracy")
        figure = first_axes.get_figure()
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figure.savefig(folder / f"{name}.png", dpi=100)
        plt.close(figure)
        written.append(folder / f"{name}.png")
    return written

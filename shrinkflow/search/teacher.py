"""One teacher trial: build the architecture a trial proposes, train it, report every epoch.

A trial trains the baseline config with the trial's values for at most `search.epochs` epochs
(the one-cycle schedule spans them all) and reports its validation accuracy after each epoch: the
pruner may stop it there. Its objectives are the best validation accuracy it reached and, for a
multi-objective study, its parameter count or batch-1 latency. The test split is never read.
The trial that trains the baseline config as it is (the reference) is never pruned: the search
compares every other trial with it.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from shrinkflow import data, measure, models, train
from shrinkflow.config import BaselineConfig, Dimension, SearchConfig
from shrinkflow.search import space, study
from shrinkflow.search.study import REFERENCE_ATTR


@dataclass(frozen=True)
class TrialData:
    """What every trial trains and validates on (the test split is not here on purpose)."""

    train: data.Split
    val: data.Split
    kind: str  # image | signal | tabular
    input_shape: tuple[int, ...]
    n_classes: int


def _repeat(trial: optuna.Trial, earlier: optuna.trial.FrozenTrial, multi: bool
            ) -> float | tuple[float, ...]:
    """Give `trial` the result of `earlier`, a finished trial with the same values."""
    for key in ("params", "latency_ms", "val_rows"):
        if key in earlier.user_attrs:
            trial.set_user_attr(key, earlier.user_attrs[key])
    trial.set_user_attr("epochs", 0)
    trial.set_user_attr("repeats_trial", earlier.number)
    if earlier.state == optuna.trial.TrialState.PRUNED:
        raise optuna.TrialPruned(f"the same values as trial {earlier.number}, which was pruned")
    return tuple(earlier.values) if multi else earlier.value


def objective(cfg: SearchConfig, baseline: BaselineConfig, dims: Mapping[str, Dimension],
              trial_data: TrialData, weights_dir: Path | None = None
              ) -> Callable[[optuna.Trial], float | tuple[float, ...]]:
    """The study's objective: train the trial's config and return its objectives.

    Each finished trial leaves its weights and architecture in `weights_dir` (when given) as
    trial-<number>.pt / trial-<number>.json, and its parameter count, epochs and seconds as user
    attributes."""
    multi = len(cfg.objectives) > 1

    def run(trial: optuna.Trial) -> float | tuple[float, ...]:
        values = space.suggest(trial, dims)
        earlier = study.twin(trial)
        if earlier is not None:  # the same values were trained already: same result, no cost
            return _repeat(trial, earlier, multi)
        config = space.apply(baseline, values, epochs=cfg.epochs, patience=cfg.epochs)
        arch = models.architecture_for(config.model, trial_data.kind, trial_data.input_shape,
                                       trial_data.n_classes)
        train.seed_everything(config.train.seed)
        model = models.build_model(arch)
        trial.set_user_attr("params", measure.count_params(model)[0])
        trial.set_user_attr("val_rows", len(trial_data.val))  # how exact its accuracy is
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # who trained it
        protected = bool(trial.user_attrs.get(REFERENCE_ATTR))

        def report(epoch: train.EpochLog) -> None:
            trial.set_user_attr("epochs", epoch.epoch)
            if multi:
                return  # Optuna prunes single-objective studies only
            trial.report(epoch.val_accuracy, epoch.epoch)
            if not protected and trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch.epoch}: val accuracy {epoch.val_accuracy:.4f}")

        result = train.fit(model, trial_data.train, trial_data.val, config.train,
                           augment=data.Augmenter(config.augment, trial_data.kind),
                           on_epoch_end=report, progress=False,
                           description=f"search trial {trial.number}")
        trial.set_user_attr("seconds", sum(epoch.seconds for epoch in result.history))
        if weights_dir is not None:
            weights_dir.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), weights_dir / f"trial-{trial.number}.pt")
            (weights_dir / f"trial-{trial.number}.json").write_text(json.dumps(arch.to_dict()))
        found = {"val_accuracy": result.best_val_accuracy,
                 "params": float(trial.user_attrs["params"])}
        if "latency_ms" in cfg.objectives:
            found["latency_ms"] = measure.quick_latency_ms(lambda: measure.torch_predictor(model),
                                                           trial_data.val.x[:1])
            trial.set_user_attr("latency_ms", found["latency_ms"])
        return tuple(found[name] for name in cfg.objectives) if multi else found["val_accuracy"]

    return run

"""The Optuna study: sampler, pruner, and running trials until the budget is spent.

A study lives in a database, so a search is resumable and shareable: a killed run, or another
process or machine, opens the same study by name and continues it. The caller passes the opened
Optuna storage (`tasks.services.studies.storage` builds it from a URL: SQLite by default, any SQLAlchemy
URL such as PostgreSQL, with heartbeats and a retry of trials whose process died); this module
only needs Optuna. The budget counts the trials the study holds, not the trials this run adds:
`trials` finished (complete or pruned) trials in all, so a restarted search only runs the missing
ones and never repeats a finished trial. Running trials send a heartbeat when the storage has
one; a trial whose process died (no beat for three intervals) is marked failed by the next
process to run a trial, and retried once with the same values.

Several processes share one study safely: the storage makes starting a queued trial atomic (on
SQLite every transaction begins IMMEDIATE, see `tasks.services.studies.storage`), and a trial that another
process finished meanwhile (a worker starved past its heartbeat's grace period, whose trial was
then failed and retried) is told with `skip_if_finished`: its result is dropped with a warning
instead of ending the whole search with Optuna's "Cannot tell a COMPLETE trial".
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from shrinkflow.config import Dimension, SearchConfig
from shrinkflow.search import space

log = logging.getLogger("shrinkflow.search")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
DIRECTIONS = {"val_accuracy": "maximize", "params": "minimize", "latency_ms": "minimize"}
REFERENCE_ATTR = "reference"  # user attr of the trial that trains the baseline config as it is


def sampler(cfg: SearchConfig, dims: Mapping[str, Dimension], reference: space.Values
            ) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded (one process: the same trials every time)."""
    if cfg.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(dims, cfg.grid_points, reference),
                                           seed=cfg.seed)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    if cfg.sampler == "cmaes":
        # CMA-ES has no categorical dimension: those are drawn at random, without a warning each
        return optuna.samplers.CmaEsSampler(seed=cfg.seed, warn_independent_sampling=False)
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=cfg.seed, population_size=max(4, cfg.trials // 3))
    # few trials: start modelling after 4 random ones (the default 10 would be most of the budget)
    return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=min(10, max(4, cfg.trials // 3)),
                                      multivariate=True)


def pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    """The configured pruner; every one waits `min_epochs` before judging a trial."""
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=cfg.min_epochs - 1)
    if cfg.pruner == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.min_epochs,
                                                      reduction_factor=3)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.min_epochs, max_resource=cfg.epochs,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def create(storage: optuna.storages.BaseStorage, name: str, directions: Sequence[str],
           chosen_sampler: optuna.samplers.BaseSampler,
           chosen_pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create the study `name` in `storage`, or load it when it exists (a resumed or shared
    search). The storage (a database, its heartbeat and retries) is built by the caller:
    `tasks.services.studies.storage` for a URL."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=storage, sampler=chosen_sampler, pruner=chosen_pruner,
                               study_name=name, load_if_exists=True, directions=list(directions))


def open_study(cfg: SearchConfig, dims: Mapping[str, Dimension], reference: space.Values,
               storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """The teacher study (see `create`); the trial of the `reference` values (params.yaml's
    config) is queued first, once per study: it is what the search must beat."""
    study = create(storage, name, [DIRECTIONS[objective] for objective in cfg.objectives],
                   sampler(cfg, dims, reference), pruner(cfg))
    study.enqueue_trial(dict(reference), user_attrs={REFERENCE_ATTR: True}, skip_if_exists=True)
    return study


def twin(trial: optuna.Trial) -> FrozenTrial | None:
    """A finished trial of the study with the same values as `trial` (training is
    deterministic: its result is this trial's), or None."""
    return next((other for other in trial.study.get_trials(deepcopy=False, states=FINISHED)
                 if other.params == trial.params and other.number != trial.number), None)


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


@contextmanager
def _heartbeat(storage: Any, trial_id: int) -> Iterator[None]:
    """Beat for `trial_id` every heartbeat interval while the block runs (as Optuna's own
    optimize loop does), so other processes see the trial alive."""
    interval = storage.get_heartbeat_interval()
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    beating = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    beating.start()
    try:
        yield
    finally:
        stop.set()
        beating.join()


def _fail_stale(study: optuna.Study) -> None:
    """Mark trials whose process stopped beating as failed (their retry is queued)."""
    with warnings.catch_warnings():  # marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _tell(study: optuna.Study, trial: optuna.Trial, values: Any, state: TrialState | None) -> None:
    """Record the trial's result, unless another process already finished it (then say so)."""
    stored = study._storage.get_trial(trial._trial_id)  # Optuna keeps no public trial id
    if stored.state.is_finished():
        log.warning("trial %d was finished elsewhere (%s) while this process trained it: its "
                    "result here is dropped", trial.number, stored.state.name.lower())
    study.tell(trial, values, state, skip_if_finished=True)


@contextmanager
def _optimize_loop(study: optuna.Study) -> Iterator[None]:
    """This thread runs an optimize loop, as within `Study.optimize`: a sampler may then call
    `study.stop()` (the grid sampler does once its grid is used up), which ends the loop. Optuna
    keeps both flags private; the grid cases of tests/core/search/test_study.py cover them."""
    study._thread_local.in_optimize_loop = True
    study._stop_flag = False
    try:
        yield
    finally:
        study._thread_local.in_optimize_loop = False


def _run_one(study: optuna.Study, objective: Callable[[optuna.Trial], Any]) -> None:
    _fail_stale(study)
    trial = study.ask()
    with _heartbeat(study._storage, trial._trial_id):
        try:
            values = objective(trial)
        except optuna.TrialPruned:
            _tell(study, trial, None, TrialState.PRUNED)
            return
        except BaseException:
            _tell(study, trial, None, TrialState.FAIL)
            raise
    _tell(study, trial, values, None)


def optimize(study: optuna.Study, objective: Callable[[optuna.Trial], Any], trials: int,
             timeout_s: float | None) -> None:
    """Run trials until the study holds `trials` finished ones (or `timeout_s` passes).

    Several processes may call this on one study at once: each stops when the shared count is
    reached (a trial already started elsewhere may make it one or two more). The loop is Optuna's
    ask and tell with a heartbeat, rather than `Study.optimize`, which ends the whole search
    when a trial it ran was finished by another process meanwhile."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    with _optimize_loop(study):
        while finished(study) < trials and not study._stop_flag and (
                deadline is None or time.monotonic() < deadline):
            _run_one(study, objective)
            log.info("study %s: %d of %d trials finished, %s", study.study_name, finished(study),
                     trials, _best_so_far(study))


def _best_so_far(study: optuna.Study) -> str:
    """'best value 0.9815 (trial 3)', or the size of a multi-objective study's front."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return "none complete yet"
    if len(study.directions) > 1:
        return f"{len(study.best_trials)} trials on the front"
    return f"best value {study.best_value:.4f} (trial {study.best_trial.number})"

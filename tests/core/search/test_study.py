"""Studies: every sampler and pruner on a tiny space with real training, storage and resuming.

The storage is Optuna's own SQLite storage with a heartbeat; the stage's (a URL, SQLAlchemy engine
options, BEGIN IMMEDIATE) is `tasks.services.studies.storage`, tested in tests/tasks/.
"""

from __future__ import annotations

import logging
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from shrinkflow.config import Params
from shrinkflow.data import Split
from shrinkflow.search import choose, space, study, teacher

TINY_SPACE = {"model": {"width": [4, 8], "depth": {"low": 1, "high": 2}},
              "train": {"lr": {"low": 0.003, "high": 0.03, "log": True}}}


def tiny_params(**search) -> Params:
    return Params.model_validate({
        "baseline": {"model": {"family": "mlp", "width": 8, "depth": 1, "dropout": 0.0},
                     "train": {"batch_size": 32, "device": "cpu", "amp": False}},
        "search": {"trials": 4, "epochs": 3, "min_epochs": 1, "space": TINY_SPACE, **search}})


@pytest.fixture
def trial_data(make_blobs) -> teacher.TrialData:
    x, y = make_blobs(240, features=4, classes=3, spread=1.5)  # overlapping: accuracy varies
    return teacher.TrialData(Split(x[:160], y[:160]), Split(x[160:], y[160:]), "tabular", (4,), 3)


def storage(url: str, heartbeat_s: int) -> optuna.storages.RDBStorage:
    """The study database at `url`, its running trials beating every `heartbeat_s`."""
    with warnings.catch_warnings():  # heartbeats are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_s,
                                          grace_period=3 * heartbeat_s)


def run(params: Params, trial_data: teacher.TrialData, url: str, name: str = "tiny", tmp_path=None):
    dims = space.dimensions(params.search, params.baseline)
    opened = study.open_study(params.search, dims, space.current(dims, params.baseline),
                              storage(url, params.search.heartbeat_s), name)
    study.optimize(opened, teacher.objective(params.search, params.baseline, dims, trial_data,
                                             tmp_path), params.search.trials, None)
    return opened


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe", "cmaes", "nsga2"])
def test_every_sampler_fills_the_budget(sampler, trial_data, tmp_path):
    params = tiny_params(sampler=sampler, pruner="none")
    opened = run(params, trial_data, f"sqlite:///{tmp_path / 'study.db'}")
    finished = opened.get_trials(states=study.FINISHED)
    assert len(finished) == 4
    assert finished[0].user_attrs[study.REFERENCE_ATTR] and finished[0].params == {
        "model.width": 8, "model.depth": 1, "train.lr": 0.003}
    assert len({tuple(sorted(trial.params.items())) for trial in finished}) >= 3  # it explores
    assert all(0.0 < trial.value <= 1.0 for trial in finished)
    assert all(len(trial.intermediate_values) == 3 for trial in finished)  # one report per epoch


def test_each_finished_trial_says_how_far_the_study_is(trial_data, tmp_path, caplog):
    params = tiny_params(sampler="random", pruner="none")
    with caplog.at_level(logging.INFO, logger="shrinkflow.search"):
        opened = run(params, trial_data, f"sqlite:///{tmp_path / 'study.db'}")
    lines = [record.getMessage() for record in caplog.records if "trials finished" in record.getMessage()]
    assert [line.split(":")[1].split(",")[0] for line in lines] == [
        f" {n} of 4 trials finished" for n in range(1, 5)]
    assert lines[-1].endswith(f"best value {opened.best_value:.4f} (trial {opened.best_trial.number})")


@pytest.mark.parametrize("pruner", ["median", "sha", "hyperband"])
def test_every_pruner_stops_some_trials(pruner, trial_data, tmp_path):
    params = tiny_params(sampler="random", pruner=pruner, trials=10, epochs=6,
                         space={"train": {"lr": {"low": 1e-5, "high": 0.05, "log": True}}})
    opened = run(params, trial_data, f"sqlite:///{tmp_path / 'study.db'}")
    states = [trial.state for trial in opened.get_trials()]
    assert states.count(TrialState.PRUNED) >= 1, states
    assert states[0] == TrialState.COMPLETE  # the reference trial is never pruned
    pruned = [trial for trial in opened.get_trials() if trial.state == TrialState.PRUNED]
    assert all(trial.user_attrs["epochs"] < 6 or pruner != "median" for trial in pruned)
    epochs = sum(trial.user_attrs["epochs"] for trial in opened.get_trials())
    assert epochs < 10 * 6  # pruning saved training


def test_multi_objective_front_and_budget(trial_data, tmp_path):
    params = tiny_params(sampler="nsga2", pruner="none", trials=5, objectives=["val_accuracy", "params"],
                         space={"model": {"width": [2, 4, 16, 32]}})
    opened = run(params, trial_data, f"sqlite:///{tmp_path / 'study.db'}")
    front = choose.front(opened, params.search)
    assert front and all(len(trial.values) == 2 for trial in front)
    biggest = max(trial.values[1] for trial in front)
    budget = params.search.model_copy(update={"max_params": int(min(t.values[1] for t in front))})
    picked = choose.choose(opened, budget)
    figures = picked.figures
    assert figures["chosen_params"] <= budget.max_params <= biggest


def test_a_bigger_budget_continues_the_same_study(trial_data, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = run(tiny_params(trials=3), trial_data, url)
    numbers = [(trial.number, trial.datetime_start) for trial in first.get_trials()]
    again = run(tiny_params(trials=3), trial_data, url)  # already full: runs nothing
    assert [(t.number, t.datetime_start) for t in again.get_trials()] == numbers
    more = run(tiny_params(trials=5), trial_data, url)
    assert [(t.number, t.datetime_start) for t in more.get_trials()][:3] == numbers
    assert len(more.get_trials(states=study.FINISHED)) == 5
    assert sum(bool(t.user_attrs.get(study.REFERENCE_ATTR)) for t in more.get_trials()) == 1


def test_finished_trials_leave_their_weights(trial_data, tmp_path):
    opened = run(tiny_params(trials=2, pruner="none"), trial_data,
                 f"sqlite:///{tmp_path / 'study.db'}", tmp_path=tmp_path / "weights")
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == [
        "trial-0.json", "trial-0.pt", "trial-1.json", "trial-1.pt"]
    assert len(opened.trials) == 2


def test_values_already_trained_are_not_trained_again(trial_data, tmp_path):
    # the grid holds params.yaml's lr (0.003), which the reference trial trained first
    params = tiny_params(sampler="grid", pruner="none", trials=3,
                         space={"train": {"lr": [0.003, 0.03]}})
    trials = run(params, trial_data, f"sqlite:///{tmp_path / 'study.db'}").get_trials()
    assert sorted(trial.params["train.lr"] for trial in trials) == [0.003, 0.003, 0.03]
    repeat = next(trial for trial in trials if "repeats_trial" in trial.user_attrs)
    assert repeat.user_attrs["repeats_trial"] == 0 and repeat.user_attrs["epochs"] == 0
    assert repeat.value == trials[0].value


def test_latency_as_an_objective_is_measured_and_budgeted(trial_data, tmp_path):
    params = tiny_params(sampler="random", pruner="none", trials=3,
                         objectives=["val_accuracy", "latency_ms"],
                         space={"model": {"width": [8, 64], "depth": [1, 3]}})
    opened = run(params, trial_data, f"sqlite:///{tmp_path / 'study.db'}")
    trials = opened.get_trials(states=study.FINISHED)
    assert all(trial.values[1] == trial.user_attrs["latency_ms"] > 0 for trial in trials)
    # a budget no trial meets keeps params.yaml's config, and says why
    impossible = params.search.model_copy(update={"max_latency_ms": 1e-9})
    kept = choose.choose(opened, impossible)
    assert kept.values == {} and "max_latency_ms" in kept.reason

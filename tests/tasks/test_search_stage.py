"""Stage `search`: the study, the choice `baseline` trains, tracking, and a killed search resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from shrinkflow.config import load_params
from tasks.services.catalog import Catalog
from tasks.services.studies import storage_url
from tasks.stages.baseline import run_baseline
from tasks.stages.search import run_search, study_name
from tests.conftest import TINY

# a reference that cannot learn in 2 epochs (lr 1e-6) against one that can: the choice is certain
HOPELESS_REFERENCE = ["baseline.train.lr=1e-6", "search.epochs=2", "search.pruner=none",
                      "search.sampler=grid", "search.space={train: {lr: [1.0e-6, 0.01]}}"]


def read_choice(catalog):
    return json.loads(catalog.search_choice_file.read_text())


def params_for(project, *overrides):
    return load_params(project / "params.yaml", overrides=[*TINY, *overrides])


def open_study(project, params):
    catalog = Catalog.at(project)
    meta = json.loads(catalog.dataset_file().read_text())
    return optuna.load_study(study_name=study_name(params.search, params.baseline, "digits",
                                                   meta["raw_md5"]),
                             storage=storage_url(params.search, catalog))


def test_a_better_trial_is_what_baseline_trains(trained_project):
    from mlflow import MlflowClient

    # (the grid holds both lr values; the one equal to the reference's repeats it without training)
    params = params_for(trained_project, "search.trials=3", *HOPELESS_REFERENCE)
    summary = run_search(params, trained_project)
    choice = read_choice(Catalog.at(trained_project))
    assert choice["values"] == {"train.lr": 0.01} and choice["trial"] in (1, 2)
    assert summary["metrics"]["chosen_val_accuracy"] > summary["metrics"]["reference_val_accuracy"]
    # then: baseline trains the chosen lr, not params.yaml's
    # (for the full budget too, beside params.yaml's config, which it beats there as well)
    trained = run_baseline(params, trained_project)
    client = MlflowClient()
    baseline_run = client.get_run(trained["run_id"])
    assert baseline_run.data.params["baseline.train.lr"] == "0.01"
    assert "holds at the full budget" in baseline_run.data.tags["search"]
    metrics = trained["metrics"]
    assert metrics["val_accuracy"] > summary["metrics"]["reference_val_accuracy"]
    assert metrics["full_searched_val_accuracy"] > metrics["full_params_yaml_val_accuracy"]
    assert metrics["search_confirm_seconds"] > 0  # params.yaml's training, the search's extra cost
    assert metrics["search_confirmed"] == 1.0
    # and: the study's parent run has one nested run per trial, with its learning curve
    stage = client.get_run(summary["run_id"])
    assert stage.data.tags["study"] == choice["study"] and "optuna.db" in stage.data.tags["storage"]
    trials = client.search_runs([stage.info.experiment_id],
                                f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    assert sorted(run.info.run_name for run in trials) == ["trial-0", "trial-1", "trial-2"]
    trained_runs = [run for run in trials if run.data.metrics["epochs"] > 0]
    assert len(trained_runs) == 2
    for run in trained_runs:
        curve = client.get_metric_history(run.info.run_id, "epoch_val_accuracy")
        assert [point.step for point in curve] == [1, 2]
        assert run.data.tags["state"] == "COMPLETE" and "train.lr" in run.data.params
    report = Catalog.at(trained_project).report_dir("search")
    assert {"summary.md", "optimization_history.png", "intermediate_values.png"} <= {
        path.name for path in report.iterdir()}
    assert "0 (params.yaml)" in (report / "summary.md").read_text()


def write_choice(project, values, trial=3):
    Catalog.at(project).search_choice_file.write_text(json.dumps(
        {"values": values, "reason": f"trial {trial}: ...", "trial": trial}))


def baseline_with_choice(project, values, *overrides):
    from mlflow import MlflowClient

    write_choice(project, values)
    trained = run_baseline(params_for(project, *overrides), project)
    return trained["metrics"], MlflowClient().get_run(trained["run_id"]).data


def test_a_proposal_that_fails_at_the_full_budget_leaves_params_yaml(trained_project):
    # a learning rate that cannot learn in 2 epochs: its short trial was a fluke
    metrics, run = baseline_with_choice(trained_project, {"train.lr": 1.0e-6})
    assert run.params["baseline.train.lr"] == "0.003"
    assert "trial 3 does not hold at the full budget" in run.tags["search"]
    assert metrics["search_confirmed"] == 0.0
    assert metrics["full_params_yaml_val_accuracy"] > metrics["full_searched_val_accuracy"]
    assert metrics["val_accuracy"] == metrics["full_params_yaml_val_accuracy"]


@pytest.mark.parametrize(("within_se", "kept"), [(100.0, "searched"), (0.0, "params_yaml")])
def test_a_smaller_proposal_wins_within_the_tolerance(trained_project, within_se, kept):
    # 100 standard errors: any accuracy is close enough, so the smaller config is the teacher;
    # the same config of the same size (0: strictly) keeps params.yaml's, the incumbent
    values = {"model.width": 4} if kept == "searched" else {"model.width": 16}
    metrics, run = baseline_with_choice(trained_project, values, f"search.within_se={within_se}")
    assert metrics["params_count"] == metrics[f"full_{kept}_params"]
    assert run.params["baseline.model.width"] == str(values["model.width"] if kept == "searched"
                                                     else 16)
    if kept == "searched":
        assert metrics["full_searched_params"] < metrics["full_params_yaml_params"]


def test_params_yaml_stays_when_nothing_beats_it(trained_project):
    params = params_for(trained_project, "search.trials=2", "search.epochs=2", "search.pruner=none",
                        "search.sampler=grid", "search.space={train: {lr: [1.0e-6]}}")
    run_search(params, trained_project)
    choice = read_choice(Catalog.at(trained_project))
    assert choice["values"] == {} and choice["trial"] is None
    assert "no trial beat params.yaml's config" in choice["reason"]


def test_disabled_search_keeps_params_yaml(trained_project):
    summary = run_search(params_for(trained_project, "search.enabled=false"), trained_project)
    assert read_choice(Catalog.at(trained_project)) == {
        "values": {}, "reason": "search.enabled is false", "trial": None}
    assert summary["metrics"] == {}


def _search_command(project, *overrides):
    sets = [arg for override in overrides for arg in ("--set", override)]
    shrinkflow = Path(sys.executable).parent / "shrinkflow"
    return subprocess.Popen([str(shrinkflow), "stage", "search", *sets], cwd=project,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(study_of, condition, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            trials = study_of().get_trials(deepcopy=False)
        except KeyError:  # the study is not created yet
            trials = []
        if condition(trials):
            return trials
        time.sleep(0.2)
    raise AssertionError(f"the search never reached the expected state: {trials}")


@pytest.mark.integration  # a search in a subprocess, killed
def test_a_killed_search_resumes_without_repeating_trials(trained_project):
    overrides = [*TINY, "search.trials=4", "search.epochs=25", "search.pruner=none",
                 "search.sampler=random", "search.heartbeat_s=1",
                 "search.space={train: {lr: {low: 0.001, high: 0.01, log: true}}}"]
    params = load_params(trained_project / "params.yaml", overrides=overrides)
    # given: a search killed while its second trial trains
    command = _search_command(trained_project, *overrides)
    try:
        before = _wait_for(lambda: open_study(trained_project, params), lambda trials: any(
            t.state == TrialState.COMPLETE for t in trials) and any(
            t.state == TrialState.RUNNING and t.params for t in trials))  # its values drawn
    finally:
        command.send_signal(signal.SIGKILL)
        command.wait()
    done = {t.number: (t.params, t.datetime_complete) for t in before if t.state == TrialState.COMPLETE}
    killed = next(t for t in before if t.state == TrialState.RUNNING and t.params)
    time.sleep(3 * params.search.heartbeat_s + 1)  # its heartbeat is stale by now
    # when: the same search runs again
    run_search(params, trained_project)
    # then: the finished trials are kept, not repeated, and the budget is filled
    after = open_study(trained_project, params).get_trials()
    assert {t.number: (t.params, t.datetime_complete) for t in after if t.number in done} == done
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in after) == 4
    assert after[killed.number].state == TrialState.FAIL
    retried = [t for t in after if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params
    assert retried[0].state == TrialState.COMPLETE
    assert sum(bool(t.user_attrs.get("reference")) and t.state == TrialState.COMPLETE
               for t in after) == 1


@pytest.mark.parametrize("storage", ["SHRINKFLOW_SEARCH_STORAGE"])
def test_the_environment_chooses_the_storage(trained_project, tmp_path, monkeypatch, storage):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    monkeypatch.setenv(storage, url)
    Catalog.at(trained_project).search_db.unlink()  # the session fixture searched there
    params = params_for(trained_project)
    run_search(params, trained_project)
    assert read_choice(Catalog.at(trained_project))["storage"] == url
    assert len(open_study(trained_project, params).trials) == 1
    assert not Catalog.at(trained_project).search_db.exists()

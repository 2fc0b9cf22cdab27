"""The search on shared services: a study on a real PostgreSQL server, trials on Dask workers."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from shrinkflow.search import study
from tasks.catalog import Catalog
from tasks.search import run_search
from tasks.studies import STORAGE_VARIABLE
from tests import postgres
from tests.conftest import TINY

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres_url() -> str:
    reason = postgres.missing_reason()
    if reason:
        pytest.skip(reason)
    with postgres.running_postgres() as url:
        yield url


def test_a_study_on_postgresql_completes_with_two_dask_workers(trained_project, postgres_url,
                                                                monkeypatch):
    from shrinkflow.config import load_params

    monkeypatch.setenv(STORAGE_VARIABLE, postgres_url)
    params = load_params(trained_project / "params.yaml", overrides=[
        *TINY, "search.trials=6", "search.epochs=2", "search.pruner=none", "search.workers=2",
        "search.sampler=random", "search.study=shared-study"])
    # when
    summary = run_search(params, trained_project)
    # then: the study lives in PostgreSQL, with every trial of the budget, trained by two workers
    choice = json.loads(Catalog.at(trained_project).search_choice_file.read_text())
    assert choice["storage"].startswith("postgresql://")
    trials = optuna.load_study(study_name="shared-study",
                               storage=study.with_driver(postgres_url)).get_trials()
    finished = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    assert len(finished) >= 6 and summary["metrics"]["trials_complete"] == len(finished)
    assert len({trial.user_attrs["worker"] for trial in finished}) == 2
    # each worker samples with its own seed: no two trials train the same values
    assert len({tuple(sorted(trial.params.items())) for trial in finished}) == len(finished)


@pytest.fixture
def dask_scheduler(trained_project, tmp_path):
    """A Dask scheduler and two single-threaded workers in their own processes on 127.0.0.1, as
    on shared machines: the workers import the project's code from its folder and report to this
    session's Prefect API."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from distributed import Client

    from tasks.studies import worker_env

    dask = str(Path(sys.executable).parent / "dask")
    env = {**os.environ, **worker_env(), "PYTHONPATH": str(trained_project),
           "OMP_NUM_THREADS": "1"}
    address_file = tmp_path / "scheduler.json"
    processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--no-dashboard", "--scheduler-file", str(address_file)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not address_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(address_file.read_text())["address"]
        processes += [subprocess.Popen([dask, "worker", address, "--nthreads", "1",
                                        "--no-dashboard", "--host", "127.0.0.1"],
                                       cwd=trained_project, env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                      for _ in range(2)]
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)


def test_trials_run_on_an_existing_scheduler_named_in_the_environment(trained_project,
                                                                      dask_scheduler,
                                                                      monkeypatch):
    import os

    from shrinkflow.config import load_params
    from tasks.studies import SCHEDULER_VARIABLE

    monkeypatch.setenv(SCHEDULER_VARIABLE, dask_scheduler)
    params = load_params(trained_project / "params.yaml", overrides=[
        *TINY, "search.trials=4", "search.epochs=2", "search.pruner=none", "search.workers=2",
        "search.sampler=random", "search.study=remote-study"])
    # when
    run_search(params, trained_project)
    # then: every trial was trained by the scheduler's workers, none by this process
    url = f"sqlite:///{Catalog.at(trained_project).search_db}"
    finished = [trial for trial in optuna.load_study(study_name="remote-study", storage=url
                                                     ).get_trials()
                if trial.state == TrialState.COMPLETE]
    workers = {trial.user_attrs["worker"] for trial in finished}
    assert len(finished) >= 4 and workers
    assert not any(worker.endswith(f":{os.getpid()}") for worker in workers)
    # and their trial files are in the project, where the scheduler's workers wrote them
    assert any(Catalog.at(trained_project).search_trials_dir("remote-study").glob("trial-*.pt"))

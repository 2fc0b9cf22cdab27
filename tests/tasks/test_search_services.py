"""The search on shared services: a study on a real PostgreSQL server, trials on two local Dask
workers. (Trials on the workers of a running scheduler: tests/flows/test_stack.py.)"""

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

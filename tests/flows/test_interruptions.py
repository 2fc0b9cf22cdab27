"""A run that is killed, or started twice, loses nothing: `shrinkflow run` as a user runs it.

Two whole runs (one killed half-way) and a third from the cache: in `make test-slow` (which CI
runs), not in `make test`."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tasks.services import io
from tasks.services.catalog import Catalog
from tasks.services.environment import STAGES_AT_ONCE_VARIABLE
from tasks.services.lock import project_lock
from tasks.services.tracking import PROJECT_TAG
from tests.conftest import copy_project
from tests.flows.conftest import command_env, mlflow_client, pipeline, tiny_params_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KILL_DEADLINE_S = 300


def _runs(project: Path, name: str | None = None) -> list:
    client = mlflow_client()
    experiment = client.get_experiment_by_name("shrinkflow")
    if experiment is None:
        return []
    named = f" and attributes.run_name = '{name}'" if name else ""
    return client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`{PROJECT_TAG}` = '{project}'{named}")


def _kill_during_training(project: Path) -> None:
    """Start `shrinkflow run` and SIGKILL it (and its children) while the distilled student
    trains (one stage at a time: prune has finished by then)."""
    process = subprocess.Popen(["shrinkflow", "run"], cwd=project, env=command_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + KILL_DEADLINE_S
    try:
        while not any(run.info.status == "RUNNING" for run in _runs(project, "student-kd")):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the distill stage never started"
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _quality(compare: dict) -> dict:
    """What a run computes, timings aside: each candidate's accuracies and size."""
    return {name: {key: row[key] for key in ("val_accuracy", "accuracy", "size_bytes")}
            for name, row in compare["candidates"].items()}


@pytest.fixture(scope="module")
def interrupted(reference, tmp_path_factory) -> dict:
    """A project whose first `shrinkflow run` was killed in the distill stage, then run again;
    both one stage at a time, whatever the cores."""
    project = copy_project(tmp_path_factory.mktemp("killed") / "project")
    tiny_params_file(project)  # the reference run's configuration
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STAGES_AT_ONCE_VARIABLE, "1")
        _kill_during_training(project)
        killed = {run.info.run_id: run.info.run_name for run in _runs(project)
                  if run.info.status == "RUNNING"}
        finished = {run.info.run_name: run.info.run_id for run in _runs(project)
                    if run.info.status == "FINISHED"}
        leftovers = sorted(str(path.relative_to(project)) for folder in ("models", "data")
                           for path in (project / folder).glob(".*"))
        rerun = pipeline(root=str(project))
    return {"project": project, "killed": killed, "finished": finished, "leftovers": leftovers,
            "rerun": rerun}


def test_a_killed_run_is_finished_by_the_next_from_the_cache(interrupted):
    # given: the kill left the distill stage half-way: its staging folder, and open MLflow runs
    killed = {name.split(" (")[0] for name in interrupted["killed"].values()}  # pipeline (manual)
    assert {"pipeline", "distill", "student-kd"} <= killed
    assert any(".distilled." in path for path in interrupted["leftovers"])
    # then: the stages the killed run finished came from the cache
    rerun = interrupted["rerun"]
    for stage in ("prepare", "search", "baseline", "prune"):
        assert rerun["stages"][stage]["run_id"] == interrupted["finished"][stage], \
            f"{stage} finished before the kill and should come from the cache"
    # and: nothing half-written is left, and the killed runs are marked failed
    project = interrupted["project"]
    assert [path for folder in ("models", "data") for path in (project / folder).glob(".*")] == []
    client = mlflow_client()
    assert {client.get_run(run_id).info.status for run_id in interrupted["killed"]} == {"FAILED"}


def test_the_finished_run_computes_what_an_uninterrupted_one_does(interrupted, reference):
    # then: same config and seed on the CPU, same numbers: the reference ran without a kill, with
    # independent stages at once in processes of their own; these runs went one stage at a time
    compare = io.read_candidates(Catalog.at(interrupted["project"]), "compare")
    assert _quality(compare) == _quality(reference["compare"])


def test_a_second_run_waits_for_the_first_then_comes_from_the_cache(interrupted):
    project = interrupted["project"]
    # given: a run holds the checkout (this test, for as long as it likes)
    with project_lock(project):
        second = subprocess.Popen(["shrinkflow", "run"], cwd=project, env=command_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        # then: the second one waits
        assert second.poll() is None, "a second run should wait for the first"
    # and: once the first is done it proceeds, every stage from the cache
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    assert "waiting for the run in" in err and "pid" in err, err[-3000:]
    assert err.count("Cached(type=COMPLETED)") == len(interrupted["rerun"]["stages"]), err[-3000:]

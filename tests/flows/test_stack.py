"""The pipeline on the service stack (infra/stack.py), pointed at it by environment variables only:
MLflow runs in PostgreSQL and artifacts in S3, the study in PostgreSQL, trials on both of the
stack's Dask workers, the flow run on its Prefect server, and DVC outputs pushed to S3 and pulled back into an
empty clone."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tasks.services.catalog import tree_digest
from tests import postgres
from tests.flows.conftest import make_dvc_project, run
from tests.services import skip_or_fail

# the service stack (about 3 minutes on 2 cores) runs with the accuracy targets, in make test-slow
pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "infra"))
import stack  # noqa: E402  (infra/ is scripts, not a package)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="module")
def stack_env() -> Iterator[tuple[stack.Settings, dict[str, str]]]:
    """The whole stack on free ports, in a folder the postgres user may enter; stopped after."""
    reason = postgres.missing_reason()
    if reason:
        skip_or_fail(reason, "SHRINKFLOW_REQUIRE_STACK")
    with tempfile.TemporaryDirectory(prefix="shrinkflow-stack-") as name:
        Path(name).chmod(0o755)
        settings = stack.Settings(Path(name), dict(zip(stack.DEFAULT_PORTS, _free_ports(5),
                                                       strict=True)))
        with stack.running(settings) as env:
            yield settings, env


def _project_run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A command as a user runs it after `. .stack/stack.env`: the stack's variables win over
    the test session's (its Prefect API and MLflow store)."""
    done = run(command, cwd, **env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def stacked_run(stack_env, tmp_path_factory) -> dict:
    settings, env = stack_env
    # a search of 6 trials on 2 workers: the study is shared through PostgreSQL
    project = make_dvc_project(tmp_path_factory.mktemp("stacked") / "project", "search.trials=6",
                               "search.epochs=2", "search.workers=2", "search.sampler=random",
                               "search.pruner=none")
    _project_run(["shrinkflow", "run"], project, env)
    return {"settings": settings, "env": env, "project": project}


def test_runs_in_postgresql_and_artifacts_in_s3(stacked_run):
    import boto3
    import sqlalchemy
    from mlflow import MlflowClient

    settings, env = stacked_run["settings"], stacked_run["env"]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([experiment.experiment_id
                               for experiment in client.search_experiments()])
    names = {run.info.run_name for run in runs}
    assert {"prepare", "search", "baseline", "compare", "deploy"} <= names
    assert any(name.startswith("pipeline (") for name in names)
    # the server's store is the PostgreSQL database, not a file of the project
    engine = sqlalchemy.create_engine(settings.database("mlflow", "postgresql+psycopg"))
    with engine.connect() as connection:
        stored = connection.execute(sqlalchemy.text("SELECT count(*) FROM runs")).scalar()
    engine.dispose()
    assert stored == len(runs)
    assert not (stacked_run["project"] / "mlflow.db").exists()
    # artifacts went through the server into the bucket
    baseline = next(run for run in runs if run.info.run_name == "baseline")
    assert baseline.info.artifact_uri.startswith("mlflow-artifacts:")
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    keys = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=settings.bucket, Prefix="mlflow/") for item in page.get("Contents", [])]
    assert any(key.endswith(f"{baseline.info.run_id}/artifacts/weights/model.pt") for key in keys)
    assert not (stacked_run["project"] / "mlartifacts").exists()
    # the registry is on the server too
    assert client.get_model_version_by_alias("shrinkflow-digits", "champion")


def test_study_in_postgresql_with_trials_on_the_stack_workers(stacked_run):
    import optuna
    from distributed import Client

    from tasks.services.studies import with_driver

    env = stacked_run["env"]
    summaries = optuna.get_all_study_summaries(with_driver(env["SHRINKFLOW_SEARCH_STORAGE"]))
    assert summaries, "the search's study is in PostgreSQL"
    trials = [trial for summary in summaries for trial in optuna.load_study(
        study_name=summary.study_name, storage=with_driver(env["SHRINKFLOW_SEARCH_STORAGE"])
    ).get_trials() if trial.state.is_finished()]
    with Client(env["DASK_SCHEDULER_ADDRESS"], timeout=30) as dask:
        worker_pids = set(dask.run(os.getpid).values())
    trained_by = {int(trial.user_attrs["worker"].rsplit(":", 1)[1]) for trial in trials}
    assert len(trials) >= 6 and trained_by == worker_pids, "both workers of the stack trained"
    # each worker samples with its own seed: no two trials train the same values
    assert len({tuple(sorted(trial.params.items())) for trial in trials}) == len(trials)


def test_flow_run_on_the_prefect_server(stacked_run):
    import httpx

    api = stacked_run["env"]["PREFECT_API_URL"]
    found = httpx.post(f"{api}/flow_runs/filter", json={"limit": 50}, timeout=30).json()
    pipeline_runs = [flow_run for flow_run in found  # tagged with what started it (manual, ci)
                     if any(tag.startswith("trigger:") for tag in flow_run["tags"])]
    assert pipeline_runs and pipeline_runs[0]["state_type"] == "COMPLETED"


def _cached_outputs(project: Path) -> list[str]:
    """The outputs dvc.lock records that DVC caches and pushes (metrics and plots marked
    `cache: false` are git's to keep)."""
    uncached = {path for stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].values()
                for kind in ("outs", "metrics", "plots") for item in stage.get(kind, [])
                if isinstance(item, dict)
                for path, options in item.items() if (options or {}).get("cache") is False}
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return sorted({out["path"] for stage in lock["stages"].values()
                   for out in stage.get("outs", [])} - uncached)


def test_dvc_outputs_pushed_to_s3_and_pulled_into_an_empty_clone(stacked_run, tmp_path):
    project, env = stacked_run["project"], stacked_run["env"]
    outputs = _cached_outputs(project)
    assert outputs, "the run recorded its outputs in dvc.lock"
    # given: a clone with dvc.lock committed and nothing else: no outputs, no DVC cache
    _project_run(["git", "add", "dvc.lock"], project, {})
    _project_run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"],
                 project, {})
    clone = tmp_path / "clone"
    _project_run(["git", "clone", "-q", str(project), str(clone)], tmp_path, {})
    assert not any((clone / path).exists() for path in outputs)
    # when
    _project_run(["shrinkflow", "pull"], clone, env)
    # then: every output is back, byte for byte
    assert {path: tree_digest(clone / path) for path in outputs} == {
        path: tree_digest(project / path) for path in outputs}


def test_a_missing_bucket_stops_the_run_before_any_stage(stack_env, tmp_path):
    settings, env = stack_env
    project = make_dvc_project(tmp_path / "project")
    remote = "s3://no-such-bucket/dvc"
    done = run(["shrinkflow", "run"], project, **{**env, "SHRINKFLOW_DVC_REMOTE": remote})
    assert done.returncode == 1
    assert f"DVC remote 'shared' ({remote} at {env['AWS_ENDPOINT_URL']}): bucket 'no-such-bucket' " \
           "does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (project / "dvc.lock").exists() and not (project / "models").exists()


def _finished_flow_run(api: str, flow_run_id: str, timeout: float, log: Path) -> dict:
    """The flow run once it reaches a final state (waiting on the server's word for it)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=30).json()
        if found["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return found
        time.sleep(2)
    raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout:.0f} s\n"
                         f"{log.read_text()[-3000:] if log.exists() else ''}")


def test_a_deployment_on_the_stack_pool_is_run_by_its_worker(stack_env, tmp_path):
    import httpx

    settings, env = stack_env
    project = make_dvc_project(tmp_path / "project", "search.enabled=false",
                               "prune.structured.enabled=false", "prune.unstructured.enabled=false",
                               "distill.enabled=false", "quantize.methods=[fp16]")
    # given: the pipeline registered as a deployment of the stack's work pool
    made = _project_run(["shrinkflow", "schedule", "--cron", "0 3 * * *", "--pool", stack.POOL],
                        project, env)
    deployment = re.search(r"deployment (\S+) registered", made.stdout).group(1)
    api = env["PREFECT_API_URL"]
    # when: a run of it is asked for now
    flow_run = httpx.post(f"{api}/deployments/{deployment}/create_flow_run", json={},
                          timeout=30).json()
    # then: the stack's own worker picks it up and runs it to the end
    worker_log = settings.home / "logs" / "prefect-worker.log"
    finished = _finished_flow_run(api, flow_run["id"], 600, worker_log)
    assert finished["state_type"] == "COMPLETED", finished["state"]
    assert finished["work_pool_name"] == stack.POOL
    assert (project / "models" / "deploy" / "deploy.json").is_file(), "the worker ran it here"

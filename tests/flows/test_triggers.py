"""Unattended runs: the git hook starts a tagged run for a commit that changes the pipeline's
inputs and none for one that does not; a cron deployment on a real Prefect server is run by a
process worker and tagged `schedule`. Every run says what started it.

Both report to the module's own Prefect server. The cron test waits for the next minute and a
whole run, so it is in `make test-slow` (which CI runs), not in `make test`."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.flows.conftest import command_env, make_dvc_project, mlflow_client, run

pytestmark = pytest.mark.integration
SHRINKFLOW = str(Path(sys.executable).parent / "shrinkflow")
# the runs these tests start: the tiny params with only the baseline and one quantization
QUICK = [part for override in ("search.enabled=false", "prune.structured.enabled=false",
                               "prune.unstructured.enabled=false", "distill.enabled=false",
                               "quantize.methods=[fp16]") for part in ("--set", override)]
PREFECT = str(Path(sys.executable).parent / "prefect")


def commit_all(project: Path, message: str, **env: str) -> str:
    result = run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", message],
                 project, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr  # git shows a hook's output on stderr


def finished_run(filter_string: str, timeout: float, log: Path | None = None):
    """The pipeline run matching `filter_string`, once it has finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = mlflow_client().search_runs(
            [e.experiment_id for e in mlflow_client().search_experiments()],
            f"{filter_string} and tags.`shrinkflow.kind` = 'pipeline'")
        if runs and runs[0].info.status in ("FINISHED", "FAILED"):
            return runs[0]
        time.sleep(2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"no finished run for {filter_string} in {timeout:.0f} s\n{tail}")


@pytest.mark.slow  # a whole run in the background: make test-slow
def test_a_commit_starts_a_tagged_run_only_when_it_changes_an_input(api, dvc_project):
    mlflow_client().search_experiments()  # the store exists before the hook's run opens it
    assert run([SHRINKFLOW, "hooks", "install", *QUICK], dvc_project).returncode == 0
    (dvc_project / "README.md").write_text("# notes\n")
    run(["git", "add", "README.md"], dvc_project)
    # when: a commit of the README only
    said = commit_all(dvc_project, "docs", PREFECT_API_URL=api)
    # then: no run, and the hook says why
    assert "changes no pipeline input" in said and not (dvc_project / ".shrinkflow/runs").exists()
    # when: a commit of a param
    params = dvc_project / "params.yaml"
    params.write_text(params.read_text().replace("patience: 15", "patience: 14"))
    said = commit_all(dvc_project, "patience", PREFECT_API_URL=api)
    # then: a run in the background, tagged with the commit, says so in its name
    sha = run(["git", "rev-parse", "HEAD"], dvc_project).stdout.strip()
    assert "pipeline run started in the background" in said, said
    parent = finished_run(f"tags.`shrinkflow.trigger.ref` = '{sha}'", 300,
                          dvc_project / f".shrinkflow/runs/commit-{sha[:8]}.log")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["shrinkflow.trigger"] == "commit"
    assert parent.info.run_name == f"pipeline (commit {sha[:8]})"
    assert run([SHRINKFLOW, "hooks", "uninstall"], dvc_project).returncode == 0
    assert not (dvc_project / ".git/hooks/post-commit").exists()


def test_a_foreign_hook_is_left_alone_with_a_clear_error(dvc_project):
    hook = dvc_project / ".git/hooks/post-commit"
    hook.write_text("#!/bin/sh\necho mine\n")
    result = run([SHRINKFLOW, "hooks", "install"], dvc_project)
    assert result.returncode == 1 and "is not shrinkflow's" in result.stderr
    assert "Traceback" not in result.stderr and hook.read_text() == "#!/bin/sh\necho mine\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A real Prefect server on 127.0.0.1 with its scheduler running, its own database; its API."""
    port = _free_port()
    env = {**command_env(), "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise AssertionError("the Prefect server did not start in 120 s")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[str]:
    """The module's Prefect server: its API."""
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as url:
        yield url


@pytest.fixture(scope="module")
def scheduled(api, tmp_path_factory) -> Iterator[dict]:
    """The pipeline of a DVC project deployed on the module's Prefect server every minute on a
    process work pool, and a worker serving the pool (its output in `log`)."""
    folder = tmp_path_factory.mktemp("scheduled")
    project = make_dvc_project(folder / "project")
    env = {"PREFECT_API_URL": api, "PREFECT_HOME": str(project / ".prefect"),
           "PREFECT_WORKER_QUERY_SECONDS": "2"}
    made = run([PREFECT, "work-pool", "create", "shrinkflow", "--type", "process"], project,
               **env)
    assert made.returncode == 0, made.stderr
    made = run([SHRINKFLOW, "schedule", "--cron", "* * * * *", "--pool", "shrinkflow",
                *QUICK], project, **env)
    assert made.returncode == 0, made.stderr
    log = folder / "worker.log"
    with log.open("w") as output:
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "shrinkflow"],
                                  cwd=project, env=command_env(**env), stdout=output,
                                  stderr=subprocess.STDOUT)
    try:
        yield {"api": api, "log": log}
    finally:
        worker.terminate()
        try:  # a worker stops once its flow run ends: the next minute's may have started
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=60)


@pytest.mark.slow  # waits for the next minute, then a whole run: make test-slow
def test_a_cron_deployment_is_run_by_a_worker_and_tagged_schedule(scheduled):
    # given: the pipeline scheduled every minute on a pool that a worker serves (the fixture)
    # then: the scheduler's run completes, tagged `schedule` in Prefect and in MLflow
    flow_run = _completed_flow_run(scheduled["api"], 300, scheduled["log"])
    assert flow_run["auto_scheduled"] and "trigger:schedule" in flow_run["tags"]
    parent = finished_run("tags.`shrinkflow.trigger` = 'schedule'", 60)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "pipeline (schedule)"


def _completed_flow_run(api: str, timeout: float, log: Path) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # a deployment's runs only: the commit test's hook run reports to this server too
        runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {
            "deployment_id": {"is_null_": False},
            "state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}}}, timeout=10).json()
        if runs:
            assert runs[0]["state_type"] == "COMPLETED", log.read_text()[-3000:]
            return runs[0]
        time.sleep(3)
    raise AssertionError(f"no scheduled run finished in {timeout:.0f} s\n{log.read_text()[-3000:]}")

"""A real Prefect API (the test harness's temporary server) for every flow test, started once, and
one reference pipeline run in a git + DVC project that the flow tests share."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY, copy_project

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def pipeline(**arguments):
    """The Prefect flow (imported on first use: collecting the fast tests need not load Prefect)."""
    from flows.pipeline import pipeline as flow

    return flow(**arguments)


def mlflow_client():
    from mlflow import MlflowClient

    return MlflowClient()


def tiny_params_file(project: Path, *extra: str) -> None:
    """Write the TINY overrides (then `extra` ones) into the project's params.yaml (what DVC and
    dvc.lock see)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for assignment in (*TINY, *extra):
        key, value = assignment.split("=")
        section = params
        *parents, leaf = key.split(".")
        for part in parents:
            section = section[part]
        section[leaf] = yaml.safe_load(value)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run a command with the test interpreter's bin/ (shrinkflow, dvc) first on PATH."""
    return subprocess.run(command, cwd=cwd, env=command_env(**env), capture_output=True,
                          text=True, timeout=600)


def command_env(**extra: str) -> dict[str, str]:
    """The environment of a command a user runs next to the tests: the same stores and, when the
    test harness runs one, the same Prefect API (no temporary server of its own)."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return {**env, **extra}


def make_dvc_project(destination: Path, *extra: str) -> Path:
    """A git + DVC repository holding the project with tiny params (and `extra` overrides) and a
    local remote."""
    project = copy_project(destination)
    tiny_params_file(project, *extra)
    shutil.copytree(REPO / ".dvc", project / ".dvc",
                    ignore=shutil.ignore_patterns("tmp", "cache", "site_cache", "config.local"))
    for name in (".dvcignore", ".gitignore"):
        shutil.copy2(REPO / name, project / name)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        assert run(command, project).returncode == 0
    return project


@pytest.fixture
def dvc_project(tmp_path: Path) -> Path:
    return make_dvc_project(tmp_path / "project")


@pytest.fixture(scope="session")
def reference(prefect_api, tmp_path_factory) -> dict:
    """One uninterrupted pipeline run through Prefect on the tiny params.yaml of a git + DVC
    project (so it records dvc.lock): the project, the flow's result and Prefect id, and compare's
    report (every candidate's figures) as the run left it. Modules that change the project put it back as they
    found it.

    It runs the stages that do not wait for each other at once, each in a process of its own, as
    on a machine with the cores for it (a test worker has one core: its other runs go one stage at
    a time, and test_interruptions checks that they compute the same)."""
    from tasks.services import io
    from tasks.services.catalog import Catalog
    from tasks.services.environment import STAGES_AT_ONCE_VARIABLE

    project = make_dvc_project(tmp_path_factory.mktemp("reference") / "project")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STAGES_AT_ONCE_VARIABLE, "2")
        state = pipeline(root=str(project), return_state=True)
    return {"project": project, "result": state.result(),
            "flow_run_id": state.state_details.flow_run_id,
            "compare": io.read_candidates(Catalog.at(project), "compare")}

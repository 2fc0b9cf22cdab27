"""A real Prefect API (the test harness's temporary server) for every flow test, started once."""

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


def tiny_params_file(project: Path) -> None:
    """Write the TINY overrides into the project's params.yaml (what DVC and dvc.lock see)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for assignment in TINY:
        key, value = assignment.split("=")
        section = params
        *parents, leaf = key.split(".")
        for part in parents:
            section = section[part]
        section[leaf] = yaml.safe_load(value)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a command with the test interpreter's bin/ (shrinkflow, dvc) first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def dvc_project(tmp_path: Path) -> Path:
    """A git + DVC repository holding the project with tiny params and a local remote."""
    project = copy_project(tmp_path / "project")
    tiny_params_file(project)
    shutil.copytree(REPO / ".dvc", project / ".dvc",
                    ignore=shutil.ignore_patterns("tmp", "cache", "site_cache", "config.local"))
    for name in (".dvcignore", ".gitignore"):
        shutil.copy2(REPO / name, project / name)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        assert run(command, project).returncode == 0
    return project

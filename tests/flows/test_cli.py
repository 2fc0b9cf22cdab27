"""The `shrinkflow` command line: help, config checks and clear refusals."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import REPO
from tests.flows.conftest import run

runner = CliRunner()


def test_help_lists_the_commands():
    result = run(["shrinkflow", "--help"], REPO)
    assert result.returncode == 0
    for command in ("run", "stage", "check", "dvc-yaml", "ui"):
        assert command in result.stdout


def test_check__prints_the_resolved_configuration(project, monkeypatch):
    monkeypatch.chdir(project)
    result = runner.invoke(app, ["check", "--set", "baseline.train.epochs=3"])
    assert result.exit_code == 0, result.output
    assert "epochs: 3" in result.output


def test_check__unknown_key_exits_2_naming_it(project, monkeypatch):
    monkeypatch.chdir(project)
    result = runner.invoke(app, ["check", "--set", "baseline.train.lrate=0.1"])
    assert result.exit_code == 2
    assert "baseline.train.lrate" in result.output


def test_stage__unknown_name_exits_2_listing_stages(project, monkeypatch):
    monkeypatch.chdir(project)
    result = runner.invoke(app, ["stage", "train"])
    assert result.exit_code == 2
    assert "prepare" in result.output and "baseline" in result.output


@pytest.mark.integration
def test_run__a_user_error_prints_its_message_without_a_traceback(prefect_api, project):
    # given: a CSV source whose file does not exist
    args = ["shrinkflow", "run", "--set", "prepare.source=csv",
            "--set", "prepare.csv.path=data/external/missing.csv"]
    # when
    result = run(args, project)
    # then: the message, a failure status, and no Python traceback, neither from the command nor
    # from Prefect's logs of the failed task and flow
    assert result.returncode == 1, result.stderr
    assert "prepare.csv.path: file not found" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def test_stage__a_missing_upstream_output_names_the_stage_without_a_traceback(project, monkeypatch):
    monkeypatch.chdir(project)
    # when
    result = runner.invoke(app, ["stage", "baseline"])
    # then
    assert result.exit_code == 1
    assert "run the 'prepare' stage first" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    # and: --debug lets the error through, traceback and all
    debug = runner.invoke(app, ["stage", "baseline", "--debug"])
    assert isinstance(debug.exception, FileNotFoundError)


def test_dvc_yaml__check_passes_on_the_shipped_file_and_fails_on_a_stale_one(project, monkeypatch):
    monkeypatch.chdir(project)
    assert runner.invoke(app, ["dvc-yaml", "--check"]).exit_code == 0
    (project / "dvc.yaml").write_text((project / "dvc.yaml").read_text().replace(
        "      - shrinkflow/gate.py\n", ""))
    stale = runner.invoke(app, ["dvc-yaml", "--check"])
    assert stale.exit_code == 1 and "out of date" in stale.output
    assert runner.invoke(app, ["dvc-yaml"]).exit_code == 0
    assert runner.invoke(app, ["dvc-yaml", "--check"]).exit_code == 0

"""The `shrinkflow` command line: help, config checks and clear refusals."""

from __future__ import annotations

from typer.testing import CliRunner

from flows.cli import app
from tests.conftest import REPO
from tests.flows.conftest import run

runner = CliRunner()


def test_help_lists_the_commands():
    result = run(["shrinkflow", "--help"], REPO)
    assert result.returncode == 0
    for command in ("run", "stage", "check", "ui"):
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

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


def test_check__builds_a_teams_own_network_on_the_data_and_names_what_does_not_fit(
        project, monkeypatch):
    # given: the team's residual network, in a module of the project
    (project / "team_nets.py").write_text((REPO / "tests" / "core" / "nets.py").read_text())
    monkeypatch.chdir(project)
    custom = ["--set", "baseline.model.family=custom",
              "--set", "baseline.model.class_path=team_nets:ResidualNet"]
    # when: its init_args fit the digits' one channel
    fits = runner.invoke(app, ["check", *custom, "--set",
                               "baseline.model.init_args={in_channels: 1, n_classes: 10}"])
    # then
    assert fits.exit_code == 0, fits.output
    assert "checked: baseline.model: team_nets:ResidualNet maps digits's inputs (1, 8, 8) to 10 " \
           "classes" in fits.output
    # when: they do not (3 channels), or a torchvision name is misspelt
    for wrong, said in ((custom, "expected input[2, 1, 8, 8] to have 3 channels"),
                        (["--set", "baseline.model.family=torchvision",
                          "--set", "baseline.model.arch=mobilenet_v3_smal"],
                         "did you mean mobilenet_v3_small")):
        result = runner.invoke(app, ["check", *wrong])
        assert result.exit_code == 1 and said in result.output, result.output
        assert "Traceback" not in result.output


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

"""What started a run, and which commits change the pipeline's inputs (as the cache sees them)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shrinkflow.errors import UserError
from tasks.services import triggers
from tests.conftest import copy_project


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          cwd=project, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repository(tmp_path) -> Path:
    project = copy_project(tmp_path / "project")
    (project / "README.md").write_text("# my project\n")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "init")
    return project


def commit(project: Path, relative: str, edit) -> list[str]:
    path = project / relative
    path.write_text(edit(path.read_text()))
    git(project, "commit", "-qam", f"edit {relative}")
    return triggers.changed_stages(project)


def test_a_first_commit_changes_every_stage(repository):
    assert triggers.changed_stages(repository) == list(triggers.dag.STAGES)


def test_docs_and_comments_change_nothing(repository):
    assert commit(repository, "README.md", lambda text: text + "\nmore words\n") == []
    assert commit(repository, "params.yaml", lambda text: "# a comment\n" + text) == []


def test_a_param_changes_the_stages_that_read_it(repository):
    changed = commit(repository, "params.yaml",
                     lambda text: text.replace("patience: 15", "patience: 14"))
    assert "baseline" in changed and "prune" in changed  # prune fine-tunes with baseline.train
    assert "prepare" not in changed and "compare" not in changed


def test_code_changes_the_stages_that_import_it(repository):
    changed = commit(repository, "tasks/stages/compare.py", lambda text: text + "\n# edited\n")
    assert "compare" in changed and "baseline" not in changed and "prepare" not in changed


def test_source_data_changes_the_stages_that_read_it(repository):
    (repository / "data" / "external" / "mine.csv").write_text("a,label\n1,0\n")
    git(repository, "add", "data/external/mine.csv")
    git(repository, "commit", "-qm", "data")
    assert triggers.changed_stages(repository) == ["prepare"]


def test_an_overlay_counts_as_params(repository):
    changed = commit(repository, "configs/mnist1d.yaml", lambda text: text + "\nmeasure:\n  warmup: 7\n")
    assert changed == []  # not in use
    with_overlay = triggers.changed_stages(repository, overlays=["configs/mnist1d.yaml"])
    assert "compare" in with_overlay


@pytest.mark.parametrize(("environ", "scheduled", "expected"), [
    ({}, False, triggers.Trigger("manual")),
    ({}, True, triggers.Trigger("schedule")),
    ({"CI": "true", "GITHUB_SHA": "abc"}, False, triggers.Trigger("ci", "abc")),
    ({"GITHUB_ACTIONS": "true"}, False, triggers.Trigger("ci")),
    ({"SHRINKFLOW_TRIGGER": "commit", "SHRINKFLOW_TRIGGER_REF": "f00d", "CI": "true"}, True,
     triggers.Trigger("commit", "f00d")),  # the starter's word wins
])
def test_the_trigger_of_a_run(environ, scheduled, expected):
    found = triggers.current(environ, scheduled)
    assert found == expected
    assert found.tags[triggers.TAG] == expected.kind
    assert found.label.startswith(expected.kind)


def test_an_unknown_trigger_is_a_clear_error():
    with pytest.raises(UserError, match="SHRINKFLOW_TRIGGER='cron'"):
        triggers.current({"SHRINKFLOW_TRIGGER": "cron"})

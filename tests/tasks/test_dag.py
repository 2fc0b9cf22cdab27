"""tasks.dag: the stages declared once, their code dependencies derived from imports."""

from __future__ import annotations

import pytest

from shrinkflow.config import load_params
from tasks import dag
from tasks.stages import stage_key
from tests.conftest import REPO, TINY


def test_dvc_yaml_is_written_from_the_declared_stages():
    # then: the committed dvc.yaml is exactly what the declarations produce
    assert (REPO / "dvc.yaml").read_text() == dag.dvc_yaml(REPO), \
        "dvc.yaml is out of date: run `shrinkflow dvc-yaml`"


def test_code_deps_follow_imports_inside_functions_and_through_other_modules():
    # tasks/candidates.py imports shrinkflow.sparse inside a function; compare reaches it only
    # through tasks/candidates.py
    assert "shrinkflow/sparse.py" in dag.code_deps("compare")
    # baseline trains with the augmentation in shrinkflow/data.py, compare times through
    # shrinkflow/export.py: both were missing from hand-written lists
    assert "shrinkflow/data.py" in dag.code_deps("baseline")
    assert "shrinkflow/export.py" in dag.code_deps("compare")
    # and a module a stage never imports is not its dependency
    assert "shrinkflow/gate.py" not in dag.code_deps("prepare")
    assert "tasks/compare.py" not in dag.code_deps("baseline")


def test_code_deps_see_a_new_module_imported_deep_down(project):
    # given: a new module imported (lazily, inside a function) by shrinkflow/gate.py
    (project / "shrinkflow" / "tiebreak.py").write_text("RULE = 'size'\n")
    gate = project / "shrinkflow" / "gate.py"
    gate.write_text(gate.read_text() + "\n\ndef _rule():\n    from shrinkflow.tiebreak import RULE\n"
                    "    return RULE\n")
    # then: exactly the stages that import gate.py depend on it
    users = {name for name in dag.STAGES if "shrinkflow/tiebreak.py" in dag.code_deps(name, project)}
    assert users == {"compare", "deploy"}


@pytest.mark.parametrize(("edited", "expected"), [
    ("shrinkflow/gate.py", {"compare", "deploy"}),
    ("shrinkflow/distill.py", {"prune", "distill", "recipes"}),
    ("shrinkflow/data.py", set(dag.STAGES)),
])
def test_a_comment_in_a_module_changes_the_keys_of_exactly_the_stages_importing_it(
        project, edited, expected):
    params = load_params(project / "params.yaml", overrides=TINY)
    before = {name: stage_key(name, params, project) for name in dag.STAGES}
    # when: a comment is added deep in the code
    path = project / edited
    path.write_text(path.read_text() + "\n# a comment\n")
    # then
    after = {name: stage_key(name, params, project) for name in dag.STAGES}
    assert {name for name in dag.STAGES if after[name] != before[name]} == expected


def test_stage_key_changes_with_a_data_input_and_a_declared_param(project):
    params = load_params(project / "params.yaml", overrides=TINY)
    before = stage_key("prepare", params, project)
    (project / "data" / "external" / "new.csv").write_text("a,label\n1,0\n")
    assert stage_key("prepare", params, project) != before, "a new input file changes the key"
    # a param of another stage does not change it; one of its own does
    other = load_params(project / "params.yaml", overrides=[*TINY, "compare.max_accuracy_drop_pp=1"])
    assert stage_key("prepare", other, project) == stage_key("prepare", params, project)
    own = load_params(project / "params.yaml", overrides=[*TINY, "prepare.seed=3"])
    assert stage_key("prepare", own, project) != stage_key("prepare", params, project)

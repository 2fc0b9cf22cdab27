"""tasks.services.dag: the stages declared once, their code dependencies derived from imports."""

from __future__ import annotations

import pytest

from shrinkflow.config import load_params
from tasks.services import dag
from tasks.services.runner import stage_key
from tests.conftest import REPO, TINY


def test_dvc_yaml_is_written_from_the_declared_stages():
    # then: the committed dvc.yaml is exactly what the declarations produce
    assert (REPO / "dvc.yaml").read_text() == dag.dvc_yaml(REPO), \
        "dvc.yaml is out of date: run `shrinkflow dvc-yaml`"


def test_code_deps_follow_imports_inside_functions_and_through_other_modules():
    # tasks/services/candidates.py imports shrinkflow.sparse inside a function; compare reaches it only
    # through tasks/services/candidates.py
    assert "shrinkflow/sparse.py" in dag.code_deps("compare")
    # baseline trains with the augmentation in shrinkflow/data.py, compare times through
    # shrinkflow/export.py: both were missing from hand-written lists
    assert "shrinkflow/data.py" in dag.code_deps("baseline")
    assert "shrinkflow/export.py" in dag.code_deps("compare")
    # and a module a stage never imports is not its dependency
    assert "shrinkflow/gate.py" not in dag.code_deps("prepare")
    assert "tasks/stages/compare.py" not in dag.code_deps("baseline")


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


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def test_every_input_is_made_by_an_earlier_stage_or_is_external():
    # then: each stage reads only what a stage declared before it writes (a file of an output
    # folder, or a folder of outputs), or what comes from outside the pipeline
    made: list[str] = []
    for name, item in dag.STAGES.items():
        for path in item.inputs:
            assert any(_inside(path, out) or _inside(out, path) for out in made) or \
                any(_inside(path, external) for external in dag.EXTERNAL), \
                f"{name} reads {path}, which no stage before it writes and which is not external"
        made += item.outputs


def test_each_candidate_folder_is_written_by_exactly_one_stage():
    writers: dict[str, list[str]] = {}
    for name, item in dag.STAGES.items():
        for path in item.outputs:
            writers.setdefault(path, []).append(name)
    folders = [item.candidates_dir for item in dag.STAGES.values() if item.candidates_dir]
    # then: six stages make candidates, each in a models/ folder of its own
    assert folders == ["models/baseline", "models/pruned", "models/distilled", "models/quantized",
                       "models/ensemble", "models/searched"]
    assert all(len(writers[folder]) == 1 for folder in folders), writers
    models = [item.models_dir for item in dag.STAGES.values() if item.models_dir]
    assert len(models) == len(set(models)), "a models/ folder should have one writer"
    # and: no output of one stage is inside another's
    outputs = [path for item in dag.STAGES.values() for path in item.outputs]
    assert not [(a, b) for a in outputs for b in outputs if a != b and _inside(a, b)]


def test_stages_read_the_candidate_folders_of_the_stages_before_them():
    # then: quantize, ensemble, compare and deploy read every candidate folder declared before
    # them, in the declared order (what compare's `kind` column and dvc.yaml list)
    assert dag.candidate_stages("quantize") == ("baseline", "prune", "distill")
    assert dag.candidate_stages("ensemble") == ("baseline", "prune", "distill", "quantize")
    assert dag.candidate_stages("compare") == dag.candidate_stages("deploy") == (
        "baseline", "prune", "distill", "quantize", "ensemble", "recipes")
    assert dag.STAGES["quantize"].inputs == ("models/baseline", "models/pruned",
                                             "models/distilled", "data/processed")
    # and: a stage's folder is asked of the declarations
    from tasks.services.catalog import Catalog

    assert Catalog.at(REPO).models_dir("recipes") == REPO / "models" / "searched"
    with pytest.raises(KeyError, match="compare"):
        Catalog.at(REPO).models_dir("compare")


def test_dependencies_are_derived_from_what_the_stages_read():
    # then: a stage waits for the stages whose outputs it reads (prepare: data/processed)
    for branch in ("prune", "distill", "recipes"):
        assert dag.upstream(branch) == ("prepare", "baseline"), branch
    assert dag.upstream("baseline") == ("prepare", "search")
    assert dag.upstream("quantize") == ("prepare", "baseline", "prune", "distill")
    assert dag.upstream("ensemble") == ("prepare", "baseline", "prune", "distill", "quantize")
    assert set(dag.upstream("deploy")) == set(dag.STAGES) - {"search", "deploy"}
    # and: prune, distill and recipes may run at once, as quantize and ensemble beside recipes
    assert set(dag.independent("prune")) == {"distill", "recipes"}
    assert set(dag.independent("recipes")) == {"prune", "distill", "quantize", "ensemble"}
    assert dag.independent("compare") == ()
    assert dag.width() == 3 and dag.width("quantize") == 2 and dag.width("baseline") == 1
    # and: the declared order is a topological one: every stage comes after those it waits for
    order = list(dag.STAGES)
    assert all(order.index(other) < order.index(name)
               for name in dag.STAGES for other in dag.upstream(name))


def test_a_users_model_code_is_a_dep_of_the_stages_that_build_networks(project):
    # given: the user's own package, whose model module imports a sibling
    package = project / "nets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text("import torch\nfrom nets.blocks import Block\n")
    (package / "blocks.py").write_text("Block = None\n")
    params = load_params(project / "params.yaml", overrides=[
        "baseline.model.family=custom", "baseline.model.class_path=nets.model:Net"])
    assert params.user_modules == ("nets.model",)
    # then: both files are deps of the stages that build networks, in the cache key and dvc.yaml
    users = {name for name in dag.STAGES
             if "nets/blocks.py" in dag.deps(name, project, params.user_modules)}
    assert users == set(dag.STAGES) - {"prepare", "search"}
    assert "      - nets/model.py" in dag.dvc_yaml(project, params.user_modules)
    before = stage_key("baseline", params, project)
    (package / "blocks.py").write_text("Block = 1\n")
    assert stage_key("baseline", params, project) != before


def test_the_teachers_weights_are_a_dep_of_the_stages_that_build_networks(project):
    weights = project / "teacher.pt"  # outside data/external, which prepare reads whole
    weights.write_bytes(b"first")
    params = load_params(project / "params.yaml", overrides=[
        "baseline.weights=teacher.pt", "baseline.train.epochs=0"])
    before = {name: stage_key(name, params, project) for name in ("prepare", "baseline")}
    # when: the file changes under the same name
    weights.write_bytes(b"second")
    # then: the baseline (and what follows it) runs again, prepare does not
    assert stage_key("baseline", params, project) != before["baseline"]
    assert stage_key("prepare", params, project) == before["prepare"]
    assert "      - teacher.pt" in dag.dvc_yaml(project, (), params.user_files)

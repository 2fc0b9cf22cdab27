"""A team's own network as the teacher: its class (a residual CNN) or a torchvision network
(depth-wise), through every stage; and its trained weights used as they are.

Integration test (slow: a pipeline per network): every stage runs on the TINY params, in a project
holding the team's module; structured pruning must keep the residual and depth-wise networks
valid, and a teacher given back its own weights with 0 epochs must score what it scored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shrinkflow.config import load_params
from tasks.services.dag import STAGES
from tasks.services.runner import run_stage
from tests.conftest import REPO, TINY, copy_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NETWORKS = {
    "custom-residual": ["baseline.model.family=custom",
                        "baseline.model.class_path=team_nets:ResidualNet",
                        "baseline.model.init_args={in_channels: 1, n_classes: 10}",
                        # and a student of the team's own class, narrower
                        "distill.student.family=custom",
                        "distill.student.class_path=team_nets:ResidualNet",
                        "distill.student.init_args={in_channels: 1, n_classes: 10, width: 4}",
                        # and recipes that prune and distill it
                        "search.compression.enabled=true", "search.compression.trials=3",
                        "search.compression.epochs=1", "search.compression.steps=1"],
    "torchvision-mobilenet": ["baseline.model.family=torchvision",
                              "baseline.model.arch=mobilenet_v3_small"],
}


def _compared(project: Path) -> dict:
    return json.loads((project / "reports" / "compare" / "candidates.json").read_text())


@pytest.fixture(scope="module", params=list(NETWORKS))
def ran(request, tmp_path_factory) -> tuple[Path, list[str]]:
    """Every stage on digits with the team's network as the teacher."""
    project = copy_project(tmp_path_factory.mktemp(request.param) / "project")
    (project / "team_nets.py").write_text((REPO / "tests" / "core" / "nets.py").read_text())
    overrides = [*TINY, *NETWORKS[request.param], f"deploy.registered_model={request.param}"]
    params = load_params(project / "params.yaml", overrides=overrides)
    for stage in STAGES:
        run_stage(stage, params, project)
    return project, overrides


def test_every_stage_compressed_the_teams_network(ran):
    project, overrides = ran
    candidates = _compared(project)["candidates"]
    teacher, pruned = candidates["baseline-fp32"], candidates["structured-50"]
    assert pruned["params_count"] < 0.5 * teacher["params_count"], "pruning removed channels"
    kinds = {row["kind"] for row in candidates.values()}
    recipes = {"searched"} if "search.compression.enabled=true" in overrides else set()
    assert {"pruned", "distilled", "quantized", *recipes} <= kinds, kinds
    student = json.loads((project / "models" / "distilled" / "student-kd" / "architecture.json")
                         .read_text())
    assert student["family"] == ("custom" if "distill.student.family=custom" in overrides
                                 else "cnn"), student
    search = json.loads((project / "models" / "search" / "choice.json").read_text())
    assert "the search explores the sizes of the built-in mlp and cnn" in search["reason"]
    assert json.loads((project / "models" / "deploy" / "deploy.json").read_text())["candidate"]


def assert_its_weights_score_what_it_scored(project: Path, overrides: list[str]) -> None:
    """The baseline given back its own saved weights with 0 epochs scores what it scored."""
    before = json.loads((project / "metrics" / "baseline.json").read_text())
    shutil.copy(project / "models" / "baseline" / "model.pt", project / "data" / "external" / "teacher.pt")
    params = load_params(project / "params.yaml", overrides=[
        *overrides, "baseline.weights=data/external/teacher.pt", "baseline.train.epochs=0"])
    run_stage("baseline", params, project)
    after = json.loads((project / "metrics" / "baseline.json").read_text())
    assert (after["val_accuracy"], after["accuracy"]) == (before["val_accuracy"], before["accuracy"])


def test_its_own_weights_with_zero_epochs_score_what_it_scored(ran):
    assert_its_weights_score_what_it_scored(*ran)


@pytest.fixture(scope="module")
def onnx_teacher(tmp_path_factory) -> tuple[Path, dict]:
    """Every stage with an ONNX file as the teacher: the file a first run's baseline exported."""
    project = copy_project(tmp_path_factory.mktemp("onnx-teacher") / "project")
    first = load_params(project / "params.yaml", overrides=TINY)
    for stage in ("prepare", "search", "baseline"):
        run_stage(stage, first, project)
    shutil.copy(project / "models" / "baseline" / "model.onnx", project / "teacher.onnx")
    exported = json.loads((project / "metrics" / "baseline.json").read_text())
    params = load_params(project / "params.yaml", overrides=[
        *TINY, "baseline.onnx=teacher.onnx", "quantize.methods=[int8_dynamic, int8_static, qat]",
        "search.compression.enabled=true", "deploy.registered_model=onnx-teacher"])
    for stage in STAGES:
        run_stage(stage, params, project)
    return project, exported


def test_an_onnx_teacher_is_quantized_and_distilled_and_what_needs_torch_says_why(onnx_teacher):
    project, exported = onnx_teacher
    # the teacher scores what the file scored when it was exported
    scored = json.loads((project / "metrics" / "baseline.json").read_text())
    assert (scored["val_accuracy"], scored["accuracy"]) == (exported["val_accuracy"],
                                                            exported["accuracy"])
    assert not (project / "models" / "baseline" / "model.pt").exists()
    # quantized and distilled from it; pruning, its QAT and the recipes say why they did not run
    candidates = _compared(project)["candidates"]
    assert {"baseline-fp32-int8_dynamic", "baseline-fp32-int8_static", "student-kd"} <= set(candidates)
    assert "baseline-fp32-torch" not in candidates and "baseline-fp32-qat" not in candidates
    reason = "the teacher is an ONNX file (baseline.onnx) and this needs its torch graph"
    for stage in ("prune", "recipes"):
        assert json.loads((project / "reports" / stage / "candidates.json").read_text())[
            "skipped"] == reason
    skipped = json.loads((project / "reports" / "quantize" / "candidates.json").read_text())
    assert "baseline-fp32-qat" in skipped["skipped"] and "student-kd-qat" in candidates
    assert json.loads((project / "models" / "deploy" / "deploy.json").read_text())["candidate"]

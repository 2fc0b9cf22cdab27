"""Stage `distill`: a student with and without the teacher, both saved, the gain recorded."""

from __future__ import annotations

import json

from shrinkflow.config import PrepareConfig
from shrinkflow.data import builtin_table
from tasks.candidates import load_torch, read_manifest
from tasks.catalog import Catalog
from tasks.distill import run_distill
from tasks.stages import run_stage
from tests.conftest import unlabeled_csv_params


def test_distill__trains_both_students_and_records_the_gain(project):
    from shrinkflow.config import load_params
    from tests.conftest import TINY

    # given
    params = load_params(project / "params.yaml",
                         overrides=[*TINY, "baseline.model.width=16", "distill.student.width=4"])
    for stage in ("prepare", "baseline"):
        run_stage(stage, params, project)
    # when
    summary = run_distill(params, project)
    # then
    folder = Catalog.at(project).stage_models("distilled")
    assert [c.name for c in read_manifest(folder, "distill")] == ["student-kd", "student-scratch"]
    arch, _ = load_torch(folder / "student-kd", "distill")
    assert arch.widths == (4, 8), "the student should have distill.student's widths"
    metrics = json.loads(Catalog.at(project).metrics_file("distill").read_text())
    gain = metrics["student-kd.accuracy"] - metrics["student-scratch.accuracy"]
    assert abs(metrics["student.kd_gain_pp"] - 100 * gain) < 1e-9
    assert metrics["unlabeled_rows"] == 0
    assert summary["metrics"] == metrics


def _digits_inputs(rows: int):
    return builtin_table(PrepareConfig())[0].drop(columns="label").head(rows)


def test_distill__extra_students_and_the_unlabeled_pool(project):
    # given a pool of unlabeled digits, and an MLP student beside the CNN one
    params = unlabeled_csv_params(project, _digits_inputs(400), "baseline.model.width=16",
                                  "distill.student.width=4",
                                  "distill.extra_students={mlp: {family: mlp, depth: 1, width: 32}}")
    for stage in ("prepare", "baseline"):
        run_stage(stage, params, project)
    # when
    run_distill(params, project)
    # then every student is trained with and without the teacher, each gain recorded
    folder = Catalog.at(project).stage_models("distilled")
    assert [c.name for c in read_manifest(folder, "distill")] == [
        "student-kd", "student-scratch", "mlp-kd", "mlp-scratch"]
    arch, _ = load_torch(folder / "mlp-kd", "distill")
    assert arch.family == "mlp" and arch.widths == (32,)
    metrics = json.loads(Catalog.at(project).metrics_file("distill").read_text())
    assert {"student.kd_gain_pp", "mlp.kd_gain_pp"} <= metrics.keys()
    assert metrics["unlabeled_rows"] == 400


def test_distill__the_pool_can_be_left_out(project):
    params = unlabeled_csv_params(project, _digits_inputs(200), "distill.use_unlabeled=false",
                                  "distill.train_without_teacher=false")
    for stage in ("prepare", "baseline"):
        run_stage(stage, params, project)
    run_distill(params, project)
    assert Catalog.at(project).unlabeled_file().is_file(), "prepare wrote the pool"
    metrics = json.loads(Catalog.at(project).metrics_file("distill").read_text())
    assert metrics["unlabeled_rows"] == 0, "distill.use_unlabeled=false leaves it out"
    assert "student.kd_gain_pp" not in metrics, "no student alone, no gain"


def test_distill__disabled_writes_an_empty_manifest(project, tiny_params):
    params = tiny_params.model_copy(update={"distill": tiny_params.distill.model_copy(
        update={"enabled": False})})
    for stage in ("prepare", "baseline"):
        run_stage(stage, params, project)
    run_distill(params, project)
    assert read_manifest(Catalog.at(project).stage_models("distilled"), "distill") == []

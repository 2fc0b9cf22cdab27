"""Stage `distill`: a student with and without the teacher, both saved, the gain recorded."""

from __future__ import annotations

import json

from tasks.candidates import load_torch, read_manifest
from tasks.catalog import Catalog
from tasks.distill import run_distill
from tasks.stages import run_stage


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
    assert abs(metrics["kd_gain_pp"] - 100 * gain) < 1e-9
    assert summary["metrics"] == metrics


def test_distill__disabled_writes_an_empty_manifest(project, tiny_params):
    params = tiny_params.model_copy(update={"distill": tiny_params.distill.model_copy(
        update={"enabled": False})})
    for stage in ("prepare", "baseline"):
        run_stage(stage, params, project)
    run_distill(params, project)
    assert read_manifest(Catalog.at(project).stage_models("distilled"), "distill") == []

"""Stage `prune`: candidates on disk, reloadable, smaller, and the accuracy-aware search recorded."""

from __future__ import annotations

import json

import pytest

from shrinkflow.measure import count_params
from tasks.candidates import load_torch, read_manifest
from tasks.catalog import Catalog
from tasks.prune import run_prune
from tasks.stages import run_stage

QUICK_PRUNE = ["baseline.model.width=16", "prune.steps=2", "prune.finetune_epochs=1", "prune.max_accuracy_drop_pp=50",
               "prune.finetune_with_teacher=true",  # the unpruned model teaches while fine-tuning
               "prune.search_ratios=[0.3, 0.5]"]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    from shrinkflow.config import load_params
    from tests.conftest import TINY, copy_project

    project = copy_project(tmp_path_factory.mktemp("prune") / "project")
    params = load_params(project / "params.yaml", overrides=[*TINY, *QUICK_PRUNE])
    for stage in ("prepare", "baseline"):
        run_stage(stage, params, project)
    return project, run_prune(params, project)


def test_prune__writes_a_manifest_of_reloadable_candidates(pruned):
    project, _ = pruned
    folder = Catalog.at(project).stage_models("pruned")
    names = [c.name for c in read_manifest(folder, "prune")]
    assert names == ["structured-50", "unstructured-80", "structured-auto"]
    _, baseline = load_torch(Catalog.at(project).baseline_dir, "baseline")
    _, structured = load_torch(folder / "structured-50", "prune")
    assert count_params(structured)[0] < 0.4 * count_params(baseline)[0], \
        "removing half the channels should remove most parameters"


def test_prune__unstructured_files_are_stored_sparse(pruned):
    project, _ = pruned
    folder = Catalog.at(project).stage_models("pruned") / "unstructured-80"
    baseline = Catalog.at(project).baseline_dir
    assert (folder / "model.pt").stat().st_size < 0.5 * (baseline / "model.pt").stat().st_size
    assert (folder / "model.onnx").stat().st_size < 0.6 * (baseline / "model.onnx").stat().st_size
    _, model = load_torch(folder, "prune")
    _, nonzero = count_params(model)
    assert nonzero < 0.35 * count_params(model)[0], "80% of the weights should be zero"


def test_prune__search_records_every_ratio_tried(pruned):
    project, _ = pruned
    report = json.loads(Catalog.at(project).metrics_file("prune").read_text())
    tries = report["search"]["tries"]
    assert [t["ratio"] for t in tries] == [0.3, 0.5]
    assert all({"accuracy", "drop_pp", "accepted"} <= t.keys() for t in tries)
    assert report["search"]["ratio"] == 0.5, "a 50 pp tolerance should accept the highest ratio"

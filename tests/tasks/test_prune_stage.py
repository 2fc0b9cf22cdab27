"""Stage `prune`: candidates on disk, reloadable, smaller, and the accuracy-aware search recorded."""

from __future__ import annotations

import json

import pytest

from shrinkflow.measure import count_params
from tasks.services import io
from tasks.services.candidates import load_torch, read_manifest
from tasks.services.catalog import Catalog
from tasks.stages.prune import run_prune

MAX_DROP_PP = 1.0
QUICK_PRUNE = ["prune.steps=2", "prune.finetune_epochs=1", f"prune.max_accuracy_drop_pp={MAX_DROP_PP}",
               "prune.finetune_with_teacher=true",  # the unpruned model teaches while fine-tuning
               "prune.search_ratios=[0.3, 0.5]"]


@pytest.fixture(scope="module")
def pruned(trained_tiny, tmp_path_factory):
    from shrinkflow.config import load_params
    from tests.conftest import TINY, copy_trained

    project = copy_trained(trained_tiny, tmp_path_factory.mktemp("prune") / "project")
    params = load_params(project / "params.yaml", overrides=[*TINY, *QUICK_PRUNE])
    return project, run_prune(params, project)


def test_prune__writes_a_manifest_of_reloadable_candidates(pruned):
    project, _ = pruned
    folder = Catalog.at(project).models_dir("prune")
    names = [c.name for c in read_manifest(folder, "prune")]
    assert names[:2] == ["structured-50", "unstructured-80"]
    _, baseline = load_torch(Catalog.at(project).baseline_dir, "baseline")
    _, structured = load_torch(folder / "structured-50", "prune")
    assert count_params(structured)[0] < 0.4 * count_params(baseline)[0], \
        "removing half the channels should remove most parameters"


def test_prune__unstructured_files_are_stored_sparse(pruned):
    project, _ = pruned
    folder = Catalog.at(project).models_dir("prune") / "unstructured-80"
    baseline = Catalog.at(project).baseline_dir
    assert (folder / "model.pt").stat().st_size < 0.5 * (baseline / "model.pt").stat().st_size
    assert (folder / "model.onnx").stat().st_size < 0.6 * (baseline / "model.onnx").stat().st_size
    _, model = load_torch(folder, "prune")
    _, nonzero = count_params(model)
    assert nonzero < 0.35 * count_params(model)[0], "80% of the weights should be zero"


def test_prune__search_keeps_the_highest_ratio_within_the_drop_on_validation(pruned):
    project, _ = pruned
    catalog = Catalog.at(project)
    search = io.read_candidates(catalog, "prune")["search"]
    tries = search["tries"]
    # then: ratios tried lowest first, stopping at the first one beyond the drop
    ratios = [t["ratio"] for t in tries]
    assert ratios == [0.3, 0.5][:len(ratios)] and ratios
    assert all(t["accepted"] for t in tries[:-1])
    assert all(t["accepted"] == (t["drop_pp"] <= MAX_DROP_PP + 1e-9) for t in tries)
    # and: drops are taken against the teacher's validation accuracy, not the test one
    teacher = io.read_metrics(catalog, "baseline")
    for t in tries:
        assert t["accuracy"] + t["drop_pp"] / 100 == pytest.approx(teacher["val_accuracy"])
    # and: the highest accepted ratio is kept as structured-auto, or nothing when none was
    accepted = [t["ratio"] for t in tries if t["accepted"]]
    assert search["ratio"] == (max(accepted) if accepted else None)
    names = [c.name for c in read_manifest(catalog.models_dir("prune"), "prune")]
    assert ("structured-auto" in names) == bool(accepted)
    # and: metrics/prune.json holds the headline: how many candidates, the best on validation;
    # the ratio kept is in reports/prune/metrics.json
    rows = io.read_candidates(catalog, "prune")["candidates"]
    best = max(rows.values(), key=lambda row: row["val_accuracy"])
    assert json.loads(catalog.metrics_file("prune").read_text()) == {
        "candidates": len(names), "val_accuracy": best["val_accuracy"], "accuracy": best["accuracy"]}
    assert io.read_metrics(catalog, "prune") == {
        "candidates": len(names), "structured_auto_ratio": search["ratio"]}


def test_prune__candidate_runs_say_what_made_them_as_params(pruned):
    from mlflow import MlflowClient

    _, summary = pruned
    client = MlflowClient()
    stage = client.get_run(summary["run_id"])
    runs = {run.info.run_name: run.data.params for run in client.search_runs(
        [stage.info.experiment_id], f"tags.mlflow.parentRunId = '{summary['run_id']}'")}
    assert runs["structured-50"] | {"method": "structured", "ratio": "0.5", "importance": "l1",
                                    "precision": "fp32"} == runs["structured-50"]
    assert runs["unstructured-80"]["ratio"] == "0.8"
    # the same names on every candidate: MLflow's compare view lines them up
    assert {"method", "ratio", "precision", "steps"} <= set(runs["unstructured-80"])

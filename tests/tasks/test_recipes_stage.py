"""Stage `recipes`: the recipe study's front becomes candidates that compare measures."""

from __future__ import annotations

import json

from shrinkflow.config import load_params
from tasks.services import io
from tasks.services.candidates import read_manifest
from tasks.services.catalog import Catalog
from tasks.stages.compare import run_compare
from tasks.stages.recipes import run_recipes
from tests.conftest import TINY

QUICK_RECIPES = ["search.compression.enabled=true", "search.compression.trials=3",
                 "search.compression.epochs=1", "search.compression.steps=1",
                 "search.compression.max_candidates=2"]


def test_the_front_goes_to_compare_as_candidates(trained_project):
    from mlflow import MlflowClient

    params = load_params(trained_project / "params.yaml", overrides=[*TINY, *QUICK_RECIPES])
    # when
    summary = run_recipes(params, trained_project)
    # then: every trial is recorded, the front's (at most 2) are candidates with files
    catalog = Catalog.at(trained_project)
    report = io.read_candidates(catalog, "recipes")
    assert len(report["trials"]) == 3
    assert all({"val_accuracy", "size_bytes", "latency_ms", "recipe"} <= set(row)
               for row in report["trials"])
    candidates = read_manifest(catalog.models_dir("recipes"), "recipes")
    assert 1 <= len(candidates) <= 2 and [c.name for c in candidates] == report["front"]
    assert io.read_metrics(catalog, "recipes") == {
        "candidates": len(candidates), "trials": 3, "seconds": report["seconds"]}
    # and: metrics/recipes.json shows the count and the front's best file on validation
    assert report["candidates"].keys() == set(report["front"])
    best = max(report["candidates"].values(), key=lambda row: row["val_accuracy"])
    assert json.loads(catalog.metrics_file("recipes").read_text()) == {
        "candidates": len(candidates), "val_accuracy": best["val_accuracy"],
        "accuracy": best["accuracy"]}
    summary_md = (catalog.report_dir("recipes") / "summary.md").read_text()
    assert all(f"{name.removeprefix('recipe-')} (front)" in summary_md for name in report["front"])
    assert (catalog.report_dir("recipes") / "pareto_front.png").is_file()
    assert all((trained_project / c.onnx).is_file() and c.method == "recipe" for c in candidates)
    # and: each trial is a candidate run nested in the stage's run
    client = MlflowClient()
    stage = client.get_run(summary["run_id"])
    runs = client.search_runs([stage.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    assert sorted(run.info.run_name for run in runs) == ["recipe-0", "recipe-1", "recipe-2"]
    assert all("method" in run.data.params and "size_bytes" in run.data.metrics for run in runs)
    # and: compare measures them beside the others
    compared = run_compare(params, trained_project)
    rows = io.read_candidates(catalog, "compare")["candidates"]
    assert {c.name for c in candidates} <= set(rows), compared["headline"]


def test_with_the_recipe_search_off_there_are_no_recipe_candidates(trained_project, tiny_params):
    summary = run_recipes(tiny_params, trained_project)
    assert summary["front"] == []
    assert read_manifest(Catalog.at(trained_project).models_dir("recipes"), "recipes") == []

"""DVC on the real pipeline: repro, metrics, plots, push/pull, and the flow recording dvc.lock."""

from __future__ import annotations

import shutil

from flows.pipeline import pipeline
from tasks.catalog import Catalog, tree_digest
from tests.flows.conftest import run


def test_dvc_repro__runs_stages_then_has_nothing_to_do(dvc_project):
    # when
    first = run(["dvc", "repro"], dvc_project)
    # then
    assert first.returncode == 0, first.stderr + first.stdout
    assert (dvc_project / "models/baseline/model.onnx").is_file()
    second = run(["dvc", "repro"], dvc_project)
    assert "Data and pipelines are up to date" in second.stdout, second.stdout

    # and: metrics and plots are readable by DVC
    metrics = run(["dvc", "metrics", "show", "--json"], dvc_project)
    assert metrics.returncode == 0 and '"accuracy"' in metrics.stdout
    plots = run(["dvc", "plots", "show", "--json"], dvc_project)
    assert plots.returncode == 0 and "val_accuracy" in plots.stdout, plots.stderr

    # and: push, lose everything local, pull it back identical
    assert run(["dvc", "push"], dvc_project).returncode == 0
    catalog = Catalog.at(dvc_project)
    before = {path: tree_digest(path) for path in (catalog.processed_dir, catalog.baseline_dir)}
    for path in (*before, dvc_project / ".dvc" / "cache"):
        shutil.rmtree(path)
    pulled = run(["dvc", "pull"], dvc_project)
    assert pulled.returncode == 0, pulled.stderr
    assert {path: tree_digest(path) for path in before} == before


def test_flow__records_outputs_in_dvc_lock_and_pushes(prefect_api, dvc_project):
    # when: the Prefect flow runs on params.yaml as it is
    result = pipeline(root=str(dvc_project))
    # then: DVC sees the flow's outputs as the pipeline's current state, and the remote has them
    status = run(["dvc", "status"], dvc_project)
    assert "up to date" in status.stdout, status.stdout
    assert (dvc_project / "dvc.lock").is_file()
    remote = dvc_project / ".dvc-storage"
    assert remote.is_dir() and any(remote.rglob("*")), "outputs should be pushed to the remote"
    from mlflow import MlflowClient

    logged = {item.path for item in MlflowClient().list_artifacts(result["run_id"])}
    assert "dvc.lock" in logged, "the parent run should keep the dvc.lock it produced"

"""Stage `baseline`: trains, saves loadable weights and ONNX, measures and tracks everything."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shrinkflow.models import Architecture, load_model
from tasks.baseline import run_baseline
from tasks.catalog import Catalog
from tasks.prepare import run_prepare

STANDARD = ("accuracy", "f1_macro", "params_count", "nonzero_params", "size_bytes", "flops",
            "latency_ms_p50_b1", "latency_ms_p95_b1", "throughput_sps_b256")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One prepared + trained tiny project shared by the tests of this module."""
    from shrinkflow.config import load_params
    from tests.conftest import TINY, copy_project

    project = copy_project(tmp_path_factory.mktemp("baseline") / "project")
    params = load_params(project / "params.yaml", overrides=TINY)
    run_prepare(params, project)
    return project, params, run_baseline(params, project)


def test_run_baseline__reports_every_standard_metric(trained):
    project, _, summary = trained
    metrics = json.loads(Catalog.at(project).metrics_file("baseline").read_text())
    for name in STANDARD:
        assert name in metrics, f"metrics/baseline.json should hold {name}"
        assert f"onnx_{name}" in metrics or name in ("flops",), f"ONNX should report {name}"
    assert metrics["size_bytes"] == (project / "models/baseline/model.pt").stat().st_size
    assert metrics["onnx_size_bytes"] == (project / "models/baseline/model.onnx").stat().st_size
    assert metrics["accuracy"] == pytest.approx(metrics["onnx_accuracy"], abs=1 / 360), \
        "ONNX and torch should agree on (nearly) every test sample"
    assert metrics["latency_ms_p95_b1"] >= metrics["latency_ms_p50_b1"] > 0


def test_run_baseline__weights_reload_safely_and_match_onnx(trained):
    project, _, _ = trained
    folder = Catalog.at(project).baseline_dir
    arch = Architecture.from_dict(json.loads((folder / "architecture.json").read_text()))
    model = load_model(arch, torch.load(folder / "model.pt", weights_only=True))
    from shrinkflow.export import onnx_predictor

    x = np.random.default_rng(0).normal(size=(4, *arch.input_shape)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_predictor(folder / "model.onnx")(x), expected, atol=1e-4)


def test_run_baseline__tracks_params_curves_model_and_dataset(trained):
    from mlflow import MlflowClient

    _, _, summary = trained
    client = MlflowClient()
    run = client.get_run(summary["run_id"])
    assert run.data.params["baseline.train.epochs"] == "2"
    history = client.get_metric_history(summary["run_id"], "val_accuracy")
    assert [point.step for point in history] == [1, 2], "one val_accuracy point per epoch"
    artifacts = {item.path for item in client.list_artifacts(summary["run_id"])}
    assert {"weights", "plots"} <= artifacts
    plots = {item.path for item in client.list_artifacts(summary["run_id"], "plots")}
    assert "plots/confusion_matrix.png" in plots and "plots/training_curves.png" in plots
    assert run.inputs.dataset_inputs, "the training data should be logged with log_input"
    assert run.data.tags["dvc.raw_md5"], "the DVC digest of the data should be tagged"
    models = client.search_logged_models([run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    assert models, "the ONNX model should be logged as an MLflow model"


def test_run_baseline__without_prepare_names_the_missing_stage(tmp_path, tiny_params):
    with pytest.raises(FileNotFoundError, match="run the 'prepare' stage first"):
        run_baseline(tiny_params, tmp_path)

"""Stage `baseline`: trains, saves loadable weights and ONNX, evaluates and tracks everything."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shrinkflow.models import Architecture, load_model
from tasks.services import io
from tasks.services.catalog import Catalog
from tasks.services.tracking import run_that_made
from tasks.stages.baseline import run_baseline

STANDARD = ("val_accuracy", "val_f1_macro", "accuracy", "f1_macro", "params_count",
            "nonzero_params", "size_bytes", "flops", "macs", "onnx_size_bytes")


@pytest.fixture(scope="module")
def trained(trained_tiny):
    """The session's prepared + trained tiny project (read only here) and its baseline summary."""
    from mlflow import MlflowClient

    experiment = MlflowClient().get_experiment_by_name("shrinkflow").experiment_id
    model = Catalog.at(trained_tiny).baseline_dir / "model.onnx"
    return trained_tiny, {"run_id": run_that_made(trained_tiny, experiment, model)}


def test_run_baseline__reports_quality_and_size_but_no_timing(trained):
    project, _ = trained
    catalog = Catalog.at(project)
    metrics = io.read_metrics(catalog, "baseline")
    for name in STANDARD:
        assert name in metrics, f"reports/baseline/metrics.json should hold {name}"
    # and: metrics/baseline.json shows a few of them under the names the stages share
    assert json.loads(catalog.metrics_file("baseline").read_text()) == {
        key: metrics[key] for key in ("val_accuracy", "accuracy", "params_count", "size_bytes")}
    assert metrics["size_bytes"] == (project / "models/baseline/model.pt").stat().st_size
    assert metrics["onnx_size_bytes"] == (project / "models/baseline/model.onnx").stat().st_size
    assert 0 < metrics["val_accuracy"] <= 1 and 0 < metrics["accuracy"] <= 1
    assert not any("latency" in name or "throughput" in name for name in metrics), \
        "speed is measured once, side by side, by compare"


def test_run_baseline__weights_reload_safely_and_match_onnx(trained):
    project, _ = trained
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

    _, summary = trained
    client = MlflowClient()
    run = client.get_run(summary["run_id"])
    assert run.data.params["baseline.train.epochs"] == "2"
    history = client.get_metric_history(summary["run_id"], "epoch_val_accuracy")
    assert [point.step for point in history] == [1, 2], "one validation point per epoch"
    assert "val_accuracy" in run.data.metrics, "and the finished model's validation accuracy"
    artifacts = {item.path for item in client.list_artifacts(summary["run_id"])}
    assert {"weights", "plots"} <= artifacts
    plots = {item.path for item in client.list_artifacts(summary["run_id"], "plots")}
    assert "plots/confusion_matrix.png" in plots and "plots/training_curves.png" in plots
    contexts = {next(tag.value for tag in item.tags if tag.key == "mlflow.data.context")
                for item in run.inputs.dataset_inputs}
    assert contexts == {"training", "validation", "evaluation"}, "splits logged with log_input"
    assert run.data.tags["dvc.raw_md5"], "the DVC digest of the data should be tagged"
    models = client.search_logged_models([run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run.info.run_id}'")
    assert models, "the ONNX model should be logged as an MLflow model"


def test_run_baseline__without_prepare_names_the_missing_stage(tmp_path, tiny_params):
    with pytest.raises(FileNotFoundError, match="run the 'prepare' stage first"):
        run_baseline(tiny_params, tmp_path)

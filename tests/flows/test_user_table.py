"""A team's own table, as it is: text columns and missing values, through every stage to both
servers of the champion, with no edit to the file.

Integration test: every stage runs once on the TINY params (module fixture), then the champion
is served by `shrinkflow serve` and by `mlflow models serve`, which must answer raw rows (strings,
nulls, a category never seen in training) with the labels offline evaluation gives."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from bench.serving import free_port, running
from serving.model import ServedModel
from shrinkflow.config import load_params
from tasks.services import registry
from tasks.services.dag import STAGES
from tests.conftest import TINY, copy_project

pytestmark = pytest.mark.integration
VENV_BIN = Path(sys.executable).parent
NAME = "user-table"
# raw rows as a client sends them: a null number, a null category, a category never seen
REQUEST = [
    {"size": None, "colour": "red", "weight": 0.2, "city": "Lyon"},
    {"size": 1.5, "colour": None, "weight": -1.0, "city": "Paris"},
    {"size": -0.5, "colour": "purple", "weight": 0.7, "city": "Nice"},
    {"size": 0.1, "colour": "blue", "weight": None, "city": "Berlin"},
]


def mixed_table(rows: int = 600, seed: int = 0) -> pd.DataFrame:
    """Two numeric and two text columns, gaps in two of them; the label depends on three."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "size": rng.normal(0, 1, rows), "colour": rng.choice(["red", "green", "blue"], rows),
        "weight": rng.normal(0, 1, rows), "city": rng.choice(["Paris", "Lyon", "Nice", "Lille"],
                                                             rows)})
    score = (frame["size"] + 1.5 * (frame["colour"] == "red") - (frame["city"] == "Nice")
             + 0.3 * rng.normal(size=rows))
    frame["label"] = np.where(score > 0.5, "high", "low")
    frame.loc[rng.choice(rows, 20, replace=False), "size"] = np.nan
    frame.loc[rng.choice(rows, 15, replace=False), "colour"] = None
    return frame


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Path:
    """Every stage of the pipeline on `mixed_table()` as a user CSV."""
    from tasks.services.runner import run_stage

    project = copy_project(tmp_path_factory.mktemp("user-table") / "project")
    mixed_table().to_csv(project / "data" / "external" / "mixed.csv", index=False)
    params = load_params(project / "params.yaml", overrides=[
        *TINY, "prepare.source=csv", "prepare.csv.path=data/external/mixed.csv",
        f"deploy.registered_model={NAME}", "ensemble.selection=top_k", "ensemble.max_size_fraction=4",
        "search.enabled=false", "search.compression.enabled=true", "search.compression.trials=2",
        "search.compression.epochs=1", "search.compression.steps=1"])
    for stage in STAGES:
        run_stage(stage, params, project)
    return project


@pytest.fixture(scope="module")
def offline(deployed) -> tuple[list[dict], list[str]]:
    """The raw test rows (as records) and REQUEST, with the labels the deployed graph gives them
    evaluated offline."""
    rows = registry.Rows.of_split(deployed, "test")
    records = [*json.loads(rows.inputs.to_json(orient="records")), *REQUEST]
    model = ServedModel.from_onnx(deployed / "models" / "deploy" / "model.onnx", version="file")
    frame = pd.DataFrame.from_records(records, columns=list(rows.inputs.columns))
    labels, _ = model.predict(registry.Rows(frame, np.array([])).x)
    return records, labels


def test_every_stage_ran_and_the_champion_reads_the_table_as_it_is(deployed):
    # every compression stage made candidates from the encoded rows, and compare measured them
    compared = json.loads((deployed / "reports" / "compare" / "candidates.json").read_text())
    kinds = {row["kind"] for row in compared["candidates"].values()}
    assert {"pruned", "distilled", "quantized", "ensemble", "searched"} <= kinds, kinds
    report = json.loads((deployed / "models" / "deploy" / "deploy.json").read_text())
    assert report["registered"] and report["promoted"], report
    model = ServedModel.from_onnx(deployed / "models" / "deploy" / "model.onnx", version="file")
    assert model.feature_names == ("size", "colour", "weight", "city")
    assert model.text_columns == {"colour", "city"} and model.nullable
    # the registered signature says which columns are strings
    from mlflow.models import get_model_info

    signature = get_model_info(f"models:/{NAME}@champion").signature.inputs.to_dict()
    assert {item["name"]: item["tensor-spec"]["dtype"] for item in signature} == {
        "size": "float32", "colour": "object", "weight": "float32", "city": "object"}


def test_shrinkflow_serve_answers_raw_records_like_offline_evaluation(deployed, offline):
    records, labels = offline
    port = free_port()
    command = [str(VENV_BIN / "shrinkflow"), "serve", "--name", NAME, "--port", str(port)]
    with running(command, deployed, port, "/health") as url:
        answer = httpx.post(f"{url}/predict", json={"dataframe_records": records}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["labels"] == labels


def test_mlflow_models_serve_answers_raw_records_like_offline_evaluation(deployed, offline):
    records, labels = offline
    port = free_port()
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with running(command, deployed, port, "/ping") as url:
        answer = httpx.post(f"{url}/invocations", json={"dataframe_records": records}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"]["label"] == labels

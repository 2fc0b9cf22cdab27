"""The HTTP app in process (httpx over ASGI, lifespan run by asgi-lifespan): predictions equal ONNX
Runtime's, the MLflow formats work, every client mistake is a JSON 4xx, and the app follows its
source without a restart."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import numpy as np
import pytest

from serving.app import create_app
from tests.serving.conftest import (
    CLASSES,
    FEATURES,
    ROWS,
    DictSource,
    make_onnx,
    ort_outputs,
    run_with_client,
)


def post(source: DictSource, path: str, **request) -> httpx.Response:
    """One POST to a fresh app serving `source`; `request` holds httpx arguments and app options."""
    options = {key: request.pop(key) for key in ("max_request_rows", "max_body_bytes") if key in request}
    if callable(request.get("content")):  # a generator function: a fresh chunked body per request
        request["content"] = request["content"]()

    async def scenario(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(path, **request)

    return run_with_client(create_app(source, poll_seconds=60, **options), scenario)


def test_predict__equals_onnx_runtime(source: DictSource, v1: bytes):
    response = post(source, "/predict", json={"inputs": ROWS.tolist()})

    assert response.status_code == 200, response.text
    body = response.json()
    labels, probabilities = ort_outputs(v1, ROWS)
    assert body["labels"] == labels
    np.testing.assert_array_equal(np.asarray(body["probabilities"], dtype=np.float32), probabilities)
    assert body["classes"] == list(CLASSES)
    assert body["model"] == {"name": "tiny-classifier", "version": "1"}


def _split() -> dict:
    columns = ["depth", "weight", "width", "height"]  # not the model's order: the server reorders
    return {"dataframe_split": {"columns": columns,
                                "data": [[row[FEATURES.index(c)] for c in columns] for row in ROWS.tolist()]}}


MLFLOW_PAYLOADS = {
    "inputs": {"inputs": ROWS.tolist()},
    "dataframe_split": _split(),
    "dataframe_records": {"dataframe_records": [dict(zip(FEATURES, row, strict=True))
                                                for row in ROWS.tolist()]},
}


@pytest.mark.parametrize("payload", MLFLOW_PAYLOADS.values(), ids=MLFLOW_PAYLOADS.keys())
def test_invocations__mlflow_formats(source: DictSource, v1: bytes, payload: dict):
    response = post(source, "/invocations", json=payload)

    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    labels, probabilities = ort_outputs(v1, ROWS)
    assert predictions["label"] == labels
    np.testing.assert_array_equal(np.asarray(predictions["probabilities"], dtype=np.float32), probabilities)


ROW = ROWS[0].tolist()


async def chunked_body():
    """About 1.3 kB sent in chunks, without a Content-Length."""
    for chunk in (b'{"inputs": [', b"[1, 2, 3, 4]," * 100, b"[1, 2, 3, 4]]}"):
        yield chunk

# (httpx arguments and app options, status, fragment of the error message)
REFUSED = {
    "malformed json": ({"content": b'{"inputs": [[1, 2,'}, 400, "not valid JSON"),
    "unknown key": ({"json": {"rows": [ROW]}}, 400, "'inputs', 'dataframe_split', 'dataframe_records'"),
    "empty batch": ({"json": {"inputs": []}}, 400, "inputs is empty"),
    "short row": ({"json": {"inputs": [ROW, ROW[:2]]}}, 400,
                  "row 1 (inputs[1]) has 2 values; the model expects 4"),
    "string": ({"json": {"inputs": [[1, 2, "nan", 4]]}}, 400, "column 2 ('depth'): \"nan\" is not a number"),
    "NaN literal": ({"content": b'{"inputs": [[1, NaN, 3, 4]]}'}, 400,
                    "column 1 ('width'): NaN is not a finite"),
    "boolean": ({"json": {"inputs": [[1, 2, 3, False]]}}, 400, "column 3 ('weight'): false is not a number"),
    "unknown column": ({"json": {"dataframe_split": {"columns": [*FEATURES[:3], "mass"], "data": [ROW]}}},
                       400, "unknown 'mass'"),
    "too many rows": ({"json": {"inputs": [ROW] * 6}, "max_request_rows": 5}, 413, "6 rows; the limit is 5"),
    "large body": ({"json": {"inputs": [ROW] * 100}, "max_body_bytes": 1000}, 413, "the limit is 1000"),
    "large chunked body": ({"content": chunked_body, "max_body_bytes": 1000}, 413, "more than 1000 bytes"),
    "csv": ({"content": b"1,2,3,4", "headers": {"content-type": "text/csv"}}, 415, "application/json"),
    "form": ({"data": {"inputs": "1"}}, 415, "application/json"),
}


@pytest.mark.parametrize("request_, status, fragment", REFUSED.values(), ids=REFUSED.keys())
@pytest.mark.parametrize("path", ["/predict", "/invocations"])
def test_refused__json_4xx(source: DictSource, path: str, request_: dict, status: int, fragment: str):
    response = post(source, path, **request_)

    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_inputs_far_out_of_range__422_not_500(v1: bytes):
    # given a model whose logits overflow to inf (all weights 1) on finite float32 inputs
    source = DictSource({"1": make_onnx(np.ones((4, 3), dtype=np.float32))}, current="1")

    response = post(source, "/predict", json={"inputs": [[3e38, 3e38, 3e38, 3e38]]})

    assert response.status_code == 422
    assert "not finite" in response.json()["error"]


def test_wrong_method_and_path__json_errors(source: DictSource):
    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [await client.get("/predict"), await client.post("/nowhere", json={})]

    wrong_method, wrong_path = run_with_client(create_app(source), scenario)

    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    assert wrong_path.status_code == 404 and wrong_path.json() == {"error": "Not Found"}


def test_health_and_model_info(source: DictSource):
    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [await client.get("/health"), await client.get("/model")]

    health, model = run_with_client(create_app(source), scenario)

    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["version"] == "1"
    assert model.json() == {"name": "tiny-classifier", "version": "1", "alias": "champion",
                            "metrics": {"accuracy": 0.91}, "lineage": {"run_id": "run-1"},
                            "feature_names": list(FEATURES), "image_shape": None, "text_columns": [],
                            "nullable": False, "classes": list(CLASSES)}


@pytest.mark.parametrize("case", ["nothing registered", "first load fails"])
def test_starts_without_a_model__503_until_one_is_registered(source: DictSource, case: str):
    # given a source with no current version, or one whose version cannot be loaded yet
    if case == "nothing registered":
        source.current = None
    else:
        source.broken = {"1"}

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        before = [await client.get("/health"), await client.post("/predict", json={"inputs": [ROW]}),
                  await client.get("/model")]
        source.current, source.broken = "1", set()  # when: the alias gets a loadable version
        await asyncio.sleep(0.3)
        return [*before, await client.get("/health")]

    health, predict, model, health_after = run_with_client(create_app(source, poll_seconds=0.02), scenario)

    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert predict.status_code == 503 and "no model is loaded" in predict.json()["error"]
    assert model.status_code == 503
    assert health_after.status_code == 200 and health_after.json()["version"] == "1"


def test_failed_load_keeps_serving_the_old_model(source: DictSource, caplog: pytest.LogCaptureFixture):
    source.broken = {"2"}

    async def scenario(client: httpx.AsyncClient) -> list[dict]:
        source.current = "2"  # when: the alias moves to a version that cannot be loaded
        await asyncio.sleep(0.3)
        during = (await client.post("/predict", json={"inputs": [ROW]})).json()
        source.broken = set()  # then it becomes loadable: the next poll picks it up
        await asyncio.sleep(0.3)
        return [during, (await client.post("/predict", json={"inputs": [ROW]})).json()]

    with caplog.at_level(logging.WARNING, logger="shrinkflow.serving"):
        during, after = run_with_client(create_app(source, poll_seconds=0.02), scenario)

    assert during["model"]["version"] == "1", "a failed load should keep the old model serving"
    assert after["model"]["version"] == "2"
    assert source.loads.count("2") > 2, "the poller should retry the failed version"
    warnings = [record for record in caplog.records
                if "loading model version 2 failed" in record.getMessage()]
    assert len(warnings) == 1, "a version that keeps failing should be warned about once"


def test_request_validation_errors_are_json():
    # FastAPI's own validation (not used by the scoring routes) also answers {"error": ...}
    from fastapi.exceptions import RequestValidationError

    app = create_app(DictSource({}, current=None))

    @app.get("/raise")
    async def raise_validation() -> None:
        raise RequestValidationError([{"loc": ("query", "n"), "msg": "field required"}])

    async def scenario(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get("/raise")

    response = run_with_client(app, scenario)

    assert response.status_code == 422
    assert response.json() == {"error": "invalid request: query.n: field required"}


def test_body_is_not_json_object_with_json_header(source: DictSource):
    response = post(source, "/predict", content=json.dumps([ROW]).encode(),
                    headers={"content-type": "application/json; charset=utf-8"})

    assert response.status_code == 400 and "got a list" in response.json()["error"]


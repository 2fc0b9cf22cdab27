"""Fixtures for the model server tests: tiny ONNX classifiers built with onnx.helper, a dict-backed
model source, and ways to run the app (in process with its lifespan, or as a real uvicorn server).

The model is features [N, 4] -> MatMul(W [4, 3]) -> Softmax -> `probabilities`, and ArgMax ->
LabelEncoder -> `label`: the interface of a shrinkflow export. Versions differ only by W, so the
same rows get different probabilities from each version.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from onnx import TensorProto, helper, numpy_helper

from serving.model import ServedModel

FEATURES = ("height", "width", "depth", "weight")
CLASSES = ("cat", "dog", "fox")
ROWS = np.array([[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, 3.0], [-2.0, 1.0, 0.0, 0.5]], dtype=np.float32)


def weights(seed: int) -> np.ndarray:
    """W [F, K] of a model version: another seed, other predictions."""
    return np.random.default_rng(seed).standard_normal((len(FEATURES), len(CLASSES))).astype(np.float32)


def make_onnx(w: np.ndarray, *, feature_names: tuple[str, ...] | None = FEATURES,
              classes: tuple[str, ...] | None = CLASSES, label_output: str = "label") -> bytes:
    """A served-model ONNX file (bytes) with weights `w`; None leaves that metadata key out."""
    n_features, n_classes = w.shape
    names = classes or tuple(str(k) for k in range(n_classes))
    nodes = [
        helper.make_node("MatMul", ["features", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["index"], axis=1, keepdims=0),
        helper.make_node("LabelEncoder", ["index"], [label_output], domain="ai.onnx.ml",
                         keys_int64s=list(range(n_classes)), values_strings=list(names)),
    ]
    graph = helper.make_graph(
        nodes, "tiny_classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info(label_output, TensorProto.STRING, ["N"]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes])],
        [numpy_helper.from_array(w, "W")])
    # opset 18 / ai.onnx.ml 3: accepted by the onnxruntime pinned in pyproject.toml
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    metadata = {}
    if feature_names is not None:
        metadata["feature_names"] = json.dumps(list(feature_names))
    if classes is not None:
        metadata["classes"] = json.dumps(list(classes))
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ort_outputs(model_bytes: bytes, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The ONNX file's own outputs for `rows`, straight from ONNX Runtime: what serving must return."""
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(["label", "probabilities"], {"features": rows})
    return [str(label) for label in labels], probabilities


class DictSource:
    """A model source over in-memory ONNX files; tests move `current` as a registry alias would."""

    def __init__(self, versions: dict[str, bytes], current: str | None) -> None:
        self.versions = versions
        self.current = current
        self.broken: set[str] = set()  # versions whose load raises
        self.loads: list[str] = []

    def current_version(self) -> str | None:
        return self.current

    def load(self, version: str) -> ServedModel:
        self.loads.append(version)
        if version in self.broken:
            raise OSError(f"version {version} could not be downloaded")
        info = {"name": "tiny-classifier", "version": version, "alias": "champion",
                "metrics": {"accuracy": 0.9 + int(version) / 100}, "lineage": {"run_id": f"run-{version}"}}
        return ServedModel.from_onnx(self.versions[version], version, info)


@pytest.fixture(scope="session")
def v1() -> bytes:
    return make_onnx(weights(1))


@pytest.fixture(scope="session")
def v2() -> bytes:
    return make_onnx(weights(2))


@pytest.fixture
def source(v1: bytes, v2: bytes) -> DictSource:
    """Versions "1" and "2"; the alias points to "1"."""
    return DictSource({"1": v1, "2": v2}, current="1")


def run_with_client(app: FastAPI, scenario: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    """Run `scenario(client)` against `app` in process, inside its lifespan (startup and shutdown)."""

    async def main() -> Any:
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serving.test") as client:
                return await scenario(client)

    return asyncio.run(main())


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """`app` served by a real uvicorn server on a free local port, in a thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # port 0: the OS picks a free one, no race with other tests
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()

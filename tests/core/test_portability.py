"""A second runtime (OpenVINO) runs a plain file as ONNX Runtime does, and says which file it
cannot run, and why."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from shrinkflow import portability
from shrinkflow.footprint import floor_graph
from shrinkflow.runtime import onnx_session
from shrinkflow.sparse import sparsify_onnx

X = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)


def _logits(path: Path) -> np.ndarray:
    session = onnx_session(path)
    return session.run(None, {session.get_inputs()[0].name: X})[0]


def test_a_plain_file_runs_alike_in_the_second_runtime(tmp_path: Path):
    path = floor_graph("matmul", 32, 10, tmp_path / "plain.onnx")
    found = portability.check(path, X, _logits(path))
    assert found == {"second_runtime": portability.second_runtime(),
                     "second_runtime_agreement": 1.0, "second_runtime_error": ""}
    assert found["second_runtime"].startswith("openvino ")


def test_answers_that_differ_lower_the_agreement(tmp_path: Path):
    path = floor_graph("matmul", 32, 10, tmp_path / "plain.onnx")
    shifted = np.roll(_logits(path), 1, axis=1)  # another top class for (almost) every sample
    assert portability.check(path, X, shifted)["second_runtime_agreement"] < 0.2


def test_a_file_only_onnx_runtime_runs_says_why(tmp_path: Path):
    # given a MatMul whose weights are stored sparse, which ONNX Runtime densifies on load
    dense = floor_graph("matmul", 32, 10, tmp_path / "dense.onnx")
    model = onnx.load(str(dense))
    weight = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weight[np.abs(weight) < 1.0] = 0.0
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "w"))
    onnx.save(model, str(dense))
    path = sparsify_onnx(dense, tmp_path / "sparse.onnx")
    found = portability.check(path, X, _logits(path))
    assert math.isnan(found["second_runtime_agreement"])
    assert "isn't found" in found["second_runtime_error"], found


def test_without_a_second_runtime_it_says_so(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(portability, "second_runtime", lambda: "")
    path = floor_graph("identity", 32, 1, tmp_path / "identity.onnx")
    found = portability.check(path, X, X)
    assert found["second_runtime_error"] == "no second runtime installed"

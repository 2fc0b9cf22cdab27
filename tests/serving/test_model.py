"""ServedModel: reading an ONNX file's interface and predicting exactly what ONNX Runtime computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.model import ModelFileError, ServedModel
from tests.serving.conftest import CLASSES, FEATURES, ROWS, make_onnx, ort_outputs, weights


def test_from_onnx__reads_names_from_metadata(v1: bytes):
    model = ServedModel.from_onnx(v1, "1", {"name": "tiny"})

    assert model.feature_names == FEATURES, "feature names should come from metadata_props"
    assert model.classes == CLASSES, "classes should come from metadata_props"
    assert (model.version, model.name) == ("1", "tiny")


def test_predict__equals_onnx_runtime(v1: bytes):
    labels, probabilities = ServedModel.from_onnx(v1, "1", {}).predict(ROWS)

    expected_labels, expected_probabilities = ort_outputs(v1, ROWS)
    assert labels == expected_labels
    np.testing.assert_array_equal(probabilities, expected_probabilities)
    assert probabilities.dtype == np.float32


def test_from_onnx__path_and_threads(v2: bytes, tmp_path: Path):
    path = tmp_path / "model.onnx"
    path.write_bytes(v2)

    model = ServedModel.from_onnx(path, "2", {}, threads=2)

    assert model.predict(ROWS)[0] == ort_outputs(v2, ROWS)[0]


def test_from_onnx__no_metadata_falls_back_to_shapes():
    model = ServedModel.from_onnx(make_onnx(weights(1), feature_names=None, classes=None), "1", {})

    assert model.feature_names == ("f0", "f1", "f2", "f3")
    assert model.classes == ("0", "1", "2")


def test_from_onnx__metadata_disagreeing_with_graph():
    with pytest.raises(ModelFileError, match="3 names; the graph has 4"):
        ServedModel.from_onnx(make_onnx(weights(1), feature_names=("a", "b", "c")), "1", {})


def test_from_onnx__missing_label_output():
    with pytest.raises(ModelFileError, match="lacks \\['label'\\]"):
        ServedModel.from_onnx(make_onnx(weights(1), label_output="predicted"), "1", {})

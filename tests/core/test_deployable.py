"""shrinkflow.deployable: raw rows in, label names and probabilities out, in one ONNX graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from serving.model import ServedModel
from shrinkflow.deployable import FEATURES, deployable
from shrinkflow.export import export_onnx, onnx_predictor
from shrinkflow.models import Architecture, build_model

ARCHITECTURES = {
    "table": Architecture("mlp", (6,), 3, (8,)),
    "image": Architecture("cnn", (1, 4, 4), 3, (2, 4)),
}
LABELS = ["setosa", "versicolor", "virginica"]  # a target column's own values


@pytest.fixture(params=list(ARCHITECTURES), ids=list(ARCHITECTURES))
def candidate(request, tmp_path):
    arch = ARCHITECTURES[request.param]
    torch.manual_seed(0)
    return arch, export_onnx(build_model(arch).eval(), arch.input_shape, tmp_path / "model.onnx")


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_raw_rows_give_the_candidates_answers_on_normalized_inputs(candidate):
    # given a candidate that reads normalized inputs, and statistics fitted on "training" rows
    arch, path = candidate
    rng = np.random.default_rng(0)
    features = int(np.prod(arch.input_shape))
    raw = (rng.normal(size=(9, features)) * 7 + 3).astype(np.float32)
    mean = np.full(arch.input_shape[:1] + (1,) * (len(arch.input_shape) - 1), 3.0, np.float32)
    std = np.full_like(mean, 7.0)
    if arch.family == "mlp":  # per feature for tables
        mean, std = np.linspace(2, 4, features, dtype=np.float32), np.full(features, 7.0, np.float32)
    wrapped = deployable(onnx.load(str(path)), arch.input_shape, mean, std,
                         [f"c{i}" for i in range(features)], LABELS)
    # when the deployable graph gets the raw rows
    labels, probabilities = _session(wrapped).run(None, {FEATURES: raw})
    # then it answers what the candidate answers on rows normalized outside it
    logits = onnx_predictor(path)(((raw.reshape(-1, *arch.input_shape) - mean) / std).astype(np.float32))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert list(labels) == [LABELS[i] for i in logits.argmax(axis=1)]
    np.testing.assert_allclose(np.log(probabilities) - np.log(probabilities)[:, :1],
                               logits - logits[:, :1], atol=1e-4)


def test_names_travel_in_the_graph(candidate):
    arch, path = candidate
    features = [f"c{i}" for i in range(int(np.prod(arch.input_shape)))]
    wrapped = deployable(onnx.load(str(path)), arch.input_shape, np.zeros(1, np.float32),
                         np.ones(1, np.float32), features, LABELS)
    served = ServedModel.from_onnx(wrapped.SerializeToString(), version="1")
    assert (list(served.feature_names), list(served.classes)) == (features, LABELS)
    assert [value.name for value in wrapped.graph.input] == [FEATURES]


def test_feature_count_must_fill_the_input(candidate):
    arch, path = candidate
    with pytest.raises(ValueError, match="cannot fill an input of shape"):
        deployable(onnx.load(str(path)), arch.input_shape, np.zeros(1, np.float32),
                   np.ones(1, np.float32), ["only", "two"], LABELS)


def test_a_sparse_stored_candidate_is_wrapped_too(tmp_path):
    # given: a candidate whose weights are mostly zero and stored sparse (int32 indices)
    from shrinkflow.sparse import sparsify_onnx

    arch = ARCHITECTURES["table"]
    torch.manual_seed(0)
    model = build_model(arch).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter[torch.rand_like(parameter) < 0.8] = 0.0
    path = export_onnx(model, arch.input_shape, tmp_path / "dense.onnx")
    sparse = sparsify_onnx(path, tmp_path / "sparse.onnx")
    assert onnx.load(str(sparse)).graph.sparse_initializer
    # when it is made deployable (the checker runs on it), then it answers like the dense file
    features = [f"c{i}" for i in range(6)]
    stats = np.zeros(6, np.float32), np.ones(6, np.float32)
    rows = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    answers = [_session(deployable(onnx.load(str(file)), arch.input_shape, *stats, features,
                                   LABELS)).run(None, {FEATURES: rows})[1] for file in (path, sparse)]
    np.testing.assert_allclose(answers[0], answers[1], atol=1e-6)


def test_a_table_with_text_and_gaps_is_encoded_in_the_graph(tmp_path):
    import pandas as pd

    from shrinkflow.encode import TableEncoder

    # given a table with a text column and gaps, its encoding fitted on "training" rows, and a
    # candidate that reads the encoded, normalized rows
    train = pd.DataFrame({"size": [1.0, np.nan, 3.0, 5.0], "colour": ["red", "blue", None, "red"]})
    encoder = TableEncoder.fit(train, ["size", "colour"])
    arch = Architecture("mlp", (encoder.width,), 3, (8,))
    torch.manual_seed(0)
    path = export_onnx(build_model(arch).eval(), arch.input_shape, tmp_path / "model.onnx")
    mean, std = np.linspace(0, 1, encoder.width, dtype=np.float32), np.full(encoder.width, 2.0,
                                                                             np.float32)
    wrapped = deployable(onnx.load(str(path)), arch.input_shape, mean, std, ["size", "colour"],
                         LABELS, encoder)
    # when the served model gets raw rows with a null, an unseen category and a missing number
    rows = np.array([[None, "green"], [2.0, None], [4.0, "red"]], dtype=object)
    served = ServedModel.from_onnx(wrapped.SerializeToString(), version="1")
    labels, _ = served.predict(rows)
    # then it answers what the candidate answers on the rows encoded and normalized outside it
    frame = pd.DataFrame(rows, columns=["size", "colour"]).astype({"size": float})
    logits = onnx_predictor(path)(((encoder.transform(frame) - mean) / std).astype(np.float32))
    assert labels == [LABELS[i] for i in logits.argmax(axis=1)]
    assert served.text_columns == {"colour"} and served.nullable and served.per_column

"""shrinkflow.ensemble.compose: one ONNX graph whose logits are the head computed over each member's
own ONNX Runtime outputs, for members of every storage kind the pipeline makes.

Members are tiny random-init models (nothing is trained): what is tested is the graph surgery and
the head's arithmetic, which hold for any weights. The reference head is written out in numpy here
rather than imported, so the test does not check the code against itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from shrinkflow import quantize as q
from shrinkflow.ensemble import METHODS, EnsembleError, compose, softmax
from shrinkflow.export import export_onnx, onnx_session
from shrinkflow.models import Architecture, build_model
from shrinkflow.sparse import sparsify_onnx

CNN = Architecture("cnn", (1, 8, 8), 10, (4, 8))
MLP = Architecture("mlp", (10,), 3, (16,))
WEIGHTS = (0.1, 0.3, 0.2, 0.15, 0.25)


# ---------------------------------------------------------------------------------------------
# members: real files of each kind, from tiny torch models
# ---------------------------------------------------------------------------------------------
def _random_model(arch: Architecture, seed: int, zero_fraction: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch).eval()
    with torch.no_grad():  # magnitude-zeroed weights, as unstructured pruning leaves them
        for weight in (p for p in model.parameters() if p.dim() > 1 and zero_fraction):
            weight[weight.abs() < weight.abs().flatten().quantile(zero_fraction)] = 0.0
    return model


def _rows(arch: Architecture, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *arch.input_shape)).astype(np.float32)


@pytest.fixture(scope="module")
def cnn_members(tmp_path_factory) -> dict[str, Path]:
    """fp32, fp16, int8 static (QOperator), int8 weight-only and sparse members of one CNN shape."""
    d = tmp_path_factory.mktemp("cnn")
    fp32 = export_onnx(_random_model(CNN, 0), CNN.input_shape, d / "fp32.onnx")
    dense = export_onnx(_random_model(CNN, 1, zero_fraction=0.8), CNN.input_shape, d / "dense.onnx")
    return {
        "fp32": fp32,
        "fp16": q.to_fp16(fp32, d / "fp16.onnx"),
        "int8_static": q.to_int8_static(fp32, d / "int8_static.onnx", _rows(CNN, 64, 0),
                                        quant_format="qoperator"),
        "int8_weights": q.to_int8_weights(fp32, d / "int8_weights.onnx"),
        "sparse": sparsify_onnx(dense, d / "sparse.onnx"),
    }


@pytest.fixture(scope="module")
def mlp_members(tmp_path_factory) -> dict[str, Path]:
    """Table models on [N, 10]: two fp32 MLPs and the int8 static (QOperator) of the first."""
    d = tmp_path_factory.mktemp("mlp")
    first = export_onnx(_random_model(MLP, 2), MLP.input_shape, d / "first.onnx")
    return {
        "first": first,
        "second": export_onnx(_random_model(MLP, 3), MLP.input_shape, d / "second.onnx"),
        "int8_static": q.to_int8_static(first, d / "int8_static.onnx", _rows(MLP, 64, 0),
                                        quant_format="qoperator"),
    }


def _run(model: onnx.ModelProto | Path, x: np.ndarray, tmp_path: Path) -> np.ndarray:
    path = model if isinstance(model, Path) else tmp_path / "model.onnx"
    if not isinstance(model, Path):
        onnx.save(model, str(path))
    return onnx_session(path).run(None, {"input": x})[0]


def _head(member_logits: list[np.ndarray], method: str, weights=None) -> np.ndarray:
    """The ensemble's logits computed in numpy from the members' own outputs."""
    probabilities = [softmax(logits) for logits in member_logits]
    if method == "average":
        p = np.mean(probabilities, axis=0)
    elif method == "weighted":
        w = np.asarray(weights) / np.sum(weights)
        p = np.tensordot(w, probabilities, axes=1)
    else:
        classes = member_logits[0].shape[1]
        votes = sum(np.eye(classes)[logits.argmax(1)] for logits in member_logits)
        p = (votes + 1e-3 * np.mean(probabilities, axis=0)) / (len(member_logits) + 1e-3)
    return np.log(np.maximum(p, 1e-30))


# ---------------------------------------------------------------------------------------------
# every kind of member in one ensemble
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("method", METHODS)
def test_compose__mixed_members_give_the_head_of_their_own_outputs(cnn_members, method, batch, tmp_path):
    # given fp32, fp16, int8 static, int8 weight-only and sparse members and a batch of rows
    x = _rows(CNN, batch, seed=batch)
    member_logits = [_run(path, x, tmp_path) for path in cnn_members.values()]
    weights = WEIGHTS if method == "weighted" else None
    # when they are composed into one graph and run
    ensemble = compose([onnx.load(str(p)) for p in cnn_members.values()], method, weights)
    logits = _run(ensemble, x, tmp_path)
    # then its logits are the head computed from each member run on its own
    assert logits.dtype == np.float32 and logits.shape == (batch, CNN.n_classes)
    np.testing.assert_allclose(logits, _head(member_logits, method, weights), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(softmax(logits).sum(axis=1), 1.0, atol=1e-5)


def test_compose__keeps_every_member_and_its_storage(cnn_members, tmp_path):
    # given the members' initializers by dtype and their sparse initializers
    members = [onnx.load(str(p)) for p in cnn_members.values()]

    def stored_bytes(model: onnx.ModelProto) -> dict[str, int]:
        out: dict[str, int] = {}
        for init in model.graph.initializer:
            array = numpy_helper.to_array(init)
            out[array.dtype.name] = out.get(array.dtype.name, 0) + array.nbytes
        return out

    # when composed and saved
    ensemble = compose(members, "average")
    onnx.save(ensemble, str(tmp_path / "ensemble.onnx"))
    # then no weight was densified, widened or dropped: fp16 stays fp16, int8 stays int8
    expected: dict[str, int] = {}
    for member in members:
        for dtype, nbytes in stored_bytes(member).items():
            expected[dtype] = expected.get(dtype, 0) + nbytes
    got = stored_bytes(ensemble)
    for dtype in ("float16", "int8", "uint8"):
        assert got[dtype] == expected[dtype], f"{dtype} weights should be kept as they are"
    assert got["float32"] - expected["float32"] < 64, "only the head's few float32 constants are new"
    assert len(ensemble.graph.sparse_initializer) == sum(len(m.graph.sparse_initializer) for m in members) > 0
    # and the file is about the sum of the members' (theirs carry exporter notes the ensemble drops)
    total = sum(p.stat().st_size for p in cnn_members.values())
    size = (tmp_path / "ensemble.onnx").stat().st_size
    assert 0.6 * total < size < 1.2 * total + 4096, f"ensemble {size} bytes, members {total} bytes"
    # and the shared input is the members' input, batch dimension included
    assert [i.name for i in ensemble.graph.input] == ["input"]
    assert [o.name for o in ensemble.graph.output] == ["logits"]
    assert ensemble.graph.input[0].type == onnx.load(str(cnn_members["fp32"])).graph.input[0].type
    assert dict((p.key, p.value) for p in ensemble.metadata_props)["ensemble.method"] == "average"


@pytest.mark.parametrize("method", METHODS)
def test_compose__table_members_on_flat_inputs(mlp_members, method, tmp_path):
    x = _rows(MLP, 7, seed=1)
    member_logits = [_run(path, x, tmp_path) for path in mlp_members.values()]
    weights = (2.0, 1.0, 1.0) if method == "weighted" else None  # normalised by compose
    ensemble = compose([onnx.load(str(p)) for p in mlp_members.values()], method, weights)
    np.testing.assert_allclose(_run(ensemble, x, tmp_path), _head(member_logits, method, weights),
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# the head's rules, on hand-written linear members (logits = input @ weight)
# ---------------------------------------------------------------------------------------------
def _linear(weight: np.ndarray, opset: int = 20, sparse: bool = False) -> onnx.ModelProto:
    features, classes = weight.shape
    tensor = numpy_helper.from_array(weight.astype(np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "weight"], ["logits"], name="matmul")], "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=[] if sparse else [tensor])
    if sparse:
        flat = weight.astype(np.float32).reshape(-1)
        nonzero = np.flatnonzero(flat)
        graph.sparse_initializer.append(helper.make_sparse_tensor(
            numpy_helper.from_array(flat[nonzero], "weight"),
            numpy_helper.from_array(nonzero.astype(np.int64), "weight_indices"), list(weight.shape)))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_compose__vote_majority_beats_confidence_and_confidence_breaks_ties(tmp_path):
    # given rows [1, 0] and [0, 1]: on the first, one member is sure of class 0 and two lean to
    # class 1; on the second, two members disagree (a 1-1 tie) and a third abstains by voting 2
    sure_of_0 = _linear(np.array([[9.0, 0, 0], [3.0, 0, 0]]))
    leans_to_1 = _linear(np.array([[0, 0.5, 0], [0, 0.2, 0.0]]))
    other = _linear(np.array([[0, 0.5, 0], [0, 0, 0.1]]))
    x = np.eye(2, dtype=np.float32)
    # when they vote
    votes = _run(compose([sure_of_0, leans_to_1, other], "vote"), x, tmp_path)
    average = _run(compose([sure_of_0, leans_to_1, other], "average"), x, tmp_path)
    # then the majority wins the first row although the average prefers the confident member
    assert votes[0].argmax() == 1 and average[0].argmax() == 0
    np.testing.assert_allclose(softmax(votes[0]), [1 / 3, 2 / 3, 0], atol=1e-3)
    # and on the second row, a 1-1-1 tie, the averaged probability decides: class 0
    assert votes[1].argmax() == 0
    np.testing.assert_allclose(softmax(votes[1]), [1 / 3] * 3, atol=1e-3)
    np.testing.assert_allclose(softmax(votes).sum(axis=1), 1.0, atol=1e-6)


def test_compose__converts_an_older_opset_and_keeps_sparse_initializers(tmp_path):
    # given a sparse member on opset 13 (onnx's version converter does not know sparse
    # initializers) and a dense one on opset 20
    old = _linear(np.array([[1.0, 0, 0, 0], [0, 0, 0, -2.0]]), opset=13, sparse=True)
    new = _linear(np.array([[0.5, 0.5, 0, 0], [0, 1.0, 0, 0]]), opset=20)
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    # when composed
    ensemble = compose([old, new], "average")
    # then the ensemble is on opset 20, still sparse, and computes the same
    assert {o.domain: o.version for o in ensemble.opset_import}[""] == 20
    assert len(ensemble.graph.sparse_initializer) == 1
    np.testing.assert_allclose(_run(ensemble, x, tmp_path),
                               _head([_run(old, x, tmp_path), _run(new, x, tmp_path)], "average"),
                               atol=1e-5)


# ---------------------------------------------------------------------------------------------
# what does not fit
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, weights, message", [
    ("median", None, "unknown ensemble method 'median'"),
    ("weighted", None, "needs one weight per member"),
    ("weighted", (1.0,), "2 finite numbers"),
    ("weighted", (1.0, -1.0), ">= 0"),
    ("average", (0.5, 0.5), "'weighted' method only"),
])
def test_compose__rejects_methods_and_weights_that_do_not_fit(method, weights, message):
    members = [_linear(np.eye(2)), _linear(np.eye(2))]
    with pytest.raises(EnsembleError, match=message):
        compose(members, method, weights)


def test_compose__rejects_members_that_do_not_fit_together():
    with pytest.raises(EnsembleError, match="at least 2 members"):
        compose([_linear(np.eye(2))])
    with pytest.raises(EnsembleError, match="'logits' axis 1"):
        compose([_linear(np.eye(2)), _linear(np.ones((2, 3)))])
    renamed = _linear(np.eye(2))
    renamed.graph.input[0].name = "x"
    renamed.graph.node[0].input[0] = "x"
    with pytest.raises(EnsembleError, match="member 1 must have one input 'input'"):
        compose([_linear(np.eye(2)), renamed])
    microsoft_2 = _linear(np.eye(2))
    microsoft_2.opset_import.append(helper.make_opsetid("com.microsoft", 2))
    microsoft_1 = _linear(np.eye(2))
    microsoft_1.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(EnsembleError, match="'com.microsoft' at versions 1 and 2"):
        compose([microsoft_1, microsoft_2])

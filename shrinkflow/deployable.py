"""The deployable model: one ONNX graph that takes what a user sends and returns what they want.

A candidate's graph reads normalized tensors shaped like the model's input (N, 1, 8, 8) and returns
logits. The deployable graph wraps it: it reads raw feature rows exactly as the data set's table
has them (N, features), reshapes and normalizes them with the statistics fitted on the training
split, runs the candidate, and returns `label` (the class label as the table's target column
writes it) and `probabilities` (one column per label). The caller needs nothing but the graph:
the feature and label names travel in its metadata, so a server or `mlflow.pyfunc` can check
requests and name the classes.

A user table with text columns or missing values is encoded in the graph too
(`shrinkflow.encode`): its graph then takes one input per column (text columns as strings, the
others as floats [N]) when a column is text, and fills missing values (NaN, or a null or empty
string) with the training split's statistics; `nullable` in its metadata says so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shrinkflow.encode import TableEncoder
from shrinkflow.sparse import check_onnx

FEATURES = "features"  # the raw rows, float32 (N, number of feature columns)
LABEL = "label"  # string (N,): the predicted class, in the data set's own label names
PROBABILITIES = "probabilities"  # float32 (N, classes), columns in the order of `classes`
# metadata keys: JSON lists the server and the registry read back
FEATURE_NAMES_KEY, CLASSES_KEY = "feature_names", "classes"
NULLABLE_KEY = "nullable"  # JSON true when a missing value (null) is filled in the graph
ML_DOMAIN, ML_OPSET = "ai.onnx.ml", 2  # LabelEncoder: class index -> label name
_PREFIX = "deployable_"  # names of the wrapper's own nodes and constants


def _constant(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(value, f"{_PREFIX}{name}")


def deployable(candidate: onnx.ModelProto, input_shape: Sequence[int], mean: np.ndarray,
               std: np.ndarray, feature_names: Sequence[str], labels: Sequence[str],
               encoder: TableEncoder | None = None) -> onnx.ModelProto:
    """`candidate` (input `input`, output `logits`) behind raw-row encoding (a user table's text
    and missing values, `encoder`) and normalization, and in front of the label lookup; see the
    module docstring. `mean`/`std` broadcast against `input_shape`."""
    model = onnx.ModelProto()
    model.CopyFrom(candidate)
    graph = model.graph
    (model_input,), (logits,) = graph.input, graph.output
    encoding = encoder is not None and not encoder.is_identity
    width = encoder.width if encoding else len(feature_names)
    if int(np.prod(input_shape)) != width:
        raise ValueError(f"{width} feature columns cannot fill an input of shape "
                         f"{tuple(input_shape)}")
    encode_nodes, encode_constants = encoder.front(FEATURES, f"{_PREFIX}encoded", _PREFIX) \
        if encoding else ([], [])
    front = [
        *encode_nodes,
        helper.make_node("Reshape", [f"{_PREFIX}encoded" if encoding else FEATURES,
                                     f"{_PREFIX}shape"], [f"{_PREFIX}shaped"]),
        helper.make_node("Sub", [f"{_PREFIX}shaped", f"{_PREFIX}mean"], [f"{_PREFIX}centered"]),
        helper.make_node("Div", [f"{_PREFIX}centered", f"{_PREFIX}std"], [model_input.name]),
    ]
    back = [
        helper.make_node("Softmax", [logits.name], [PROBABILITIES], axis=-1),
        helper.make_node("ArgMax", [logits.name], [f"{_PREFIX}index"], axis=1, keepdims=0),
        helper.make_node("LabelEncoder", [f"{_PREFIX}index"], [LABEL], domain=ML_DOMAIN,
                         keys_int64s=list(range(len(labels))), values_strings=list(labels),
                         default_string=""),
    ]
    nodes = [*front, *graph.node, *back]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend([
        *encode_constants,
        _constant("shape", np.asarray([-1, *input_shape], np.int64)),
        _constant("mean", np.asarray(mean, np.float32)),
        _constant("std", np.asarray(std, np.float32)),
    ])
    del graph.input[:]
    graph.input.extend(_inputs(feature_names, encoder if encoding else None))
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info(LABEL, TensorProto.STRING, ["batch"]),
        helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["batch", len(labels)]),
    ])
    if not any(opset.domain == ML_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(ML_DOMAIN, ML_OPSET))
    kept = {prop.key: prop.value for prop in model.metadata_props}  # e.g. an ensemble's members
    helper.set_model_props(model, {
        **kept, FEATURE_NAMES_KEY: json.dumps(list(feature_names)),
        CLASSES_KEY: json.dumps(list(labels)),
        NULLABLE_KEY: json.dumps(bool(encoding and encoder.nullable))})
    check_onnx(model)
    return model


def _inputs(feature_names: Sequence[str], encoder: TableEncoder | None) -> list:
    """One float input of raw rows, or (a table with text) one input per column: text columns
    as strings, the others as floats."""
    if encoder is None or encoder.layout == "matrix":
        return [helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT,
                                              ["batch", len(feature_names)])]
    return [helper.make_tensor_value_info(
        column.name, TensorProto.STRING if column.kind == "text" else TensorProto.FLOAT, ["batch"])
        for column in encoder.columns]

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

An image folder's graph takes `images`, uint8 [N, height, width, C] as a decoded image file is,
of any height and width: it resizes them to the training size as prepare did
(`shrinkflow.images.resize_nodes`), then normalizes per channel. `image_shape` in its metadata
gives the training size, [height, width, C].
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shrinkflow.encode import TableEncoder
from shrinkflow.images import RESIZE_OPSET, resize_nodes
from shrinkflow.sparse import check_onnx

FEATURES = "features"  # the raw rows, float32 (N, number of feature columns)
IMAGES = "images"  # an image folder's graph: uint8 (N, height, width, channels)
LABEL = "label"  # string (N,): the predicted class, in the data set's own label names
PROBABILITIES = "probabilities"  # float32 (N, classes), columns in the order of `classes`
# metadata keys: JSON lists the server and the registry read back
FEATURE_NAMES_KEY, CLASSES_KEY = "feature_names", "classes"
NULLABLE_KEY = "nullable"  # JSON true when a missing value (null) is filled in the graph
IMAGE_SHAPE_KEY = "image_shape"  # JSON [height, width, channels] the images are resized to
ML_DOMAIN, ML_OPSET = "ai.onnx.ml", 2  # LabelEncoder: class index -> label name
_PREFIX = "deployable_"  # names of the wrapper's own nodes and constants


def _constant(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(value, f"{_PREFIX}{name}")


def deployable(candidate: onnx.ModelProto, input_shape: Sequence[int], mean: np.ndarray,
               std: np.ndarray, feature_names: Sequence[str], labels: Sequence[str],
               encoder: TableEncoder | None = None, images: bool = False) -> onnx.ModelProto:
    """`candidate` (input `input`, output `logits`) behind raw-row encoding (a user table's text
    and missing values, `encoder`) or, with `images`, image resizing, and normalization; in front
    of the label lookup. See the module docstring. `mean`/`std` broadcast against
    `input_shape`."""
    model = onnx.ModelProto()
    model.CopyFrom(candidate)
    graph = model.graph
    (model_input,), (logits,) = graph.input, graph.output
    encoding = encoder is not None and not encoder.is_identity
    if images:
        front, constants, inputs = _image_front(input_shape, _opset(model))
        properties = {IMAGE_SHAPE_KEY: json.dumps([*input_shape[1:], input_shape[0]])}
    else:
        front, constants, inputs = _table_front(input_shape, feature_names,
                                                encoder if encoding else None)
        properties = {FEATURE_NAMES_KEY: json.dumps(list(feature_names)),
                      NULLABLE_KEY: json.dumps(bool(encoding and encoder.nullable))}
    normalize = [
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
    nodes = [*front, *normalize, *graph.node, *back]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend([
        *constants,
        _constant("mean", np.asarray(mean, np.float32)),
        _constant("std", np.asarray(std, np.float32)),
    ])
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info(LABEL, TensorProto.STRING, ["batch"]),
        helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["batch", len(labels)]),
    ])
    if not any(opset.domain == ML_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(ML_DOMAIN, ML_OPSET))
    kept = {prop.key: prop.value for prop in model.metadata_props}  # e.g. an ensemble's members
    helper.set_model_props(model, {**kept, **properties, CLASSES_KEY: json.dumps(list(labels))})
    check_onnx(model)
    return model


Front = tuple[list[onnx.NodeProto], list[TensorProto], list[onnx.ValueInfoProto]]


def _table_front(input_shape: Sequence[int], feature_names: Sequence[str],
                 encoder: TableEncoder | None) -> Front:
    """Raw rows (encoded when `encoder` is given) reshaped to `input_shape` as `shaped`."""
    width = encoder.width if encoder is not None else len(feature_names)
    if int(np.prod(input_shape)) != width:
        raise ValueError(f"{width} feature columns cannot fill an input of shape "
                         f"{tuple(input_shape)}")
    nodes, constants = map(list, encoder.front(FEATURES, f"{_PREFIX}encoded", _PREFIX)) \
        if encoder is not None else ([], [])
    nodes.append(helper.make_node("Reshape", [f"{_PREFIX}encoded" if encoder else FEATURES,
                                              f"{_PREFIX}shape"], [f"{_PREFIX}shaped"]))
    constants.append(_constant("shape", np.asarray([-1, *input_shape], np.int64)))
    return nodes, constants, _inputs(feature_names, encoder)


def _image_front(input_shape: Sequence[int], opset: int) -> Front:
    """uint8 images N x H x W x C as float N x C x size x size `shaped`; antialiased as prepare
    resized them where the graph's opset has Resize's antialias."""
    channels, height, width = input_shape
    if height != width:
        raise ValueError(f"images are resized to squares; the input shape is {tuple(input_shape)}")
    nodes, constants = resize_nodes(f"{_PREFIX}nchw", f"{_PREFIX}shaped", height,
                                    f"{_PREFIX}resize_", antialias=opset >= RESIZE_OPSET)
    front = [helper.make_node("Cast", [IMAGES], [f"{_PREFIX}float"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", [f"{_PREFIX}float"], [f"{_PREFIX}nchw"],
                              perm=[0, 3, 1, 2]),
             *nodes]
    image_input = helper.make_tensor_value_info(IMAGES, TensorProto.UINT8,
                                                ["batch", "height", "width", channels])
    return front, constants, [image_input]


def _opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset."""
    return next(opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx"))


def _inputs(feature_names: Sequence[str], encoder: TableEncoder | None) -> list:
    """One float input of raw rows, or (a table with text) one input per column: text columns
    as strings, the others as floats."""
    if encoder is None or encoder.layout == "matrix":
        return [helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT,
                                              ["batch", len(feature_names)])]
    return [helper.make_tensor_value_info(
        column.name, TensorProto.STRING if column.kind == "text" else TensorProto.FLOAT, ["batch"])
        for column in encoder.columns]

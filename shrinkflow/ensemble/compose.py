"""One ONNX graph that runs every member on the same input and combines their predictions.

The ensemble is served like any candidate: one file, input `input`, output `logits`. Each member's
graph is copied in whole, its names prefixed (`member0/`, `member1/`, ...) so they cannot clash,
reading the one shared `input`; members keep their own precision and storage (fp16 weights, int8
kernels, sparse initializers), so the file is about the sum of the members' files (a little less:
the exporter's notes in each member's graph metadata are not carried over). A head then
combines the members' logits [N, K]:

  average   p = mean_i softmax(logits_i)
  weighted  p = sum_i w_i softmax(logits_i), with w_i >= 0 normalised to sum to 1
            (see `shrinkflow.ensemble.weights.fit_weights`)
  vote      each member votes for its argmax; p = (votes + e * mean_i softmax(logits_i)) / (k + e)
            with e = 1e-3: the vote fractions, with ties broken by the averaged probability
            (e * mean < 1e-3 never outweighs one vote), still summing to 1

and outputs logits = log(max(p, 1e-30)): softmax(logits) gives p back and argmax(logits) is the
ensemble's decision, so every consumer of a candidate's logits reads an ensemble's alike. The
floor keeps log(0) = -inf out of downstream log-losses.

Opsets: the members' opset imports are merged. A member on an older default-domain opset is
converted up to the newest (at least 13, which the head is written for) with
onnx.version_converter; sparse initializers are set aside during the conversion, which does not
know them. Other domains (com.microsoft, used by int8 QOperator graphs) must agree already. The
result is checked with onnx.checker (full check: with shape inference) on a copy with the sparse
initializers densified (see `_check`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shrinkflow.ensemble.members import MIN_MEMBERS, EnsembleError
from shrinkflow.sparse import check_onnx

# the names shrinkflow.export.export_onnx writes (INPUT_NAME, OUTPUT_NAME), repeated rather than
# imported: that module imports torch, which composing ONNX graphs does not need
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

Method = Literal["average", "weighted", "vote"]
METHODS: tuple[str, ...] = get_args(Method)
VOTE_TIE_BREAK = 1e-3  # e: weight of the averaged probability next to the vote fractions
PROBABILITY_FLOOR = 1e-30  # p is floored before the log (float32 represents it; log = -69)
MIN_OPSET = 13  # the head's Softmax, ArgMax and OneHot as written here; older members are converted
_HEAD = "ensemble/"
_DEFAULT_DOMAINS = ("", "ai.onnx")


# ---------------------------------------------------------------------------------------------
# Members
# ---------------------------------------------------------------------------------------------
def _data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    """Static sizes of a tensor's dimensions (None where symbolic or unknown; None for all when
    the shape is not declared)."""
    if not value.type.tensor_type.HasField("shape"):
        return None
    return [dim.dim_value if dim.HasField("dim_value") else None
            for dim in value.type.tensor_type.shape.dim]


def _check_member(model: onnx.ModelProto, index: int) -> None:
    inputs, outputs = _data_inputs(model), list(model.graph.output)
    if [value.name for value in inputs] != [INPUT_NAME] or \
            [value.name for value in outputs] != [OUTPUT_NAME]:
        raise EnsembleError(
            f"ensemble member {index} must have one input {INPUT_NAME!r} and one output "
            f"{OUTPUT_NAME!r}, has inputs {[v.name for v in inputs]} and outputs "
            f"{[v.name for v in outputs]}")
    for value in (inputs[0], outputs[0]):
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise EnsembleError(f"ensemble member {index}: {value.name!r} must be float32, is "
                                f"{helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)}")


def _agree(declared: list[list[int | None] | None], what: str) -> None:
    """Members must agree on a tensor's rank and on every size more than one of them states."""
    dims = [d for d in declared if d is not None]
    if not dims:
        return
    if len({len(d) for d in dims}) > 1:
        raise EnsembleError(f"ensemble members disagree on the rank of {what}: {dims}")
    for axis in range(1, len(dims[0])):  # axis 0 is the batch
        sizes = {d[axis] for d in dims} - {None}
        if len(sizes) > 1:
            raise EnsembleError(f"ensemble members disagree on {what} axis {axis}: {dims}")


def _without_initializer_inputs(model: onnx.ModelProto) -> None:
    # older exporters list initializers as graph inputs too (overridable at run time); the
    # ensemble feeds only `input`, and prefixing would rename the initializer but not the input
    data = _data_inputs(model)
    del model.graph.input[:]
    model.graph.input.extend(data)


# ---------------------------------------------------------------------------------------------
# Opsets
# ---------------------------------------------------------------------------------------------
def _versions(model: onnx.ModelProto) -> dict[str, int]:
    return {("" if opset.domain in _DEFAULT_DOMAINS else opset.domain): opset.version
            for opset in model.opset_import}


def _convert_opset(model: onnx.ModelProto, version: int, index: int) -> onnx.ModelProto:
    """`model` converted to default-domain opset `version`. The converter rejects inputs it
    cannot find among initializers and graph inputs, sparse initializers included, so those
    are declared as graph inputs during the conversion and restored afterwards."""
    from onnx import version_converter

    work = onnx.ModelProto()
    work.CopyFrom(model)
    sparse = list(work.graph.sparse_initializer)
    del work.graph.sparse_initializer[:]
    work.graph.input.extend(
        helper.make_tensor_value_info(s.values.name, s.values.data_type, list(s.dims))
        for s in sparse)
    try:
        converted = version_converter.convert_version(work, version)
    except Exception as error:  # the converter raises bare RuntimeErrors and ValueErrors
        raise EnsembleError(f"ensemble member {index} uses opset {_versions(model).get('')} and "
                            f"could not be converted to opset {version} (another member's): "
                            f"{error}; export the members with one opset") from error
    sparse_names = {s.values.name for s in sparse}
    data = [value for value in converted.graph.input if value.name not in sparse_names]
    del converted.graph.input[:]
    converted.graph.input.extend(data)
    converted.graph.sparse_initializer.extend(sparse)
    return converted


def _common_opsets(members: list[onnx.ModelProto]) -> tuple[list[onnx.ModelProto], dict[str, int]]:
    """(members on one default-domain opset, the union of opset imports); other domains must
    agree (their versions cannot be converted)."""
    merged: dict[str, int] = {}
    for index, member in enumerate(members):
        for domain, version in _versions(member).items():
            if domain and merged.get(domain, version) != version:
                raise EnsembleError(f"ensemble members import {domain!r} at versions "
                                    f"{merged[domain]} and {version} (member {index}); only the "
                                    f"default domain can be converted")
            merged[domain] = max(merged.get(domain, version), version)
    target = max(merged.get("", MIN_OPSET), MIN_OPSET)
    merged[""] = target
    converted = [member if _versions(member).get("", target) == target
                 else _convert_opset(member, target, index)
                 for index, member in enumerate(members)]
    return converted, merged


# ---------------------------------------------------------------------------------------------
# Head
# ---------------------------------------------------------------------------------------------
def _constant(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, _HEAD + name)


def _head(logits: list[str], method: Method,
          weights: np.ndarray | None) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and constants that turn the members' logits into the ensemble's `logits`."""
    h = _HEAD
    nodes = [helper.make_node("Softmax", [name], [f"{h}p{i}"], axis=-1, name=f"{h}softmax{i}")
             for i, name in enumerate(logits)]
    probabilities = [f"{h}p{i}" for i in range(len(logits))]
    constants = [_constant("floor", np.array(PROBABILITY_FLOOR, dtype=np.float32))]
    if method == "average":
        nodes.append(helper.make_node("Mean", probabilities, [f"{h}p"], name=f"{h}mean"))
    elif method == "weighted":
        assert weights is not None  # _checked_weights made sure
        for i, weight in enumerate(weights):
            constants.append(_constant(f"w{i}", np.array(weight, dtype=np.float32)))
            nodes.append(helper.make_node("Mul", [f"{h}p{i}", f"{h}w{i}"], [f"{h}wp{i}"],
                                          name=f"{h}weigh{i}"))
        nodes.append(helper.make_node("Sum", [f"{h}wp{i}" for i in range(len(logits))], [f"{h}p"],
                                      name=f"{h}sum"))
    else:
        nodes += _vote(logits, probabilities, constants)
    nodes += [helper.make_node("Max", [f"{h}p", f"{h}floor"], [f"{h}p_floored"], name=f"{h}floor"),
              helper.make_node("Log", [f"{h}p_floored"], [OUTPUT_NAME], name=f"{h}log")]
    return nodes, constants


def _vote(logits: list[str], probabilities: list[str],
          constants: list[onnx.TensorProto]) -> list[onnx.NodeProto]:
    """Nodes computing {h}p = (votes + e * mean probability) / (k + e) for the vote method."""
    h, k = _HEAD, len(logits)
    constants += [
        _constant("class_axis", np.array([1], dtype=np.int64)),
        _constant("one_hot_values", np.array([0.0, 1.0], dtype=np.float32)),
        _constant("tie_break", np.array(VOTE_TIE_BREAK, dtype=np.float32)),
        _constant("total", np.array(k + VOTE_TIE_BREAK, dtype=np.float32)),
    ]
    # K read from the first member's logits at run time: OneHot needs it as a tensor
    nodes = [helper.make_node("Shape", [logits[0]], [f"{h}logits_shape"], name=f"{h}shape"),
             helper.make_node("Gather", [f"{h}logits_shape", f"{h}class_axis"], [f"{h}classes"],
                              axis=0, name=f"{h}classes")]
    for i, name in enumerate(logits):
        # ArgMax takes the first of equal logits, as numpy's argmax does
        nodes += [helper.make_node("ArgMax", [name], [f"{h}choice{i}"], axis=1, keepdims=0,
                                   name=f"{h}argmax{i}"),
                  helper.make_node("OneHot", [f"{h}choice{i}", f"{h}classes", f"{h}one_hot_values"],
                                   [f"{h}vote{i}"], axis=-1, name=f"{h}one_hot{i}")]
    nodes += [
        helper.make_node("Sum", [f"{h}vote{i}" for i in range(k)], [f"{h}votes"], name=f"{h}votes"),
        helper.make_node("Mean", probabilities, [f"{h}mean_p"], name=f"{h}mean"),
        helper.make_node("Mul", [f"{h}mean_p", f"{h}tie_break"], [f"{h}tie"], name=f"{h}tie"),
        helper.make_node("Add", [f"{h}votes", f"{h}tie"], [f"{h}score"], name=f"{h}score"),
        helper.make_node("Div", [f"{h}score", f"{h}total"], [f"{h}p"], name=f"{h}normalise"),
    ]
    return nodes


def _checked_weights(method: str, weights: Sequence[float] | None, members: int) -> np.ndarray | None:
    if method not in METHODS:
        raise EnsembleError(f"unknown ensemble method {method!r}; choose one of {list(METHODS)}")
    if method != "weighted":
        if weights is not None:
            raise EnsembleError(f"weights apply to the 'weighted' method only, not {method!r}")
        return None
    if weights is None:
        raise EnsembleError("the 'weighted' method needs one weight per member (see fit_weights)")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (members,) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise EnsembleError(f"ensemble weights must be {members} finite numbers >= 0 with a "
                            f"positive sum, got {list(weights)}")
    return w / w.sum()


def _input(members: list[onnx.ModelProto]) -> onnx.ValueInfoProto:
    """The shared `input`, declared as the first member declares it."""
    value = onnx.ValueInfoProto()
    value.CopyFrom(_data_inputs(members[0])[0])
    del value.metadata_props[:]  # the exporter's notes on its own input
    return value


def _output(members: list[onnx.ModelProto]) -> onnx.ValueInfoProto:
    """`logits` [batch, K]: the input's batch dimension, K where a member states it."""
    dims = _input(members).type.tensor_type.shape.dim
    batch = (dims[0].dim_value or dims[0].dim_param or "batch") if dims else "batch"
    declared = [_dims(member.graph.output[0]) for member in members]
    classes = next((d[1] for d in declared if d and len(d) == 2 and d[1]), None)
    return helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, classes])


# ---------------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------------
def compose(members: Sequence[onnx.ModelProto], method: Method = "average",
            weights: Sequence[float] | None = None) -> onnx.ModelProto:
    """One ONNX model running every member on `input` and combining them into `logits`.

    Args:
        members: ONNX models, each with one float32 input `input` [N, ...] (the same shape for
            all) and one float32 output `logits` [N, K] (the same K). They are not modified.
        method: average | weighted | vote (see the module docstring).
        weights: one per member, for `weighted` only; normalised to sum to 1.

    Returns:
        The ensemble, checked with onnx.checker. Its metadata records the method and weights.

    Raises:
        EnsembleError: fewer than 2 members, members that do not fit together (names, types,
            shapes, opsets), an unknown method, or weights that do not fit the method.
    """
    if len(members) < MIN_MEMBERS:
        raise EnsembleError(f"an ensemble needs at least {MIN_MEMBERS} members, got {len(members)}")
    normalised = _checked_weights(method, weights, len(members))
    for index, member in enumerate(members):
        _check_member(member, index)
    _agree([_dims(_data_inputs(m)[0]) for m in members], f"{INPUT_NAME!r}")
    _agree([_dims(m.graph.output[0]) for m in members], f"{OUTPUT_NAME!r}")
    converted, opsets = _common_opsets(list(members))

    graph = helper.make_graph([], "ensemble", [], [])
    functions: list[onnx.FunctionProto] = []
    logits = []
    for index, member in enumerate(converted):
        prefix = f"member{index}/"
        # add_prefix copies; rename_inputs=False keeps the shared `input` (sparse initializers,
        # value_info and local functions are renamed with the rest)
        prefixed = onnx.compose.add_prefix(member, prefix, rename_inputs=False)
        _without_initializer_inputs(prefixed)
        graph.node.extend(prefixed.graph.node)
        graph.initializer.extend(prefixed.graph.initializer)
        graph.sparse_initializer.extend(prefixed.graph.sparse_initializer)
        graph.value_info.extend(prefixed.graph.value_info)
        functions += prefixed.functions
        logits.append(prefix + OUTPUT_NAME)
    head_nodes, constants = _head(logits, method, normalised)
    graph.node.extend(head_nodes)
    graph.initializer.extend(constants)

    graph.input.append(_input(converted))
    graph.output.append(_output(converted))

    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(domain, version)
                              for domain, version in sorted(opsets.items())],
        functions=functions, producer_name="shrinkflow.ensemble")
    model.ir_version = max(m.ir_version for m in converted)
    helper.set_model_props(model, {
        "ensemble.method": method, "ensemble.members": str(len(members)),
        "ensemble.weights": json.dumps(None if normalised is None else normalised.tolist())})
    check_onnx(model)
    return model

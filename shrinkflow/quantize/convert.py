"""Conversions that need no data: fp16, int8 weight-only and int8 dynamic, plus the int8 weight
storage (int8 + per-channel scale, expanded when the session loads) the last two share."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shrinkflow.quantize.graph import (
    WEIGHTED_OPS,
    load_onnx,
    preprocess,
    quiet,
    save_lean,
    sort_topologically,
)

if TYPE_CHECKING:
    import onnx

DYNAMIC_OPS: tuple[str, ...] = ("MatMul", "Gemm")


def to_fp16(src: str | Path, dst: str | Path) -> Path:
    """Half-precision weights; inputs and outputs stay float32, so callers feed the same arrays.

    ONNX Runtime's CPU provider has no fp16 kernels for these ops: it casts back to float32 at
    load time ("precision-free casts"), so the file halves and speed and results match float32.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(load_onnx(src), keep_io_types=True)
    sort_topologically(model)  # the converter appends the input casts after their consumers
    return save_lean(model, dst)


def to_int8_dynamic(
    src: str | Path,
    dst: str | Path,
    op_types: Sequence[str] = DYNAMIC_OPS,
    store_conv_weights_int8: bool = True,
) -> Path:
    """int8 weights; `op_types` (MatMul/Gemm) quantize their input activations at run time.

    No calibration data is needed. Convolutions are left out of `op_types` on purpose:
    ConvInteger was 5x slower than float32 at batch 1 and 10-13x at batch 256 on this CPU.
    Their weights are still stored as int8 (per output channel, symmetric) followed by Cast and
    Mul, which ONNX Runtime constant-folds when the session loads: the file shrinks like int8,
    the convolution runs at float32 speed.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="shrinkflow-int8d-") as tmp:
        pre = preprocess(src, Path(tmp) / "pre.onnx")
        out = Path(tmp) / "dynamic.onnx"
        with quiet():
            quantize_dynamic(str(pre), str(out), op_types_to_quantize=list(op_types),
                             weight_type=QuantType.QInt8)
        model = load_onnx(out)
    if store_conv_weights_int8:
        _store_weights_int8(model, ("Conv",))
    return save_lean(model, dst)


def to_int8_weights(src: str | Path, dst: str | Path) -> Path:
    """Weight-only int8: every Conv/Gemm/MatMul weight stored as int8, computed in float32.

    The file shrinks like int8 (~4x), while ONNX Runtime expands the weights once when the session
    loads and runs the float32 graph with all its fusions: the latency of the float32 model, not
    the overhead of quantizing activations on every call, which costs more than it saves on small
    models at batch 1. (ONNX Runtime's own weight-only quantizer, MatMulNBits, covers MatMul and
    Gather, not Conv.)
    """
    model = load_onnx(src)
    _store_weights_int8(model, WEIGHTED_OPS)
    return save_lean(model, dst)


def _weight_axis(node: onnx.NodeProto, ndim: int) -> int:
    """The output-channel axis of a node's weight: per-channel scales run along it."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return ndim - 1
    return 0 if node.op_type == "Conv" else 1  # ConvTranspose: (C_in, C_out / group, ...)


def _int8_per_channel(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight, float32 scale shaped to broadcast against it): symmetric per output channel
    along `axis`, like ORT's static int8 weights, scale = max|w| / 127 (1 for an all-zero one)."""
    absmax = np.abs(np.moveaxis(weight, axis, 0)).reshape(weight.shape[axis], -1).max(axis=1)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    scale = scale.reshape([-1 if dim == axis else 1 for dim in range(weight.ndim)])
    return np.clip(np.round(weight / scale), -127, 127).astype(np.int8), scale


def _store_weights_int8(model: onnx.ModelProto, op_types: Sequence[str]) -> None:
    """Replace the float weight initializers of `op_types` nodes by int8 + per-channel scale,
    expanded back by Cast + Mul nodes that ONNX Runtime constant-folds when the session loads."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    axes = {node.input[1]: _weight_axis(node, len(initializers[node.input[1]].dims))
            for node in graph.node
            if node.op_type in op_types and len(node.input) > 1 and node.input[1] in initializers}
    new_nodes = []
    for name, axis in sorted(axes.items()):
        weight = numpy_helper.to_array(initializers[name])
        if weight.dtype != np.float32 or weight.ndim < 2:
            continue
        quantized, scale = _int8_per_channel(weight, axis)
        graph.initializer.remove(initializers[name])
        graph.initializer.extend([numpy_helper.from_array(quantized, f"{name}_int8"),
                                  numpy_helper.from_array(scale, f"{name}_scale")])
        # Cast + Mul rather than DequantizeLinear: ORT keeps DequantizeLinear unfolded (it waits
        # for a QDQ fusion), which made each call dequantize and lose the NCHWc conv (2.5x slower)
        new_nodes += [
            helper.make_node("Cast", [f"{name}_int8"], [f"{name}_float"], to=TensorProto.FLOAT,
                             name=f"{name}_Cast"),
            helper.make_node("Mul", [f"{name}_float", f"{name}_scale"], [name], name=f"{name}_Mul"),
        ]
    # the expansions come first: they read only initializers, and the graph must stay sorted
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)

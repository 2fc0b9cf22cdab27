"""Conversions that need no data: fp16, int8 weight-only, int8 dynamic and 4-bit weight-only,
with the weight storage they share (int8 + per-channel scale, or packed INT4 + block scales,
expanded when the session loads)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shrinkflow.quantize.graph import (
    WEIGHTED_OPS,
    load_at_opset,
    load_onnx,
    preprocess,
    quiet,
    rank_by_sensitivity,
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
        store_weights_int8(model, ("Conv",))
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
    store_weights_int8(model, WEIGHTED_OPS)
    return save_lean(model, dst)


INT4_BLOCK = 64  # weights per 4-bit block that share one scale


def to_int4_weights(src: str | Path, dst: str | Path, block_size: int = INT4_BLOCK,
                    keep_int8: Collection[str] = ()) -> Path:
    """Weight-only 4-bit: every Conv/Gemm/MatMul weight stored as packed INT4 (two per byte),
    symmetric in blocks of up to `block_size` weights of one output channel (`block_for`), each
    block with a float16 scale (`int4_blockwise`); computed in float32 as `to_int8_weights` is,
    the weights expanded once when the session loads. The weights shrink about 7x from float32
    (4 bits and a quarter of a bit of scale each). The weights named in `keep_int8` (see
    `weight_names`) are stored as int8 weights instead."""
    kept = frozenset(keep_int8)
    model = load_at_opset(src, INT4_OPSET)  # INT4 tensors and their Cast came with opset 21
    store_weights_int4(model, WEIGHTED_OPS, block_size, lambda name, *_: name not in kept)
    store_weights_int8(model, WEIGHTED_OPS)
    return save_lean(model, dst)


def int4_sensitivity(src: str | Path, x: np.ndarray, workdir: Path,
                     block_size: int = INT4_BLOCK) -> list[str]:
    """The weights of `src` (`weight_names`), most sensitive to 4 bits first: ranked on rows `x`
    with only that weight 4-bit, the others at 8 (`rank_by_sensitivity`)."""
    from shrinkflow.export import onnx_predictor

    names = weight_names(src)

    def logits_with(name: str) -> np.ndarray:
        path = to_int4_weights(src, workdir / "single.onnx", block_size,
                               keep_int8=[other for other in names if other != name])
        return onnx_predictor(path)(x)

    return [name for name, *_ in rank_by_sensitivity(names, logits_with, onnx_predictor(src)(x))]


def weight_names(src: str | Path) -> list[str]:
    """The names of `src`'s Conv/Gemm/MatMul weights that weight-only methods store in fewer bits
    (`_float_weights`)."""
    return sorted(name for name, _, _ in _float_weights(load_onnx(src).graph, WEIGHTED_OPS))


INT4_OPSET = 21


def block_for(width: int, block_size: int) -> int:
    """The block of a channel of `width` weights: all of them when they fit in `block_size`, else
    the largest divisor of `width` from half `block_size` up to it (no padding), else
    `block_size` (the last block padded)."""
    if width <= block_size:
        return width
    fitting = [size for size in range(block_size, block_size // 2 - 1, -1) if width % size == 0]
    return fitting[0] if fitting else block_size


def int4_blockwise(weight: np.ndarray, axis: int, block_size: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(int4 values as int8 in [-7, 7], shaped (channels, blocks, block_size); float16 scales
    (channels, blocks, 1)) of `weight`: each output channel (along `axis`) flattened, zero-padded
    to whole blocks, each block scaled by max|w| / 7 (1 for an all-zero block)."""
    rows = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    blocks = -(-rows.shape[1] // block_size)
    padded = np.zeros((rows.shape[0], blocks * block_size), np.float32)
    padded[:, :rows.shape[1]] = rows
    grouped = padded.reshape(rows.shape[0], blocks, block_size)
    absmax = np.abs(grouped).max(axis=2, keepdims=True)
    scale = np.where(absmax > 0, absmax / 7.0, 1.0).astype(np.float16)
    values = np.clip(np.round(grouped / scale.astype(np.float32)), -7, 7).astype(np.int8)
    return values, scale


def int4_round_trip(weight: np.ndarray, axis: int, block_size: int = INT4_BLOCK) -> np.ndarray:
    """The float32 weight that `weight` becomes once stored in 4-bit blocks (`block_for`,
    `int4_blockwise`) and expanded again, as the session does when it loads."""
    block = block_for(weight.size // weight.shape[axis], block_size)
    return int4_expand(*int4_blockwise(weight, axis, block), weight.shape, axis)


def on_int4_grid(weight: np.ndarray, axis: int, block_size: int = INT4_BLOCK) -> bool:
    """Whether `weight` holds 4-bit values that `int4_blockwise` stores without loss (a layer
    trained to them, as `low_bit_training` trains the layers it keeps out of 2 bits)."""
    return np.allclose(int4_round_trip(weight, axis, block_size), weight, rtol=1e-3, atol=1e-6)


def int4_expand(values: np.ndarray, scale: np.ndarray, shape: tuple[int, ...], axis: int
                ) -> np.ndarray:
    """The float32 weight of shape `shape` that `int4_blockwise` values and scales stand for."""
    rows = (values.astype(np.float32) * scale.astype(np.float32)).reshape(values.shape[0], -1)
    moved = [shape[axis], *(size for dim, size in enumerate(shape) if dim != axis)]
    return np.moveaxis(rows[:, :int(np.prod(moved[1:]))].reshape(moved), 0, axis)


def packed(name: str, values: np.ndarray, bits: int) -> onnx.TensorProto:
    """An INT4 (`bits` 4) or INT2 (`bits` 2) initializer holding the signed `values` (int8 that
    fit in `bits`), 8 // `bits` to a byte, the lowest bits first."""
    from onnx import TensorProto, helper

    per_byte = 8 // bits
    flat = (values.reshape(-1).astype(np.int16) & (2**bits - 1)).astype(np.uint8)
    flat = np.append(flat, np.zeros(-len(flat) % per_byte, np.uint8))
    packed_bytes = np.zeros(len(flat) // per_byte, np.uint8)
    for position in range(per_byte):
        packed_bytes |= flat[position::per_byte] << (bits * position)
    data_type = {4: TensorProto.INT4, 2: TensorProto.INT2}[bits]
    return helper.make_tensor(name, data_type, values.shape, packed_bytes.tobytes(), raw=True)


Expansion = Callable[[str, np.ndarray, int], "tuple[list[onnx.TensorProto], list[onnx.NodeProto]] | None"]


def replace_weights(model: onnx.ModelProto, op_types: Sequence[str], expand: Expansion) -> None:
    """Replace each float32 weight (2-D or more) of `op_types` nodes by the initializers and
    nodes `expand(name, weight, output-channel axis)` returns for it (None: the weight stays).
    The nodes go first: they read only initializers, so the graph stays sorted."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    new_nodes = []
    for name, axis, weight in _float_weights(graph, op_types):
        found = expand(name, weight, axis)
        if found is None:
            continue
        constants, nodes = found
        graph.initializer.remove(initializers[name])
        graph.initializer.extend(constants)
        new_nodes += nodes
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)


def store_weights_int4(model: onnx.ModelProto, op_types: Sequence[str], block_size: int,
                       which: Callable[[str, np.ndarray, int], bool]) -> None:
    """Replace the float weights of `op_types` nodes for which `which(name, weight, axis)` holds
    by packed INT4 values and float16 block scales, expanded by Cast, Mul, Reshape, Slice and
    Transpose nodes that ONNX Runtime folds into a float32 weight when the session loads."""
    from onnx import TensorProto, helper, numpy_helper

    def expand(name: str, weight: np.ndarray, axis: int) -> tuple[list, list] | None:
        if not which(name, weight, axis):
            return None
        moved = [weight.shape[axis], *(size for dim, size in enumerate(weight.shape) if dim != axis)]
        width = int(np.prod(moved[1:]))
        block = block_for(width, block_size)
        values, scale = int4_blockwise(weight, axis, block)
        constants = [packed(f"{name}_int4", values, 4),
                     numpy_helper.from_array(scale, f"{name}_scale"),
                     numpy_helper.from_array(np.asarray(moved, np.int64), f"{name}_shape")]
        nodes = [helper.make_node("Cast", [f"{name}_int4"], [f"{name}_values"], to=TensorProto.FLOAT),
                 helper.make_node("Cast", [f"{name}_scale"], [f"{name}_scales"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", [f"{name}_values", f"{name}_scales"], [f"{name}_blocks"])]
        rows = f"{name}_blocks"
        if values.shape[1] * block != width:  # the padding of the last block is cut off
            constants += [numpy_helper.from_array(np.asarray([moved[0], -1], np.int64), f"{name}_rows"),
                          numpy_helper.from_array(np.asarray([width], np.int64), f"{name}_width")]
            nodes += [helper.make_node("Reshape", [rows, f"{name}_rows"], [f"{name}_padded"]),
                      helper.make_node("Slice", [f"{name}_padded", "int4_zero", f"{name}_width",
                                                 "int4_one"], [f"{name}_rows_only"])]
            rows = f"{name}_rows_only"
        nodes.append(helper.make_node("Reshape", [rows, f"{name}_shape"],
                                      [name if axis == 0 else f"{name}_first"]))
        if axis:  # back from output channels first to the weight's own layout
            nodes.append(helper.make_node("Transpose", [f"{name}_first"], [name],
                                          perm=[*range(1, axis + 1), 0, *range(axis + 1, weight.ndim)]))
        return constants, nodes

    model.graph.initializer.extend([numpy_helper.from_array(np.asarray([0], np.int64), "int4_zero"),
                                    numpy_helper.from_array(np.asarray([1], np.int64), "int4_one")])
    replace_weights(model, op_types, expand)


def _float_weights(graph: onnx.GraphProto, op_types: Sequence[str]
                   ) -> list[tuple[str, int, np.ndarray]]:
    """(name, output-channel axis, array) of each float32 weight initializer (2-D or more) of
    `op_types` nodes, by name: what the weight-only methods store in fewer bits."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.initializer}
    found = []
    for name, axis in sorted(_weight_axes(graph, op_types, initializers).items()):
        weight = numpy_helper.to_array(initializers[name])
        if weight.dtype == np.float32 and weight.ndim >= 2:
            found.append((name, axis, weight))
    return found


def _weight_axes(graph: onnx.GraphProto, op_types: Sequence[str],
                 initializers: dict[str, onnx.TensorProto]) -> dict[str, int]:
    """The weight initializers of `op_types` nodes, each with its output-channel axis."""
    return {node.input[1]: _weight_axis(node, len(initializers[node.input[1]].dims))
            for node in graph.node
            if node.op_type in op_types and len(node.input) > 1 and node.input[1] in initializers}


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


def store_weights_int8(model: onnx.ModelProto, op_types: Sequence[str]) -> None:
    """Replace the float weight initializers of `op_types` nodes by int8 + per-channel scale,
    expanded back by Cast + Mul nodes that ONNX Runtime constant-folds when the session loads."""
    from onnx import TensorProto, helper, numpy_helper

    def expand(name: str, weight: np.ndarray, axis: int) -> tuple[list, list]:
        quantized, scale = _int8_per_channel(weight, axis)
        # Cast + Mul rather than DequantizeLinear: ORT keeps DequantizeLinear unfolded (it waits
        # for a QDQ fusion), which made each call dequantize and lose the NCHWc conv (2.5x slower)
        return ([numpy_helper.from_array(quantized, f"{name}_int8"),
                 numpy_helper.from_array(scale, f"{name}_scale")],
                [helper.make_node("Cast", [f"{name}_int8"], [f"{name}_float"],
                                  to=TensorProto.FLOAT, name=f"{name}_Cast"),
                 helper.make_node("Mul", [f"{name}_float", f"{name}_scale"], [name],
                                  name=f"{name}_Mul")])

    replace_weights(model, op_types, expand)

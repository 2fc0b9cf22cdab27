"""shrinkflow.quantize.convert: fp16, int8 weight-only and int8 dynamic (no data needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from shrinkflow import quantize as q
from shrinkflow.export import onnx_predictor
from shrinkflow.measure import file_size
from tests.core.quantize.conftest import assert_runs_like_fp32, float_weighted_nodes, initializers


@pytest.fixture(scope="module")
def conversions(fp32: Path, workdir: Path) -> dict[str, Path]:
    """Every data-free conversion of the fp32 model, made once."""
    return {
        "fp16": q.to_fp16(fp32, workdir / "fp16.onnx"),
        "int8_dynamic": q.to_int8_dynamic(fp32, workdir / "int8_dynamic.onnx"),
        "int8_weights": q.to_int8_weights(fp32, workdir / "int8_weights.onnx"),
    }


@pytest.mark.parametrize("name", ["fp16", "int8_weights", "int8_dynamic"])
def test_each_conversion_runs_on_float32_input_and_agrees_with_fp32(name, conversions, fp32, splits):
    assert_runs_like_fp32(conversions[name], fp32, splits.test.x)


def test_conversions_are_valid_onnx(conversions):
    for path in conversions.values():
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)  # raises naming the problem


def test_int8_files_are_smaller_than_fp32_and_fp16_halves_the_weights(conversions, fp32):
    sizes = {"fp32": file_size(fp32), **{name: file_size(path) for name, path in conversions.items()}}
    ratios = {name: round(size / sizes["fp32"], 3) for name, size in sizes.items()}
    for name in ("int8_weights", "int8_dynamic"):
        assert sizes[name] < sizes["fp32"], f"{name} should be smaller than fp32; ratios: {ratios}"
    # the file has fixed overhead (graph, names); the weights themselves take exactly half
    weight_bytes = {name: sum(a.nbytes for a in initializers(onnx.load(str(path))).values()
                              if a.dtype.kind == "f")
                    for name, path in (("fp16", conversions["fp16"]), ("fp32", fp32))}
    assert weight_bytes["fp16"] * 2 == weight_bytes["fp32"], f"fp16 weights: {weight_bytes}"
    assert 0.4 < ratios["fp16"] < 0.7, f"fp16 should be roughly half of fp32, ratios: {ratios}"


def test_fp16_keeps_float32_input_and_output_and_stores_float16_weights(conversions):
    model = onnx.load(str(conversions["fp16"]))
    io_types = [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]
    assert io_types == [onnx.TensorProto.FLOAT] * 2, f"fp16 I/O should stay float32, got {io_types}"
    dtypes = {a.dtype for a in initializers(model).values() if a.dtype.kind == "f"}
    assert dtypes == {np.dtype(np.float16)}, f"float weights should all be float16, got {dtypes}"


def test_int8_dynamic_quantizes_matmul_at_run_time_and_stores_conv_weights_as_int8(conversions):
    model = onnx.load(str(conversions["int8_dynamic"]))
    ops = {node.op_type for node in model.graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger"}, f"Gemm should be dynamic int8: {ops}"
    assert "ConvInteger" not in ops, "convolutions must not become ConvInteger (slow on CPU)"
    inits = initializers(model)
    conv_weights = [inits[n.input[0]] for n in model.graph.node
                    if n.op_type == "Cast" and n.input[0] in inits]
    assert len(conv_weights) == 2 and all(a.dtype == np.int8 for a in conv_weights), (
        f"both conv weights should be stored as int8, got {[a.dtype for a in conv_weights]}")
    float_bytes = sum(a.nbytes for a in inits.values() if a.dtype == np.float32)
    assert float_bytes < sum(a.nbytes for a in conv_weights), "few float bytes should remain"


def test_int8_weights_stores_every_weight_as_int8_with_one_scale_per_output_channel(conversions):
    model = onnx.load(str(conversions["int8_weights"]))
    inits = initializers(model)
    stored = {n.input[0]: inits[n.input[0]] for n in model.graph.node
              if n.op_type == "Cast" and n.input[0] in inits}
    assert len(stored) == 3 and all(a.dtype == np.int8 for a in stored.values()), (
        f"two conv weights and the classifier should be int8, got "
        f"{ {name: a.dtype for name, a in stored.items()} }")
    scales = [inits[n.input[1]] for n in model.graph.node if n.op_type == "Mul"]
    assert sorted(scale.size for scale in scales) == sorted(a.shape[0] for a in stored.values()), \
        "one scale per output channel (Conv: axis 0, Gemm with transB: axis 0)"
    ops = {node.op_type for node in model.graph.node}
    assert not ops & {"DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger", "ConvInteger"}, \
        f"activations must stay float32: {ops}"


def test_int8_weights_are_expanded_once_when_the_session_loads(conversions, tmp_path):
    # when ONNX Runtime optimizes the graph at load time (as every session here does)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(conversions["int8_weights"]), options,
                         providers=["CPUExecutionProvider"])
    # then the Cast + Mul expanding the weights are folded into float constants: no per-call cost
    ops = {node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert not ops & {"Cast", "Mul"}, f"weight expansion should be constant-folded, left: {ops}"


def test_int8_weights_scales_a_matmul_weight_along_its_output_columns(tmp_path):
    from onnx import TensorProto, helper

    weight = np.array([[1.0, -100.0], [0.5, 50.0], [-0.25, 25.0]], np.float32)  # (in 3, out 2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])], "matmul",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(weight, "w")])
    src = tmp_path / "matmul.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(src))
    dst = q.to_int8_weights(src, tmp_path / "matmul-int8.onnx")
    scale = initializers(onnx.load(str(dst)))["w_scale"]
    assert scale.shape == (1, 2), f"one scale per output column, got shape {scale.shape}"
    np.testing.assert_allclose(scale.ravel(), [1.0 / 127, 100.0 / 127], rtol=1e-6)
    x = np.eye(3, dtype=np.float32)
    np.testing.assert_allclose(onnx_predictor(dst)(x), weight, atol=100.0 / 127 / 2 + 1e-6)


def test_int8_dynamic_without_int8_storage_keeps_conv_weights_float(fp32, tmp_path):
    path = q.to_int8_dynamic(fp32, tmp_path / "d.onnx", store_conv_weights_int8=False)
    assert len(float_weighted_nodes(path)) == 2, "both convs should keep float weights"

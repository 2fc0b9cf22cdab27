"""shrinkflow.quantize.calibrate: int8 static with calibrated activation ranges, and the per-node
sensitivity ranking the fallback uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from shrinkflow import quantize as q
from shrinkflow.measure import file_size
from shrinkflow.quantize.calibrate import CALIBRATION_METHODS, Calibrated
from tests.core.quantize.conftest import (
    assert_runs_like_fp32,
    float_weighted_nodes,
    initializers,
    predictions,
)


def _activation_scales(path: Path) -> dict[str, float]:
    """Scale of every activation QuantizeLinear (weights are stored already quantized)."""
    model = onnx.load(str(path))
    inits = initializers(model)
    return {node.input[0]: float(inits[node.input[1]]) for node in model.graph.node
            if node.op_type == "QuantizeLinear"}


def _weight_scale_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Shape of the scale of every int8 weight's DequantizeLinear, by weight name."""
    inits = initializers(model)
    return {node.input[0]: inits[node.input[1]].shape for node in model.graph.node
            if node.op_type == "DequantizeLinear"
            and inits.get(node.input[0], np.zeros(0)).dtype == np.int8}


@pytest.mark.parametrize("name", ["minmax", "percentile", "entropy", "qoperator"])
def test_each_static_variant_runs_on_float32_input_and_agrees_with_fp32(
    name, static_variants, fp32, splits
):
    assert_runs_like_fp32(static_variants[name], fp32, splits.test.x)


def test_static_variants_are_valid_onnx(static_variants):
    for path in static_variants.values():
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)  # raises naming the problem


def test_int8_static_files_are_smaller_than_fp32(static_variants, fp32):
    sizes = {name: file_size(static_variants[name]) for name in ("minmax", "qoperator")}
    assert all(size < file_size(fp32) for size in sizes.values()), (
        f"int8 static should be smaller than fp32 ({file_size(fp32)} bytes): {sizes}")


def test_int8_static_graph_has_qdq_nodes_and_one_weight_scale_per_output_channel(static_variants):
    model = onnx.load(str(static_variants["minmax"]))
    ops = [node.op_type for node in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops, f"QDQ format expected, got {ops}"
    expected = {"features.0.weight_quantized": (8,), "features.4.weight_quantized": (16,),
                "head.2.weight_quantized": (10,)}
    weight_scales = _weight_scale_shapes(model)
    assert weight_scales == expected, f"per-channel weight scales expected: {weight_scales}"


def test_int8_static_per_tensor_has_one_weight_scale(fp32, calibration, tmp_path):
    model = onnx.load(str(q.to_int8_static(fp32, tmp_path / "t.onnx", calibration, per_channel=False)))
    shapes = set(_weight_scale_shapes(model).values())
    assert shapes == {()}, f"per_channel=False should give scalar weight scales, got {shapes}"


def test_calibration_methods_give_different_activation_scales(static_variants):
    scales = {m: _activation_scales(static_variants[m]) for m in CALIBRATION_METHODS}
    assert len({tuple(sorted(s.items())) for s in scales.values()}) == 3, (
        f"minmax, percentile and entropy should each give different scales: {scales}")
    for method in ("percentile", "entropy"):
        # both clip the observed range, never widen it
        wider = {t: s for t, s in scales[method].items() if s > scales["minmax"][t] * (1 + 1e-5)}
        assert not wider, f"{method} scales wider than minmax: {wider}"
        assert any(s < scales["minmax"][t] * 0.99 for t, s in scales[method].items()), (
            f"{method} should clip at least one activation: {scales[method]} vs {scales['minmax']}")


def test_int8_static_is_deterministic(fp32, calibration, tmp_path, static_variants):
    again = q.to_int8_static(fp32, tmp_path / "again.onnx", calibration, "entropy")
    assert again.read_bytes() == static_variants["entropy"].read_bytes(), (
        "the same inputs should give the same bytes")


def test_qoperator_format_writes_qlinear_ops(static_variants):
    ops = {node.op_type for node in onnx.load(str(static_variants["qoperator"])).graph.node}
    assert "QLinearConv" in ops, f"QOperator format should write QLinearConv, got {ops}"


def test_exclude_nodes_leaves_those_nodes_in_float(fp32, calibration, splits, tmp_path):
    first_conv, second_conv, _ = q.quantizable_nodes(fp32)
    path = q.to_int8_static(fp32, tmp_path / "x.onnx", calibration, exclude_nodes=[first_conv])
    assert float_weighted_nodes(path) == [first_conv], (
        f"only {first_conv} should keep float weights, got {float_weighted_nodes(path)}")
    agreement = float((predictions(path, splits.test.x) == predictions(fp32, splits.test.x)).mean())
    assert agreement >= 0.95, f"agreement with fp32 {agreement:.3f} < 0.95"


def test_exclude_nodes_rejects_unknown_names(fp32, calibration, tmp_path):
    with pytest.raises(ValueError, match="no_such_node"):
        q.to_int8_static(fp32, tmp_path / "x.onnx", calibration, exclude_nodes=["no_such_node"])
    assert not (tmp_path / "x.onnx").exists(), "nothing should be written"


def test_int8_static_rejects_empty_calibration_data(fp32, tmp_path):
    with pytest.raises(ValueError, match="calibration_x"):
        q.to_int8_static(fp32, tmp_path / "x.onnx", np.zeros((0, 1, 8, 8), np.float32))


def test_sensitivity_ranks_every_weighted_node_most_sensitive_first(
    sensitivity, fp32, calibration, tmp_path
):
    # given the ranking of the fp32 model's weighted nodes (each quantized alone, minmax)
    assert sorted(name for name, *_ in sensitivity) == sorted(q.quantizable_nodes(fp32)), sensitivity
    # then the most changed top classes come first, then the largest relative logit error
    scores = [(changed, error) for _, changed, error in sensitivity]
    assert scores == sorted(scores, reverse=True) and all(
        0 <= changed <= 1 and error >= 0 for changed, error in scores), (
        f"most sensitive first, shares and errors non-negative: {sensitivity}")
    # and a fresh calibration of the same model gives the same ranking
    again = Calibrated(fp32, calibration, 99.99, tmp_path).sensitivity("minmax", per_channel=True)
    assert again == sensitivity, "the ranking should be reproducible"

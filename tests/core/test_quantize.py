"""shrinkflow.quantize: fp16, int8 dynamic/static ONNX, QAT and the accuracy-aware fallback chain.

One tiny CNN (8 and 16 channels) is trained once on scikit-learn's digits and exported; every
test quantizes that file. Accuracy is computed with shrinkflow.measure, as everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from pydantic import ValidationError

from shrinkflow import quantize as q
from shrinkflow.config import ConfigError, QuantizeConfig, TrainConfig, load_params
from shrinkflow.data import Split, Splits, normalize_splits, stratified_split
from shrinkflow.export import export_onnx, onnx_predictor
from shrinkflow.measure import classification_metrics, file_size
from shrinkflow.models import CNN, Architecture, build_model
from shrinkflow.train import EpochLog, fit, predict_logits

ARCH = Architecture("cnn", (1, 8, 8), 10, (8, 16))
TRAIN = TrainConfig(epochs=5, batch_size=32, lr=0.01, weight_decay=0.0, patience=100,
                    device="cpu", amp=False, seed=0)
CALIBRATION_ROWS = 128


@pytest.fixture(scope="module")
def splits() -> Splits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.reshape(-1, 1, 8, 8).astype(np.float32)
    y = digits.target.astype(np.int64)
    normalized, _ = normalize_splits(stratified_split(x, y, 0.15, 0.2, seed=0), "image")
    return normalized


@pytest.fixture(scope="module")
def trained(splits: Splits) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ARCH)
    fit(model, splits.train, splits.val, TRAIN, progress=False)
    return model


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quantize")


@pytest.fixture(scope="module")
def fp32(trained: torch.nn.Module, workdir: Path) -> Path:
    return export_onnx(trained, ARCH.input_shape, workdir / "fp32.onnx")


@pytest.fixture(scope="module")
def calibration(splits: Splits) -> np.ndarray:
    return splits.train.x[:CALIBRATION_ROWS]


def _predictions(path: Path, x: np.ndarray) -> np.ndarray:
    return onnx_predictor(path)(x).argmax(1)


def _accuracy(path: Path, split: Split) -> float:
    return classification_metrics(split.y, _predictions(path, split.x))["accuracy"]


@pytest.fixture(scope="module")
def variants(fp32: Path, calibration: np.ndarray, workdir: Path) -> dict[str, Path]:
    """Every quantized variant of the fp32 model, made once."""
    out = {
        "fp16": q.to_fp16(fp32, workdir / "fp16.onnx"),
        "int8_dynamic": q.to_int8_dynamic(fp32, workdir / "int8_dynamic.onnx"),
        "int8_weights": q.to_int8_weights(fp32, workdir / "int8_weights.onnx"),
    }
    for method in q.CALIBRATION_METHODS:
        out[f"int8_static_{method}"] = q.to_int8_static(
            fp32, workdir / f"int8_static_{method}.onnx", calibration, method)
    out["int8_static_qoperator"] = q.to_int8_static(
        fp32, workdir / "int8_static_qoperator.onnx", calibration, quant_format="qoperator")
    return out


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _activation_scales(path: Path) -> dict[str, float]:
    """Scale of every activation QuantizeLinear (weights are stored already quantized)."""
    model = onnx.load(str(path))
    inits = _initializers(model)
    return {node.input[0]: float(inits[node.input[1]]) for node in model.graph.node
            if node.op_type == "QuantizeLinear"}


def _float_weighted_nodes(path: Path) -> list[str]:
    """Weighted nodes still computing in float: their weight is a float initializer."""
    model = onnx.load(str(path))
    inits = _initializers(model)
    return [node.name for node in model.graph.node if node.op_type in q.WEIGHTED_OPS
            and node.input[1] in inits and inits[node.input[1]].dtype == np.float32]


# ---------------------------------------------------------------------------------------------
# every variant runs and agrees with float32
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fp16", "int8_weights", "int8_dynamic", "int8_static_minmax",
                                  "int8_static_percentile", "int8_static_entropy",
                                  "int8_static_qoperator"])
def test_each_variant_runs_on_float32_input_and_agrees_with_fp32(name, variants, fp32, splits):
    # given the test split and the float model's predictions
    x = splits.test.x
    reference = _predictions(fp32, x)
    # when the quantized file runs in ONNX Runtime with the same float32 input
    logits = onnx_predictor(variants[name])(x)
    # then it returns float32 logits that pick the same class for at least 95% of the rows
    assert logits.dtype == np.float32 and logits.shape == (len(x), ARCH.n_classes), (
        f"{name}: expected float32 logits of shape {(len(x), ARCH.n_classes)}, "
        f"got {logits.dtype} {logits.shape}")
    agreement = float((logits.argmax(1) == reference).mean())
    assert agreement >= 0.95, f"{name} agrees with fp32 on {agreement:.3f} of the rows, expected >= 0.95"


def test_variants_are_valid_onnx(variants):
    for name, path in variants.items():
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)  # raises naming the problem


def test_int8_files_are_smaller_than_fp32_and_fp16_halves_the_weights(variants, fp32):
    sizes = {"fp32": file_size(fp32), **{name: file_size(path) for name, path in variants.items()}}
    ratios = {name: round(size / sizes["fp32"], 3) for name, size in sizes.items()}
    for name in ("int8_weights", "int8_dynamic", "int8_static_minmax", "int8_static_qoperator"):
        assert sizes[name] < sizes["fp32"], f"{name} should be smaller than fp32; ratios: {ratios}"
    # the file has fixed overhead (graph, names); the weights themselves take exactly half
    weight_bytes = {name: sum(a.nbytes for a in _initializers(onnx.load(str(path))).values()
                              if a.dtype.kind == "f")
                    for name, path in (("fp16", variants["fp16"]), ("fp32", fp32))}
    assert weight_bytes["fp16"] * 2 == weight_bytes["fp32"], f"fp16 weights: {weight_bytes}"
    assert 0.4 < ratios["fp16"] < 0.7, f"fp16 should be roughly half of fp32, ratios: {ratios}"


def test_fp16_keeps_float32_input_and_output_and_stores_float16_weights(variants):
    model = onnx.load(str(variants["fp16"]))
    io_types = [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]
    assert io_types == [onnx.TensorProto.FLOAT] * 2, f"fp16 I/O should stay float32, got {io_types}"
    dtypes = {a.dtype for a in _initializers(model).values() if a.dtype.kind == "f"}
    assert dtypes == {np.dtype(np.float16)}, f"float weights should all be float16, got {dtypes}"


def test_int8_dynamic_quantizes_matmul_at_run_time_and_stores_conv_weights_as_int8(variants):
    model = onnx.load(str(variants["int8_dynamic"]))
    ops = {node.op_type for node in model.graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger"}, f"Gemm should be dynamic int8: {ops}"
    assert "ConvInteger" not in ops, "convolutions must not become ConvInteger (slow on CPU)"
    inits = _initializers(model)
    conv_weights = [inits[n.input[0]] for n in model.graph.node
                    if n.op_type == "Cast" and n.input[0] in inits]
    assert len(conv_weights) == 2 and all(a.dtype == np.int8 for a in conv_weights), (
        f"both conv weights should be stored as int8, got {[a.dtype for a in conv_weights]}")
    float_bytes = sum(a.nbytes for a in inits.values() if a.dtype == np.float32)
    assert float_bytes < sum(a.nbytes for a in conv_weights), "few float bytes should remain"


def test_int8_weights_stores_every_weight_as_int8_with_one_scale_per_output_channel(variants):
    model = onnx.load(str(variants["int8_weights"]))
    inits = _initializers(model)
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


def test_int8_weights_are_expanded_once_when_the_session_loads(variants, tmp_path):
    # when ONNX Runtime optimizes the graph at load time (as every session here does)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(variants["int8_weights"]), options, providers=["CPUExecutionProvider"])
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
    scale = _initializers(onnx.load(str(dst)))["w_scale"]
    assert scale.shape == (1, 2), f"one scale per output column, got shape {scale.shape}"
    np.testing.assert_allclose(scale.ravel(), [1.0 / 127, 100.0 / 127], rtol=1e-6)
    x = np.eye(3, dtype=np.float32)
    np.testing.assert_allclose(onnx_predictor(dst)(x), weight, atol=100.0 / 127 / 2 + 1e-6)


def test_int8_dynamic_without_int8_storage_keeps_conv_weights_float(fp32, tmp_path):
    path = q.to_int8_dynamic(fp32, tmp_path / "d.onnx", store_conv_weights_int8=False)
    assert len(_float_weighted_nodes(path)) == 2, "both convs should keep float weights"


# ---------------------------------------------------------------------------------------------
# int8 static
# ---------------------------------------------------------------------------------------------
def test_int8_static_graph_has_qdq_nodes_and_one_weight_scale_per_output_channel(variants):
    model = onnx.load(str(variants["int8_static_minmax"]))
    ops = [node.op_type for node in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops, f"QDQ format expected, got {ops}"
    inits = _initializers(model)
    weight_scales = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and inits.get(node.input[0], np.zeros(0)).dtype == np.int8:
            weight_scales[node.input[0]] = inits[node.input[1]].shape
    expected = {"features.0.weight_quantized": (8,), "features.4.weight_quantized": (16,),
                "head.2.weight_quantized": (10,)}
    assert weight_scales == expected, f"per-channel weight scales expected: {weight_scales}"


def test_int8_static_per_tensor_has_one_weight_scale(fp32, calibration, tmp_path):
    model = onnx.load(str(q.to_int8_static(fp32, tmp_path / "t.onnx", calibration, per_channel=False)))
    inits = _initializers(model)
    shapes = {inits[n.input[1]].shape for n in model.graph.node
              if n.op_type == "DequantizeLinear" and inits.get(n.input[0], np.zeros(0)).dtype == np.int8}
    assert shapes == {()}, f"per_channel=False should give scalar weight scales, got {shapes}"


def test_calibration_methods_give_different_activation_scales(variants):
    scales = {m: _activation_scales(variants[f"int8_static_{m}"]) for m in q.CALIBRATION_METHODS}
    assert len({tuple(sorted(s.items())) for s in scales.values()}) == 3, (
        f"minmax, percentile and entropy should each give different scales: {scales}")
    for method in ("percentile", "entropy"):
        # both clip the observed range, never widen it
        wider = {t: s for t, s in scales[method].items() if s > scales["minmax"][t] * (1 + 1e-5)}
        assert not wider, f"{method} scales wider than minmax: {wider}"
        assert any(s < scales["minmax"][t] * 0.99 for t, s in scales[method].items()), (
            f"{method} should clip at least one activation: {scales[method]} vs {scales['minmax']}")


def test_int8_static_is_deterministic(fp32, calibration, tmp_path, variants):
    again = q.to_int8_static(fp32, tmp_path / "again.onnx", calibration, "entropy")
    assert again.read_bytes() == variants["int8_static_entropy"].read_bytes(), (
        "the same inputs should give the same bytes")


def test_qoperator_format_writes_qlinear_ops(variants):
    ops = {node.op_type for node in onnx.load(str(variants["int8_static_qoperator"])).graph.node}
    assert "QLinearConv" in ops, f"QOperator format should write QLinearConv, got {ops}"


def test_quantizable_nodes_lists_weighted_nodes_in_graph_order(fp32):
    model = onnx.load(str(fp32))
    expected = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert q.quantizable_nodes(fp32) == expected and len(expected) == 3, (
        f"expected the 2 convs and the Gemm, got {q.quantizable_nodes(fp32)}")


def test_exclude_nodes_leaves_those_nodes_in_float(fp32, calibration, splits, tmp_path):
    first_conv, second_conv, _ = q.quantizable_nodes(fp32)
    path = q.to_int8_static(fp32, tmp_path / "x.onnx", calibration, exclude_nodes=[first_conv])
    assert _float_weighted_nodes(path) == [first_conv], (
        f"only {first_conv} should keep float weights, got {_float_weighted_nodes(path)}")
    agreement = float((_predictions(path, splits.test.x) == _predictions(fp32, splits.test.x)).mean())
    assert agreement >= 0.95, f"agreement with fp32 {agreement:.3f} < 0.95"


def test_exclude_nodes_rejects_unknown_names(fp32, calibration, tmp_path):
    with pytest.raises(ValueError, match="no_such_node"):
        q.to_int8_static(fp32, tmp_path / "x.onnx", calibration, exclude_nodes=["no_such_node"])


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"method": "int4"}, "int4"),
    ({"percentile": 30.0}, "30.0"),
    ({"quant_format": "int4"}, "int4"),
])
def test_int8_static_rejects_bad_arguments_naming_the_value(fp32, calibration, tmp_path, kwargs, named):
    with pytest.raises(ValueError, match=named):
        q.to_int8_static(fp32, tmp_path / "x.onnx", calibration, **kwargs)
    assert not (tmp_path / "x.onnx").exists(), "nothing should be written"


def test_int8_static_rejects_empty_calibration_data(fp32, tmp_path):
    with pytest.raises(ValueError, match="calibration_x"):
        q.to_int8_static(fp32, tmp_path / "x.onnx", np.zeros((0, 1, 8, 8), np.float32))


@pytest.mark.parametrize(("override", "named"), [
    ("quantize.calibration=int4", "int4"),
    ("quantize.percentile=30", "30"),
    ("quantize.fallback=[int4]", "int4"),
])
def test_bad_quantize_config_fails_naming_the_key_and_value(tmp_path, override, named):
    params = tmp_path / "params.yaml"
    params.write_text("")
    with pytest.raises(ConfigError, match=named) as error:
        load_params(params, overrides=[override])
    assert override.split("=")[0] in str(error.value), f"the key should be named: {error.value}"


def test_quantize_config_rejects_an_unknown_method():
    with pytest.raises(ValidationError, match="int4"):
        QuantizeConfig(methods=("int4",))


def test_node_sensitivity_ranks_every_weighted_node(fp32, calibration):
    ranking = q.node_sensitivity(fp32, calibration)
    assert sorted(name for name, _ in ranking) == sorted(q.quantizable_nodes(fp32)), ranking
    errors = [error for _, error in ranking]
    assert errors == sorted(errors, reverse=True) and all(e >= 0 for e in errors), (
        f"most sensitive first, errors non-negative: {ranking}")
    assert q.node_sensitivity(fp32, calibration) == ranking, "the ranking should be reproducible"


# ---------------------------------------------------------------------------------------------
# fallback chain
# ---------------------------------------------------------------------------------------------
class ScriptedEvaluate:
    """An `evaluate` stub returning scripted accuracies and remembering what it was given."""

    def __init__(self, accuracies: list[float] | Callable[[Path], float]) -> None:
        self.accuracies = accuracies
        self.paths: list[Path] = []

    def __call__(self, path: Path) -> float:
        assert path.is_file(), "evaluate should receive an existing file"
        self.paths.append(path)
        if callable(self.accuracies):
            return self.accuracies(path)
        return self.accuracies[len(self.paths) - 1]


def _cfg(**changes) -> QuantizeConfig:
    # qdq: the format the `variants` fixture was made with, so files can be compared byte for byte
    return QuantizeConfig(**{"calibration_samples": CALIBRATION_ROWS, "format": "qdq", **changes})


def test_fallback_stops_at_the_first_acceptable_attempt(fp32, calibration, tmp_path, variants):
    # given minmax losing 2 pp and percentile 0.2 pp, with a 0.5 pp tolerance
    evaluate = ScriptedEvaluate([0.97, 0.988])
    qat_calls: list[int] = []
    result = q.quantize_with_fallback(
        fp32, tmp_path / "out.onnx", calibration, evaluate, reference_accuracy=0.99,
        cfg=_cfg(calibration="minmax", max_accuracy_drop_pp=0.5),
        qat=lambda: qat_calls.append(1) or fp32)
    # then minmax then percentile were tried, percentile was accepted and nothing else ran
    steps = [(a.step, a.calibration, a.accepted) for a in result.attempts]
    assert steps == [("initial", "minmax", False), ("percentile", "percentile", True)], steps
    assert result.accepted and result.chosen == result.attempts[1]
    assert [a.drop_pp for a in result.attempts] == pytest.approx([2.0, 0.2])
    assert not qat_calls, "qat should not run once an attempt is accepted"
    # and dst holds the percentile model; the attempts' temporary files are gone
    assert result.path.read_bytes() == variants["int8_static_percentile"].read_bytes(), (
        "dst should be the percentile-calibrated model")
    assert result.chosen.size_bytes == file_size(result.path)
    assert not any(p.exists() for p in evaluate.paths), "temporary attempts should be removed"


def test_fallback_accepts_a_drop_exactly_at_the_tolerance(fp32, calibration, tmp_path):
    result = q.quantize_with_fallback(fp32, tmp_path / "o.onnx", calibration,
                                      ScriptedEvaluate([0.985]), 0.99, _cfg(max_accuracy_drop_pp=0.5))
    assert result.accepted and len(result.attempts) == 1, f"0.5 pp should pass 0.5 pp: {result.attempts}"


def test_fallback_records_every_step_in_order_and_returns_the_best_when_none_passes(
    fp32, calibration, tmp_path
):
    # given accuracies that never come within tolerance; no QAT callable
    accuracies = [0.90, 0.92, 0.91, 0.93, 0.94]
    evaluate = ScriptedEvaluate(accuracies)
    result = q.quantize_with_fallback(
        fp32, tmp_path / "out.onnx", calibration, evaluate, reference_accuracy=0.99,
        cfg=_cfg(calibration="minmax", fallback=("percentile", "entropy", "minmax",
                                                 "exclude_sensitive", "qat")))
    steps = [(a.step, a.calibration, len(a.excluded_nodes)) for a in result.attempts]
    # minmax is not repeated; exclusion grows to all but one weighted node; qat is skipped
    assert steps == [("initial", "minmax", 0), ("percentile", "percentile", 0),
                     ("entropy", "entropy", 0), ("exclude_sensitive", "percentile", 1),
                     ("exclude_sensitive", "percentile", 2)], steps
    assert [a.accuracy for a in result.attempts] == accuracies
    assert not result.accepted and result.chosen == result.attempts[-1], (
        "with nothing accepted, the most accurate attempt is chosen and marked not accepted")
    assert result.path.is_file() and result.chosen.size_bytes == file_size(result.path)
    assert all(a.method == "int8_static" for a in result.attempts)


def test_fallback_exclude_sensitive_grows_the_exclusion_most_sensitive_first(
    fp32, calibration, tmp_path
):
    # given an evaluate that passes only when at least two weighted nodes stay float
    evaluate = ScriptedEvaluate(lambda path: 0.99 if len(_float_weighted_nodes(path)) >= 2 else 0.9)
    result = q.quantize_with_fallback(fp32, tmp_path / "out.onnx", calibration, evaluate, 0.99,
                                      _cfg(fallback=("exclude_sensitive",)))
    ranking = [name for name, _ in q.node_sensitivity(fp32, calibration)]
    excluded = [a.excluded_nodes for a in result.attempts]
    assert excluded == [(), tuple(ranking[:1]), tuple(ranking[:2])], (excluded, ranking)
    assert result.accepted and sorted(_float_weighted_nodes(result.path)) == sorted(ranking[:2])


def test_fallback_qat_step_quantizes_what_the_callable_returns(fp32, calibration, tmp_path):
    calls: list[int] = []

    def qat() -> Path:
        calls.append(1)
        return fp32  # stands in for a QAT-trained export

    result = q.quantize_with_fallback(fp32, tmp_path / "out.onnx", calibration,
                                      ScriptedEvaluate([0.9, 0.99]), 0.99,
                                      _cfg(calibration="entropy", fallback=("qat",)), qat=qat)
    assert calls == [1] and [a.method for a in result.attempts] == ["int8_static", "qat"]
    assert result.chosen.method == "qat" and result.chosen.calibration == "minmax" and result.accepted


def test_fallback_rejects_an_unknown_calibration(fp32, calibration, tmp_path):
    cfg = QuantizeConfig.model_construct(**{**QuantizeConfig().model_dump(), "calibration": "int4"})
    with pytest.raises(ValueError, match="int4"):
        q.quantize_with_fallback(fp32, tmp_path / "o.onnx", calibration, ScriptedEvaluate([1.0]),
                                 1.0, cfg)


def test_fallback_real_run_measures_accuracy_on_held_out_rows(fp32, calibration, splits, tmp_path):
    # given the real accuracy on the validation split as the judge
    reference = _accuracy(fp32, splits.val)
    result = q.quantize_with_fallback(fp32, tmp_path / "out.onnx", calibration,
                                      lambda path: _accuracy(path, splits.val), reference, _cfg())
    first = result.attempts[0]
    assert first.calibration == "minmax" and first.step == "initial"
    for attempt in result.attempts:
        assert attempt.drop_pp == pytest.approx((reference - attempt.accuracy) * 100, abs=1e-6)
        assert attempt.accepted == (attempt.drop_pp <= 0.5)
    assert _accuracy(result.path, splits.val) == result.chosen.accuracy, "dst is the chosen model"
    assert result.accepted == any(a.accepted for a in result.attempts)


# ---------------------------------------------------------------------------------------------
# quantization-aware training
# ---------------------------------------------------------------------------------------------
def test_fake_quantize_weight_rounds_each_channel_to_255_levels_with_a_straight_through_gradient():
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    quantized = q.fake_quantize_weight(weight)
    for channel, values in zip(weight, quantized):
        scale = channel.detach().abs().max() / 127
        codes = values.detach() / scale
        assert torch.allclose(codes, codes.round(), atol=1e-4), "values should sit on the int8 grid"
    quantized.sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight)), "the gradient should pass straight through"


def test_fake_quantize_activation_clips_outside_the_range_and_passes_gradient_inside():
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 3.0], requires_grad=True)
    y = q.fake_quantize_activation(x, torch.tensor(0.0), torch.tensor(2.0))
    values = y.detach().tolist()
    assert values[:2] == [0, 0] and values[-1] == pytest.approx(2.0), f"clipped to [0, 2]: {values}"
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0], f"no gradient where clipped: {x.grad}"


def test_qat_train_config_uses_qat_epochs_and_a_smaller_learning_rate():
    cfg = q.qat_train_config(TRAIN, QuantizeConfig(qat_epochs=3))
    assert (cfg.epochs, cfg.lr, cfg.seed) == (3, TRAIN.lr / 10, TRAIN.seed), cfg


@pytest.fixture(scope="module")
def qat_run(trained, splits) -> tuple[torch.nn.Module, list[EpochLog], dict]:
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    logs: list[EpochLog] = []
    cfg = TRAIN.model_copy(update={"epochs": 3, "lr": 0.003})
    model = q.quantization_aware_training(trained, splits.train, splits.val, cfg,
                                          on_epoch_end=logs.append)
    return model, logs, before


def test_qat_trains_and_leaves_the_original_model_unchanged(qat_run, trained, splits):
    model, logs, before = qat_run
    losses = [log.train_loss for log in logs]
    assert losses[-1] < losses[0], f"the QAT training loss should fall: {losses}"
    predictions = predict_logits(model, splits.test.x).argmax(1)
    accuracy = classification_metrics(splits.test.y, predictions)["accuracy"]
    assert accuracy >= 0.85, f"the fake-quantized model should stay accurate, got {accuracy:.3f}"
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items()), (
        "QAT should train a copy, not the caller's model")


def test_strip_fake_quant_gives_the_plain_architecture_with_int8_grid_weights(qat_run, trained):
    plain = q.strip_fake_quant(qat_run[0])
    assert isinstance(plain, CNN) and not plain.training
    assert list(plain.state_dict()) == list(trained.state_dict()), "same keys as build_model's model"
    weight = plain.features[0].weight.detach()
    scale = weight.abs().flatten(1).amax(1).view(-1, 1, 1, 1) / 127
    codes = weight / scale
    assert torch.allclose(codes, codes.round(), atol=1e-3), "weights should sit on the int8 grid"


def test_qat_int8_export_agrees_with_the_qat_model(qat_run, calibration, splits, tmp_path):
    model = qat_run[0]
    path = q.qat_to_int8(model, ARCH.input_shape, calibration, tmp_path / "qat.onnx")
    expected = predict_logits(model, splits.test.x).argmax(1)
    agreement = float((_predictions(path, splits.test.x) == expected).mean())
    assert agreement >= 0.95, f"int8 export agrees with the QAT model on {agreement:.3f} < 0.95"
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(path)).graph.node}

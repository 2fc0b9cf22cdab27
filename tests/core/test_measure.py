"""shrinkflow.measure: quality, size, compute and speed metrics under their standard names."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from shrinkflow.config import MeasureConfig
from shrinkflow.export import export_onnx, onnx_predictor
from shrinkflow.measure import (
    THROUGHPUT_BATCH,
    Measurement,
    Subject,
    classification_metrics,
    compute,
    confusion,
    count_onnx_params,
    count_params,
    latencies,
    measure_all,
    predict_batched,
    torch_predictor,
    torch_threads,
)
from shrinkflow.models import Architecture, build_model

STANDARD_METRICS = {
    "accuracy", "f1_macro", "params_count", "nonzero_params", "size_bytes", "flops", "macs",
    "latency_ms_p50_b1", "latency_ms_p95_b1", "throughput_sps_b256",
}


# ---------------------------------------------------------------------------------------------
# quality
# ---------------------------------------------------------------------------------------------
def test_classification_metrics_match_hand_computed_accuracy_and_macro_f1():
    # given 6 predictions, 4 right: per-class F1 is 0.5 (class 0), 0.8 (class 1), 2/3 (class 2)
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    metrics = classification_metrics(y_true, y_pred)
    assert metrics["accuracy"] == pytest.approx(4 / 6), f"accuracy should be 4/6, got {metrics['accuracy']}"
    assert metrics["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3), (
        f"macro F1 should be the mean of 0.5, 0.8 and 2/3, got {metrics['f1_macro']}"
    )
    assert all(type(v) is float for v in metrics.values()), "metrics should be plain floats (for JSON)"


def test_classification_metrics__a_predicted_but_absent_class_counts_as_f1_zero():
    # class 0: P=1, R=2/3 -> F1 0.8; class 1 never occurs but is predicted once -> F1 0 (no NaN)
    metrics = classification_metrics(np.array([0, 0, 0]), np.array([0, 0, 1]))
    assert metrics["f1_macro"] == pytest.approx(0.4), f"macro F1 should be 0.4, got {metrics['f1_macro']}"


def test_confusion_has_a_row_and_column_for_every_class_even_unseen_ones():
    matrix = confusion(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), n_classes=4)
    expected = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(matrix, expected, err_msg="rows are true classes, columns predictions")


def test_predict_batched_concatenates_batches_in_order():
    sizes: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        return np.repeat(x.sum(axis=1, keepdims=True), 3, axis=1)

    x = np.arange(22, dtype=np.float32).reshape(11, 2)
    out = predict_batched(predict, x, batch_size=4)
    assert sizes == [4, 4, 3], f"batches of at most 4 expected, got {sizes}"
    np.testing.assert_array_equal(out[:, 0], x.sum(axis=1), err_msg="outputs should keep the input order")


# ---------------------------------------------------------------------------------------------
# size and compute
# ---------------------------------------------------------------------------------------------
def test_count_params_counts_all_and_nonzero_parameters():
    # given a Linear(10, 5): 50 weights + 5 biases
    layer = nn.Linear(10, 5)
    assert count_params(layer) == (55, 55), "a fresh Linear(10, 5) has 55 non-zero parameters"
    # when three weights and one bias are zeroed
    with torch.no_grad():
        layer.weight[0, :3] = 0.0
        layer.bias[4] = 0.0
    # then the total stays and the non-zero count drops by four
    assert count_params(layer) == (55, 51), f"expected (55, 51), got {count_params(layer)}"


def test_count_params_ignores_buffers():
    model = build_model(Architecture("mlp", (4,), 2, (8,)))  # BatchNorm running stats are buffers
    expected = sum(p.numel() for p in model.parameters())
    assert count_params(model)[0] == expected, "BatchNorm running statistics are not parameters"


def test_compute_counts_50_macs_for_a_linear_layer_inside_a_model():
    # given a model holding one Linear(10, 5): 10 * 5 multiply-accumulates per sample
    flops, macs = compute(nn.Sequential(nn.Linear(10, 5)), (10,))
    # then the layer is named as in named_modules() and a FLOP is half a MAC
    assert macs == {"0": 50}, f"the Linear layer '0' should count 50 MACs, got {macs}"
    assert flops == 2 * 50, f"flops should be 2 * MACs = 100, got {flops}"


def test_compute_on_a_single_linear_layer_gives_50_macs():
    flops, macs = compute(nn.Linear(10, 5), (10,))
    assert flops == 100, f"flops should be 100, got {flops}"
    assert sum(macs.values()) == 50 and len(macs) == 1, f"one layer of 50 MACs expected, got {macs}"


def test_compute_per_layer_macs_of_a_cnn_match_hand_counts():
    # given conv 1->4 (3x3, 8x8 output), pool to 4x4, conv 4->8 (3x3, 4x4 output), linear 8->10
    model = build_model(Architecture("cnn", (1, 8, 8), 10, (4, 8)))
    flops, macs = compute(model, (1, 8, 8))
    expected = {"features.0": 4 * 1 * 9 * 64, "features.4": 8 * 4 * 9 * 16, "head.2": 8 * 10}
    assert macs == expected, f"per-layer MACs should be {expected}, got {macs}"
    assert flops == 2 * sum(expected.values()), "total FLOPs should be twice the MACs"


def test_compute_leaves_the_model_in_eval_mode_and_does_not_change_its_output():
    model = build_model(Architecture("mlp", (6,), 3, (8,))).eval()
    x = torch.randn(4, 6)
    before = model(x).detach()
    compute(model, (6,))
    assert torch.equal(model(x).detach(), before), "counting FLOPs should not change the model"


# ---------------------------------------------------------------------------------------------
# speed
# ---------------------------------------------------------------------------------------------
def test_latency_times_batch_1_and_batch_256_with_the_configured_repeats(fast_measure_cfg):
    # given a predictor that takes about 2 ms per call and records its batch sizes
    batches: list[int] = []

    def slow(x: np.ndarray) -> np.ndarray:
        batches.append(len(x))
        time.sleep(0.002)
        return np.zeros((len(x), 2), np.float32)

    sample = np.zeros((10, 3), np.float32)
    result = latencies({"slow": lambda: slow}, sample, fast_measure_cfg)["slow"]
    cfg = fast_measure_cfg
    # then it makes warmup + repeats calls at batch 1, one warm-up per round + the throughput
    # repeats at batch 256, and reports milliseconds and samples per second
    rounds = min(cfg.rounds, cfg.throughput_repeats, cfg.repeats)
    assert batches.count(1) == cfg.warmup + cfg.repeats, f"unexpected call pattern {batches}"
    assert batches.count(THROUGHPUT_BATCH) == rounds + cfg.throughput_repeats, (
        f"unexpected call pattern {batches}"
    )
    assert set(result) == {"latency_ms_p50_b1", "latency_ms_p95_b1", "throughput_sps_b256"}
    assert 2.0 <= result["latency_ms_p50_b1"] < 200, f"p50 should be ~2 ms, got {result['latency_ms_p50_b1']}"
    assert result["latency_ms_p95_b1"] >= result["latency_ms_p50_b1"], "p95 should not be below p50"
    assert 256 / 0.2 < result["throughput_sps_b256"] <= 256 / 0.002, (
        f"throughput should be ~256 samples per ~2 ms, got {result['throughput_sps_b256']}"
    )


def test_latencies_time_models_in_turn_over_the_configured_rounds():
    # given two predictors that record who was called, at which batch size
    calls: list[tuple[str, int]] = []

    def recorder(name: str):
        def predict(x: np.ndarray) -> np.ndarray:
            calls.append((name, len(x)))
            return np.zeros((len(x), 2), np.float32)
        return predict

    loads: list[str] = []

    def loader(name: str):
        def load():
            loads.append(name)
            return recorder(name)
        return load

    cfg = MeasureConfig(warmup=2, repeats=7, throughput_repeats=4, rounds=3)
    sample = np.zeros((10, 3), np.float32)
    result = latencies({"a": loader("a"), "b": loader("b")}, sample, cfg)
    # then each model is loaded afresh in each of the 3 rounds, a then b
    assert loads == ["a", "b"] * 3, f"expected 3 rounds of a then b, got loads {loads}"
    turns = [name for i, (name, _) in enumerate(calls) if i == 0 or calls[i - 1][0] != name]
    assert turns == ["a", "b"] * 3, f"calls should alternate in 3 rounds, got turns {turns}"
    # and gets all its calls: warm-up + repeats at batch 1 (7 = 3 + 2 + 2 timed), one untimed
    # batch-256 call per round + the throughput repeats (4 = 2 + 1 + 1 timed)
    for name in "ab":
        assert calls.count((name, 1)) == cfg.warmup + cfg.repeats
        assert calls.count((name, THROUGHPUT_BATCH)) == 3 + cfg.throughput_repeats
    assert set(result) == {"a", "b"}


def test_torch_threads_sets_and_restores_the_thread_count():
    previous = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1, "threads should be set inside the block"
    assert torch.get_num_threads() == previous, "threads should be restored after the block"


# ---------------------------------------------------------------------------------------------
# everything at once
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def trained_mlp() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """An MLP on 6 features with a known fraction of zero weights, plus test data."""
    torch.manual_seed(0)
    model = build_model(Architecture("mlp", (6,), 3, (8,))).eval()
    with torch.no_grad():
        model.features[1].weight[:, :2] = 0.0  # 16 zeros
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    return model, x, y


def test_measure_on_a_torch_model_returns_every_standard_metric(tmp_path: Path, trained_mlp, fast_measure_cfg):
    # given a torch model saved as a state_dict file
    model, x, y = trained_mlp
    artifact = tmp_path / "model.pt"
    torch.save(model.state_dict(), artifact)
    threads_before = torch.get_num_threads()
    # when it is measured
    subject = Subject(lambda: torch_predictor(model), artifact, model)
    result = measure_all({"torch": subject}, x, y, fast_measure_cfg)["torch"]
    metrics = result.metrics()
    # then every standard metric is present with a plausible value
    assert set(metrics) == STANDARD_METRICS, f"missing {STANDARD_METRICS - set(metrics)}"
    expected = classification_metrics(y, torch_predictor(model)(x).argmax(1))
    assert result.accuracy == expected["accuracy"] and result.f1_macro == expected["f1_macro"], (
        "quality should be computed on the model's test predictions"
    )
    assert (result.params_count, result.nonzero_params) == count_params(model), "params from the model"
    assert result.nonzero_params == result.params_count - 16 - 8, (
        "the 16 zeroed weights and the 8 zero-initialised BatchNorm biases should not count"
    )
    assert result.size_bytes == artifact.stat().st_size, "size_bytes should be the artifact's file size"
    assert result.latency_ms_p50_b1 > 0, "latency should be positive"
    assert result.latency_ms_p95_b1 >= result.latency_ms_p50_b1, "p95 should not be below p50"
    assert result.throughput_sps_b256 > 0, "throughput should be positive"
    assert result.macs == 6 * 8 + 8 * 3, f"MACs should be 6*8 + 8*3 = 72, got {result.macs}"
    assert result.flops == 2 * result.macs, "flops should be twice the MACs"
    assert all(type(v) is float for v in metrics.values()), "metrics() should give floats for logging"
    assert torch.get_num_threads() == threads_before, "measure should restore torch's thread count"


def test_measure_on_an_onnx_model_counts_params_from_the_file(tmp_path: Path, fast_measure_cfg):
    # given a BatchNorm-free model exported to ONNX, with some zeroed weights
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[0].weight[:, 0] = 0.0  # 8 zeros
    path = export_onnx(model, (6,), tmp_path / "model.onnx")
    x = np.random.default_rng(0).standard_normal((30, 6)).astype(np.float32)
    y = np.zeros(30, np.int64)
    # then the ONNX initializers hold exactly the torch parameters
    assert count_onnx_params(path) == count_params(model), (
        f"ONNX should hold the same (all, non-zero) numbers as torch: "
        f"{count_onnx_params(path)} vs {count_params(model)}"
    )
    # and measuring through ONNX Runtime gives every metric except the torch-only compute counts
    subject = Subject(lambda: onnx_predictor(path), path)
    result = measure_all({"onnx": subject}, x, y, fast_measure_cfg)["onnx"]
    assert result.flops is None and result.macs is None, "compute counts need a torch model"
    assert set(result.metrics()) == STANDARD_METRICS - {"flops", "macs"}, "None metrics are left out"
    assert (result.params_count, result.nonzero_params) == (6 * 8 + 8 + 8 * 3 + 3, 6 * 8 + 8 + 8 * 3 + 3 - 8)
    assert result.size_bytes == path.stat().st_size, "size_bytes should be the ONNX file's size"
    torch_accuracy = classification_metrics(y, torch_predictor(model)(x).argmax(1))["accuracy"]
    assert result.accuracy == torch_accuracy, "ONNX and torch should agree on accuracy"


def test_measurement_metrics_drop_missing_values_and_give_floats():
    m = Measurement(0.5, 0.4, 10, 8, 100, 1.0, 2.0, 300.0)
    assert m.metrics() == {
        "accuracy": 0.5, "f1_macro": 0.4, "params_count": 10.0, "nonzero_params": 8.0,
        "size_bytes": 100.0, "latency_ms_p50_b1": 1.0, "latency_ms_p95_b1": 2.0,
        "throughput_sps_b256": 300.0,
    }, "metrics() should list the set values under their standard names"


def test_relative__ratios_against_the_baselines():
    from shrinkflow.measure import Measurement, relative

    def m(acc, size, lat, tput):
        return Measurement(acc, acc, 1, 1, size, lat, lat, tput)

    torch_base, onnx_base = m(0.99, 80_000, 0.09, 40_000), m(0.99, 90_000, 0.012, 250_000)
    ratios = relative(m(0.985, 3_200, 0.006, 2_000_000), torch_base, onnx_base, 0.99)
    assert ratios["size_ratio"] == 25.0
    assert ratios["speedup_b1_vs_torch"] == 15.0
    assert ratios["speedup_b1_vs_ort_fp32"] == 2.0
    assert ratios["throughput_ratio_b256_vs_ort_fp32"] == 8.0
    assert abs(ratios["accuracy_drop_pp"] - 0.5) < 1e-9

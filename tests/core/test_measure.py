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
    Noise,
    Timing,
    classification_metrics,
    compute,
    confusion,
    count_onnx_params,
    count_params,
    onnx_size,
    predict_batched,
    scores,
    time_side_by_side,
    torch_predictor,
    torch_size,
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
def _sleeper(ms: float, batches: list[int] | None = None):
    def predict(x: np.ndarray) -> np.ndarray:
        if batches is not None:
            batches.append(len(x))
        time.sleep(ms / 1000)
        return np.zeros((len(x), 2), np.float32)
    return predict


def test_timing_takes_batch_1_and_batch_256_calls_in_rounds(fast_measure_cfg):
    # given a predictor that takes about 2 ms per call and records its batch sizes
    batches: list[int] = []
    cfg = fast_measure_cfg.model_copy(update={"rounds": 3, "repeats": 9, "throughput_repeats": 3})
    timing = time_side_by_side({"slow": lambda: _sleeper(2, batches)}, np.zeros((10, 3), np.float32),
                               cfg)["slow"]
    # then: per round one warm-up call, then the round's timed calls at batch 1; one untimed
    # and one timed call at batch 256
    assert timing.batch1_ms.shape == (3, 3) and timing.batch256_ms.shape == (3, 1)
    assert batches.count(1) == 3 * (1 + 3), f"unexpected call pattern {batches}"
    assert batches.count(THROUGHPUT_BATCH) == 3 * 2, f"unexpected call pattern {batches}"
    metrics = timing.metrics()
    assert set(metrics) == {"latency_ms_p50_b1", "latency_ms_p95_b1", "throughput_sps_b256"}
    assert 2.0 <= metrics["latency_ms_p50_b1"] < 200, f"p50 should be ~2 ms, got {metrics}"
    assert metrics["latency_ms_p95_b1"] >= metrics["latency_ms_p50_b1"]
    assert 256 / 0.2 < metrics["throughput_sps_b256"] <= 256 / 0.002


def test_models_take_turns_in_a_shuffled_order_each_round():
    # given two predictors that record each load
    loads: list[str] = []

    def loader(name: str):
        def load():
            loads.append(name)
            return _sleeper(0)
        return load

    cfg = MeasureConfig(warmup=0, repeats=20, throughput_repeats=10, rounds=10)
    time_side_by_side({"a": loader("a"), "b": loader("b")}, np.zeros((4, 3), np.float32), cfg)
    # then each model is loaded afresh in each round, both in every round, not always a first
    rounds = [tuple(loads[i:i + 2]) for i in range(0, len(loads), 2)]
    assert len(rounds) == 10 and all(sorted(r) == ["a", "b"] for r in rounds), rounds
    assert len(set(rounds)) == 2, f"the order should vary between rounds, got {rounds}"


def _timing(rng: np.random.Generator, ms: float, rounds: int = 10, calls: int = 20) -> Timing:
    """Call times around `ms` with 10% noise, and a slow moment shared by every model in round 3."""
    drift = np.ones((rounds, 1))
    drift[3] = 1.5
    noisy = ms * drift * rng.lognormal(0.0, 0.1, (rounds, calls))
    return Timing(noisy, 256 * noisy)


def test_noise__the_same_model_twice_reads_one_and_a_real_speedup_is_told_apart():
    rng = np.random.default_rng(0)
    timings = {"base": _timing(rng, 1.0), "control": _timing(rng, 1.0), "fast": _timing(rng, 0.5)}
    noise = Noise(timings)
    # then: the control's ratio to the baseline holds 1.00 in its interval
    control = noise.speedup("base", "control")
    assert control.low <= 1.0 <= control.high and 0.9 < control.value < 1.1, control
    # and: the twice-as-fast model reads ~2x, with an interval above 1, at both batch sizes
    for batch in (1, THROUGHPUT_BATCH):
        fast = noise.speedup("base", "fast", batch)
        assert 1.0 < fast.low <= fast.value <= fast.high and 1.8 < fast.value < 2.2, fast
    assert noise.faster("fast", "base") and not noise.faster("base", "fast")
    assert not noise.faster("control", "base") and not noise.faster("base", "control"), \
        "two timings of one file must tie"
    assert noise.faster("fast", "base", by=1.5) and not noise.faster("fast", "base", by=2.5), \
        "a ~2x speed-up clears 1.5x, not 2.5x"
    assert control.fields("r") == {"r": control.value, "r_interval": [control.low, control.high]}


def test_torch_threads_sets_and_restores_the_thread_count():
    previous = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1, "threads should be set inside the block"
    assert torch.get_num_threads() == previous, "threads should be restored after the block"


# ---------------------------------------------------------------------------------------------
# quality and size of one model
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def trained_mlp() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """An MLP on 6 features with a known fraction of zero weights, plus data."""
    torch.manual_seed(0)
    model = build_model(Architecture("mlp", (6,), 3, (8,))).eval()
    with torch.no_grad():
        model.features[1].weight[:, :2] = 0.0  # 16 zeros
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    return model, x, y


def test_scores_are_validation_and_test_accuracy_under_their_names(trained_mlp):
    model, x, y = trained_mlp
    predict = torch_predictor(model)
    result = scores(predict, x[:20], y[:20], x[20:], y[20:])
    assert set(result) == {"val_accuracy", "val_f1_macro", "accuracy", "f1_macro"}
    assert result["val_accuracy"] == classification_metrics(y[:20], predict(x[:20]).argmax(1))["accuracy"]
    assert result["accuracy"] == classification_metrics(y[20:], predict(x[20:]).argmax(1))["accuracy"]


def test_torch_size_counts_params_compute_and_file_bytes(tmp_path: Path, trained_mlp):
    model, _, _ = trained_mlp
    artifact = tmp_path / "model.pt"
    torch.save(model.state_dict(), artifact)
    result = torch_size(model, artifact, (6,))
    assert (result["params_count"], result["nonzero_params"]) == count_params(model)
    assert result["nonzero_params"] == result["params_count"] - 16 - 8, (
        "the 16 zeroed weights and the 8 zero-initialised BatchNorm biases should not count"
    )
    assert result["size_bytes"] == artifact.stat().st_size
    assert result["macs"] == 6 * 8 + 8 * 3, f"MACs should be 6*8 + 8*3 = 72, got {result['macs']}"
    assert result["flops"] == 2 * result["macs"], "flops should be twice the MACs"
    assert all(type(v) is float for v in result.values()), "floats, for logging"


def test_onnx_size_counts_params_from_the_file(tmp_path: Path):
    # given a BatchNorm-free model exported to ONNX, with some zeroed weights
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[0].weight[:, 0] = 0.0  # 8 zeros
    path = export_onnx(model, (6,), tmp_path / "model.onnx")
    # then the ONNX initializers hold exactly the torch parameters
    assert count_onnx_params(path) == count_params(model)
    result = onnx_size(path)
    assert (result["params_count"], result["nonzero_params"]) == (6 * 8 + 8 + 8 * 3 + 3,
                                                                  6 * 8 + 8 + 8 * 3 + 3 - 8)
    assert result["size_bytes"] == path.stat().st_size
    x = np.random.default_rng(0).standard_normal((30, 6)).astype(np.float32)
    assert (onnx_predictor(path)(x).argmax(1) == torch_predictor(model)(x).argmax(1)).all()

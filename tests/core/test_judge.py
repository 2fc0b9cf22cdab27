"""Judging a candidate beside the teacher: agreement, KL divergence, calibration and robustness
each move the way they must, on models built to differ in exactly that."""

from __future__ import annotations

import numpy as np
import pytest

from shrinkflow import gate, judge

RNG = np.random.default_rng(0)


def _one_hot_probabilities(classes: np.ndarray, n: int, confidence: float) -> np.ndarray:
    """Probabilities that put `confidence` on `classes` and spread the rest evenly."""
    probabilities = np.full((len(classes), n), (1 - confidence) / (n - 1))
    probabilities[np.arange(len(classes)), classes] = confidence
    return probabilities


def test_agreement__a_copy_agrees_fully_an_untrained_model_at_chance():
    teacher = judge.softmax(RNG.normal(size=(2000, 10)) * 3)
    assert judge.agreement(teacher, teacher) == {"agreement": 1.0, "kl_to_teacher": 0.0}
    untrained = judge.softmax(RNG.normal(size=(2000, 10)) * 3)
    found = judge.agreement(untrained, teacher)
    assert 0.05 < found["agreement"] < 0.15 and found["kl_to_teacher"] > 1.0


def test_agreement__kl_is_that_of_the_distributions():
    teacher, student = np.array([[0.5, 0.5]]), np.array([[0.9, 0.1]])
    expected = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    assert judge.agreement(student, teacher)["kl_to_teacher"] == pytest.approx(expected)


def test_calibration_error__right_as_often_as_sure_is_zero_overconfidence_is_the_gap():
    labels = np.repeat(np.arange(4), 250)
    # 80% sure everywhere and right on 80% of the samples: calibrated
    guesses = labels.copy()
    guesses[::5] = (labels[::5] + 1) % 4
    assert judge.calibration_error(_one_hot_probabilities(guesses, 4, 0.8), labels) \
        == pytest.approx(0.0, abs=1e-12)
    # 99% sure and right on 80%: a gap of 0.19
    assert judge.calibration_error(_one_hot_probabilities(guesses, 4, 0.99), labels) \
        == pytest.approx(0.19)


@pytest.mark.parametrize("kind, shape", [("image", (64, 3, 16, 16)), ("signal", (64, 1, 40)),
                                         ("tabular", (64, 12))])
def test_corrupted__seeded_and_stronger_at_the_strong_severity(kind, shape):
    x = RNG.normal(size=shape).astype(np.float32)
    mild, strong = (judge.corrupted(x, kind, judge.SEVERITIES[name], 3) for name in ("mild", "strong"))
    assert mild.shape == x.shape and mild.dtype == np.float32
    assert np.array_equal(mild, judge.corrupted(x, kind, judge.SEVERITIES["mild"], 3))
    assert not np.array_equal(mild, judge.corrupted(x, kind, judge.SEVERITIES["mild"], 4))
    assert np.abs(strong - x).mean() > np.abs(mild - x).mean() > 0


def test_corrupted__a_table_gets_noise_of_the_share_of_each_columns_spread():
    x = np.zeros((20_000, 3), np.float32)
    noise = judge.corrupted(x, "tabular", judge.SEVERITIES["strong"], 0)
    assert np.allclose(noise.std(axis=0), judge.SEVERITIES["strong"].noise_std, rtol=0.03)


def _linear(weights: np.ndarray):
    return lambda x: x.reshape(len(x), -1) @ weights


def _inputs(x: np.ndarray, y: np.ndarray, teacher) -> judge.Inputs:
    return judge.Inputs.make({"val": x, "test": x}, {"val": y, "test": y}, "tabular", teacher)


def test_judged__a_model_leaning_on_a_noise_sensitive_feature_loses_more_when_corrupted():
    # given two classes told apart by feature 0 with a wide margin; feature 1 is 0 everywhere
    y = RNG.integers(0, 2, 1000)
    x = np.stack([np.where(y == 1, 1.0, -1.0), np.zeros(1000)], axis=1).astype(np.float32)
    steady = _linear(np.array([[-1.0, 1.0], [0.0, 0.0]]))
    jumpy = _linear(np.array([[-1.0, 1.0], [-20.0, 20.0]]))  # also reads feature 1, strongly
    inputs = _inputs(x, y, steady)
    # when both are judged; then on clean inputs they are the same, corrupted the jumpy one loses
    calm, nervous = judge.judged(steady, inputs), judge.judged(jumpy, inputs)
    assert calm["agreement"] == nervous["agreement"] == 1.0
    assert calm["robustness_drop_pp_strong"] < 1.0 < 10.0 < nervous["robustness_drop_pp_strong"]
    assert nervous["robustness_drop_pp_strong"] > nervous["robustness_drop_pp_mild"]
    assert set(calm) == {f"{prefix}{key}" for prefix in ("val_", "") for key in (
        "agreement", "kl_to_teacher", "ece", "corrupted_accuracy_mild", "corrupted_accuracy_strong",
        "robustness_drop_pp_mild", "robustness_drop_pp_strong")}


def _row(name: str, **figures) -> dict:
    return {"candidate": name, "val_accuracy": 0.95, "val_accuracy_drop_pp": 0.0,
            "size_bytes": 100, "latency_ms_p50_b1": 0.1, "val_agreement": 0.99,
            "val_robustness_drop_pp_strong": 2.0, **figures}


def test_gate__agreement_and_robustness_rules_exclude_only_when_set():
    small = _row("small", size_bytes=10, latency_ms_p50_b1=0.05, val_agreement=0.9,
                 val_robustness_drop_pp_strong=9.0)
    big = _row("big")
    assert gate.choose([small, big], 0.5)["candidate"] == "small"
    assert gate.choose([small, big], gate.Rules(0.5, min_agreement=0.95))["candidate"] == "big"
    assert gate.choose([small, big], gate.Rules(0.5, max_robustness_drop_pp=5.0))["candidate"] == "big"
    assert gate.choose([small], gate.Rules(0.5, min_agreement=0.95)) is None
    assert "agreeing with it on at least 95% of the validation samples" in \
        gate.Rules(0.5, min_agreement=0.95).describe()

"""shrinkflow.quantize.fallback: the accuracy-aware fallback chain, and the QuantizeConfig checks
it relies on (the functions no longer re-check choices and bounds)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from shrinkflow import quantize as q
from shrinkflow.config import ConfigError, QuantizeConfig, load_params
from shrinkflow.measure import file_size
from tests.core.quantize.conftest import CALIBRATION_ROWS, accuracy, float_weighted_nodes


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
    # qdq: the format the `static_variants` fixture was made with, so files compare byte for byte
    return QuantizeConfig(**{"calibration_samples": CALIBRATION_ROWS, "format": "qdq", **changes})


def test_fallback_stops_at_the_first_acceptable_attempt(fp32, calibration, tmp_path, static_variants):
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
    assert result.path.read_bytes() == static_variants["percentile"].read_bytes(), (
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
    fp32, calibration, tmp_path, sensitivity
):
    # given an evaluate that passes only when at least two weighted nodes stay float
    evaluate = ScriptedEvaluate(lambda path: 0.99 if len(float_weighted_nodes(path)) >= 2 else 0.9)
    result = q.quantize_with_fallback(fp32, tmp_path / "out.onnx", calibration, evaluate, 0.99,
                                      _cfg(fallback=("exclude_sensitive",)))
    # then the nodes left in float follow the sensitivity ranking, one more per attempt
    ranking = [name for name, *_ in sensitivity]
    excluded = [a.excluded_nodes for a in result.attempts]
    assert excluded == [(), tuple(ranking[:1]), tuple(ranking[:2])], (excluded, ranking)
    assert result.accepted and sorted(float_weighted_nodes(result.path)) == sorted(ranking[:2])


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


def test_fallback_real_run_measures_accuracy_on_held_out_rows(fp32, calibration, splits, tmp_path):
    # given the real accuracy on the validation split as the judge
    reference = accuracy(fp32, splits.val)
    result = q.quantize_with_fallback(fp32, tmp_path / "out.onnx", calibration,
                                      lambda path: accuracy(path, splits.val), reference, _cfg())
    first = result.attempts[0]
    assert first.calibration == "minmax" and first.step == "initial"
    for attempt in result.attempts:
        assert attempt.drop_pp == pytest.approx((reference - attempt.accuracy) * 100, abs=1e-6)
        assert attempt.accepted == (attempt.drop_pp <= 0.5)
    assert accuracy(result.path, splits.val) == result.chosen.accuracy, "dst is the chosen model"
    assert result.accepted == any(a.accepted for a in result.attempts)


# ---------------------------------------------------------------------------------------------
# QuantizeConfig: what guards the settings these functions take as they are
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("override", "named"), [
    ("quantize.calibration=int4", "int4"),
    ("quantize.percentile=30", "30"),
    ("quantize.fallback=[int4]", "int4"),
    ("quantize.format=int4", "int4"),
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



def test_low_bit_fallback_keeps_the_most_sensitive_weights_at_8_bits_until_within_the_drop(
        fp32, tmp_path):
    # given a 4-bit file losing 4 pp, 3 pp with its most sensitive weight at 8 bits and 0.5 pp
    # with the two most sensitive
    made: list[tuple[str, ...]] = []

    def make(kept: tuple[str, ...], path: Path) -> Path:
        made.append(kept)
        path.write_bytes(fp32.read_bytes() + bytes(len(kept)))  # sizes tell the files apart
        return path

    ranked: list[int] = []
    result = q.low_bit_with_fallback(
        tmp_path / "out.onnx", make, lambda: ranked.append(1) or ["c", "a", "b"],
        ScriptedEvaluate([0.95, 0.96, 0.985]), 0.99, _cfg(), "int4_weights")
    # then the sensitive ones were kept one more at a time, and the first accepted file is dst
    assert made == [(), ("c",), ("c", "a")] and ranked == [1]
    assert [(a.step, a.method, a.excluded_nodes, a.accepted) for a in result.attempts] == [
        ("initial", "int4_weights", (), False), ("exclude_sensitive", "int4_weights", ("c",), False),
        ("exclude_sensitive", "int4_weights", ("c", "a"), True)]
    assert result.accepted and file_size(result.path) == file_size(fp32) + 2
    # an accepted first file needs no ranking; without exclude_sensitive in quantize.fallback the
    # most accurate (only) attempt is kept, flagged
    for accuracies, fallback, accepted in (([0.99], ("qat",), True), ([0.9], ("qat",), False)):
        made.clear()
        again = q.low_bit_with_fallback(tmp_path / "again.onnx", make, lambda: pytest.fail(),
                                        ScriptedEvaluate(accuracies), 0.99,
                                        _cfg(fallback=fallback), "ternary")
        assert made == [()] and again.accepted is accepted

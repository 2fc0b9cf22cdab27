"""The accuracy-aware fallback: int8 static, and while it loses too much accuracy, other
calibrations, the most sensitive layers kept in float, then QAT; low-bit weights (4-bit, ternary,
binary), and while they lose too much, the most sensitive weights kept one step up in precision.
Every attempt is recorded."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from shrinkflow.config import QuantizeConfig
from shrinkflow.measure import file_size
from shrinkflow.quantize.calibrate import (
    CALIBRATION_METHODS,
    Calibrated,
    CalibrationName,
    calibration_rows,
)


@dataclass(frozen=True)
class Attempt:
    """One quantized model tried by `quantize_with_fallback`."""

    step: str  # what produced it: initial | minmax | percentile | entropy | exclude_sensitive | qat
    method: str  # int8_static, qat (int8 static of the QAT-trained model), or a low-bit method
    calibration: str  # none for weight-only methods
    excluded_nodes: tuple[str, ...]  # left in float (int8 static), or kept one step up (low-bit)
    accuracy: float
    drop_pp: float  # reference accuracy minus this one, in percentage points
    size_bytes: int
    accepted: bool  # drop_pp <= quantize.max_accuracy_drop_pp

    def to_dict(self) -> dict:
        """JSON-ready (for the stage's report and MLflow)."""
        return {**asdict(self), "excluded_nodes": list(self.excluded_nodes)}


@dataclass(frozen=True)
class FallbackResult:
    path: Path  # dst: the chosen model
    chosen: Attempt  # the first accepted attempt, else the most accurate one
    attempts: tuple[Attempt, ...]  # every attempt, in the order tried

    @property
    def accepted(self) -> bool:
        return self.chosen.accepted


def low_bit_with_fallback(
    dst: str | Path,
    make: Callable[[tuple[str, ...], Path], Path],
    ranking: Callable[[], Sequence[str]],
    evaluate: Callable[[Path], float],
    reference_accuracy: float,
    cfg: QuantizeConfig,
    method: str,
) -> FallbackResult:
    """A low-bit file (4-bit, ternary or binary weights), and while its accuracy drop exceeds
    `quantize.max_accuracy_drop_pp` (and `quantize.fallback` lists exclude_sensitive), the same
    with the 1, 2, ... most sensitive weights kept one step up in precision (at least one stays
    low-bit).

    make(kept, path) writes the file with the weights named in `kept` one step up (4-bit: at 8
    bits; ternary and binary: at 4 bits) to `path`.
    ranking() -> every low-bit weight's name, most sensitive first (called only when needed).
    evaluate, reference_accuracy, the choice and `dst`: as `quantize_with_fallback`.
    """
    _check_reference(reference_accuracy)
    with tempfile.TemporaryDirectory(prefix="shrinkflow-fallback-") as tmp:
        chain = _Chain(Path(tmp), evaluate, reference_accuracy, cfg)

        def attempt(step: str, kept: tuple[str, ...]) -> bool:
            return chain.record(step, method, "none", kept, make(kept, chain.next_path()))

        if not attempt("initial", ()) and "exclude_sensitive" in cfg.fallback:
            names = list(ranking())
            any(attempt("exclude_sensitive", tuple(names[:count])) for count in range(1, len(names)))
        chosen, chosen_path = chain.choice()
        shutil.copyfile(chosen_path, dst)
    return FallbackResult(Path(dst), chosen, tuple(a for a, _ in chain.tried))


def _check_reference(reference_accuracy: float) -> None:
    # measured by the caller, so no QuantizeConfig bound covers it
    if not 0.0 <= reference_accuracy <= 1.0:
        raise ValueError(f"reference_accuracy must be in [0, 1], got {reference_accuracy!r}")


def quantize_with_fallback(
    src: str | Path,
    dst: str | Path,
    calibration_x: np.ndarray,
    evaluate: Callable[[Path], float],
    reference_accuracy: float,
    cfg: QuantizeConfig,
    qat: Callable[[], Path] | None = None,
    ranking_x: np.ndarray | None = None,
) -> FallbackResult:
    """int8 static with `quantize.calibration`; while the accuracy drop exceeds
    `quantize.max_accuracy_drop_pp`, try the `quantize.fallback` steps in order.

    evaluate(path) -> accuracy in [0, 1] of a quantized ONNX file (the caller's data and metric).
    reference_accuracy: the float model's accuracy on the same data.
    qat() -> path of a float32 ONNX of a QAT-trained model (e.g. `export_qat_onnx`); it is
    quantized with minmax calibration. Without it the qat step is skipped.

    Steps: a calibration name tries that calibration (skipped if already tried);
    exclude_sensitive ranks the weighted nodes by sensitivity (`Calibrated.sensitivity`, with the
    best calibration so far, on the rows `ranking_x`: by default the calibration rows; rows the
    model fits less surely, such as the validation inputs, tell the nodes apart better) and
    keeps the 1, 2, ... most sensitive in float (at least one stays int8); qat as above. The
    chain stops at the first accepted attempt. The chosen file (the accepted one, or the most
    accurate with `accepted=False`: the caller decides) is written to `dst`; the other attempts
    live in a temporary directory that is removed.
    """
    _check_reference(reference_accuracy)
    x = calibration_rows(calibration_x)[: cfg.calibration_samples]

    with tempfile.TemporaryDirectory(prefix="shrinkflow-fallback-") as tmp:
        chain = _Chain(Path(tmp), evaluate, reference_accuracy, cfg, ranking_x)
        work = Calibrated(src, x, cfg.percentile, chain.subdir("source"))
        done = chain.attempt("initial", work, cfg.calibration)
        for step in cfg.fallback:
            if done:
                break
            if step in CALIBRATION_METHODS:
                done = chain.recalibrate(work, step)
            elif step == "exclude_sensitive":
                done = chain.exclude_sensitive(work)
            elif step == "qat" and qat is not None:
                # minmax: the statistic the EMA ranges tracked during QAT
                trained = Calibrated(qat(), x, cfg.percentile, chain.subdir("qat"))
                done = chain.attempt(step, trained, "minmax", method="qat")
        chosen, chosen_path = chain.choice()
        shutil.copyfile(chosen_path, dst)
    return FallbackResult(Path(dst), chosen, tuple(a for a, _ in chain.tried))


@dataclass
class _Chain:
    """The attempts of one `quantize_with_fallback` call, their files under `workdir`."""

    workdir: Path
    evaluate: Callable[[Path], float]
    reference_accuracy: float
    cfg: QuantizeConfig
    ranking_x: np.ndarray | None = None  # the rows exclude_sensitive ranks nodes on
    tried: list[tuple[Attempt, Path]] = field(default_factory=list)

    def subdir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir()
        return path

    def next_path(self) -> Path:
        return self.workdir / f"attempt-{len(self.tried)}.onnx"

    def attempt(self, step: str, source: Calibrated, calibration: CalibrationName,
                excluded: tuple[str, ...] = (), method: str = "int8_static") -> bool:
        """Quantize `source`, evaluate and record it; whether it was accepted."""
        path = source.quantize(self.next_path(), calibration, self.cfg.per_channel, excluded,
                               quant_format=self.cfg.format)
        return self.record(step, method, calibration, excluded, path)

    def record(self, step: str, method: str, calibration: str, excluded: tuple[str, ...],
               path: Path) -> bool:
        """Evaluate the attempt's file at `path` and record it; whether it was accepted."""
        accuracy = float(self.evaluate(path))
        # rounded so that 0.99 - 0.985 counts as 0.5 pp, not 0.5000000000000004
        drop_pp = round((self.reference_accuracy - accuracy) * 100.0, 9)
        record = Attempt(step, method, calibration, excluded, accuracy, drop_pp, file_size(path),
                         drop_pp <= self.cfg.max_accuracy_drop_pp)
        self.tried.append((record, path))
        return record.accepted

    def recalibrate(self, work: Calibrated, calibration: CalibrationName) -> bool:
        """The whole model with another calibration, unless that one was tried already."""
        if any(a.calibration == calibration and a.method == "int8_static" and not a.excluded_nodes
               for a, _ in self.tried):
            return False
        return self.attempt(calibration, work, calibration)

    def exclude_sensitive(self, work: Calibrated) -> bool:
        """Keep the 1, 2, ... most sensitive weighted nodes in float (at least one stays int8),
        with the calibration of the most accurate int8 static attempt so far."""
        calibration = max((a for a, _ in self.tried if a.method == "int8_static"),
                          key=lambda a: a.accuracy).calibration
        ranking = [name for name, *_ in work.sensitivity(calibration, self.cfg.per_channel,
                                                          self.ranking_x)]
        return any(self.attempt("exclude_sensitive", work, calibration, tuple(ranking[:count]))
                   for count in range(1, len(ranking)))

    def choice(self) -> tuple[Attempt, Path]:
        """The first accepted attempt; none accepted: the most accurate, on a tie the smaller
        file, then the earlier attempt."""
        accepted = [item for item in self.tried if item[0].accepted]
        if accepted:
            return accepted[0]
        return min(self.tried, key=lambda item: (-item[0].accuracy, item[0].size_bytes))

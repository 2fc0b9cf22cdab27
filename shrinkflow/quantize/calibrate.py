"""int8 static quantization: activation ranges calibrated on sample rows (ORT's calibrators with
explicit histogram sizes, cached per method), `to_int8_static`, and the per-node sensitivity
ranking the fallback's exclude_sensitive step uses."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from shrinkflow.quantize.graph import (
    input_name,
    load_onnx,
    preprocess,
    quantizable_nodes,
    quiet,
    rank_by_sensitivity,
    save_lean,
)

if TYPE_CHECKING:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData

# the same choices as quantize.calibration / quantize.format in shrinkflow/config.py
CalibrationName = Literal["minmax", "percentile", "entropy"]
FormatName = Literal["qdq", "qoperator"]
CALIBRATION_METHODS: tuple[str, ...] = get_args(CalibrationName)
# histogram sizes that make percentile and entropy calibration differ from minmax (see the
# package docstring)
PERCENTILE_BINS = 2048
ENTROPY_BINS = 512
ENTROPY_QUANTIZED_BINS = 128


def calibration_rows(x: np.ndarray) -> np.ndarray:
    """`x` as contiguous float32 (the models' input type); an empty array is rejected here,
    naming the argument."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"calibration_x needs at least one row, got shape {x.shape}")
    return x


def _reader(model: onnx.ModelProto, x: np.ndarray) -> CalibrationDataReader:
    from onnxruntime.quantization import CalibrationDataReader

    class _OneBatch(CalibrationDataReader):
        # one batch of all rows: ORT's histogram collectors stack the batches, so they must all
        # have the same shape (a short last batch breaks them)
        def __init__(self) -> None:
            self._feeds = iter([{input_name(model): x}])

        def get_next(self) -> dict | None:
            return next(self._feeds, None)

    return _OneBatch()


def _ort_method(method: CalibrationName) -> CalibrationMethod:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[method]


def _calibrate(pre: Path, x: np.ndarray, method: CalibrationName, percentile: float,
               workdir: Path) -> TensorsData:
    """Activation ranges of every float tensor, computed with our histogram sizes (ORT's
    quantize_static would use its defaults)."""
    from onnxruntime.quantization.calibrate import create_calibrator

    options = {"minmax": {},
               "percentile": {"num_bins": PERCENTILE_BINS, "percentile": percentile,
                              "symmetric": True},
               "entropy": {"num_bins": ENTROPY_BINS,
                           "num_quantized_bins": ENTROPY_QUANTIZED_BINS}}[method]
    with quiet():
        calibrator = create_calibrator(pre, None, calibrate_method=_ort_method(method),
                                       extra_options=options,
                                       augmented_model_path=str(workdir / f"aug-{method}.onnx"))
        calibrator.collect_data(_reader(load_onnx(pre), x))
        return calibrator.compute_data()


class Calibrated:
    """One source model, pre-processed once, with calibration results cached per method: the
    fallback chain quantizes the same model many times with different exclusions."""

    def __init__(self, src: str | Path, x: np.ndarray, percentile: float, workdir: Path) -> None:
        self.workdir = workdir
        self.pre = preprocess(src, workdir / "pre.onnx")
        self.x = x
        self.percentile = percentile
        self._caches: dict[str, Path] = {}

    def cache(self, method: CalibrationName) -> Path:
        """ORT calibration cache (JSON) of `method`: quantize_static reads it, no recalibration."""
        from onnxruntime.quantization.calibrate import save_tensors_data

        if method not in self._caches:
            path = self.workdir / f"ranges-{method}.json"
            ranges = _calibrate(self.pre, self.x, method, self.percentile, self.workdir)
            save_tensors_data(ranges, path)
            self._caches[method] = path
        return self._caches[method]

    def quantize(self, dst: str | Path, method: CalibrationName, per_channel: bool = True,
                 exclude_nodes: Sequence[str] = (), only_nodes: Sequence[str] = (),
                 quant_format: FormatName = "qdq") -> Path:
        """int8 static of the pre-processed model with `method`'s ranges, written to `dst`."""
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        out = self.workdir / "quantized.onnx"
        with quiet():
            quantize_static(
                str(self.pre), str(out), None,
                quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                per_channel=per_channel,
                # uint8 activations with int8 weights: ORT's recommendation for x86 CPUs; int8
                # activations in QOperator format fell to a slow path here (3x slower at batch 1,
                # 17x at batch 256)
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude_nodes),
                nodes_to_quantize=list(only_nodes),
                calibrate_method=_ort_method(method),
                calibration_cache_path=str(self.cache(method)),
            )
        return save_lean(load_onnx(out), dst)

    def sensitivity(self, method: CalibrationName, per_channel: bool,
                    x: np.ndarray | None = None) -> list[tuple[str, float, float]]:
        """`rank_by_sensitivity` of the weighted nodes, each int8 alone, on rows `x` (default:
        the calibration rows), most sensitive first."""
        from shrinkflow.export import onnx_predictor

        rows = self.x if x is None else calibration_rows(x)

        def logits_with(name: str) -> np.ndarray:
            path = self.quantize(self.workdir / "single.onnx", method, per_channel,
                                 only_nodes=[name])
            return onnx_predictor(path)(rows)

        return rank_by_sensitivity(quantizable_nodes(self.pre), logits_with,
                                   onnx_predictor(self.pre)(rows))


def to_int8_static(
    src: str | Path,
    dst: str | Path,
    calibration_x: np.ndarray,
    method: CalibrationName = "minmax",
    per_channel: bool = True,
    percentile: float = 99.99,
    exclude_nodes: Sequence[str] = (),
    quant_format: FormatName = "qdq",
) -> Path:
    """int8 weights and activations, activation ranges calibrated on `calibration_x` rows.

    `method`: minmax | percentile | entropy (see the package docstring). `exclude_nodes`: node
    names (see `quantizable_nodes`) left in float32. `quant_format`: qdq (QuantizeLinear /
    DequantizeLinear around float ops; ORT fuses them into int8 kernels at load) or qoperator
    (QLinearConv etc. written out: a smaller file, the same kernels). Deterministic: the same
    inputs give the same bytes. The choices and bounds are enforced by `QuantizeConfig`.
    """
    x = calibration_rows(calibration_x)
    with tempfile.TemporaryDirectory(prefix="shrinkflow-int8s-") as tmp:
        work = Calibrated(src, x, percentile, Path(tmp))
        _check_node_names(work.pre, exclude_nodes, src)
        return work.quantize(dst, method, per_channel, exclude_nodes, quant_format=quant_format)


def _check_node_names(pre: Path, exclude_nodes: Sequence[str], src: str | Path) -> None:
    # ORT ignores names it does not find, which would quietly quantize a node meant to stay float
    names = {node.name for node in load_onnx(pre).graph.node}
    unknown = sorted(set(exclude_nodes) - names)
    if unknown:
        raise ValueError(f"exclude_nodes names nodes not in {src}: {unknown}; "
                         f"quantizable nodes are {quantizable_nodes(pre)}")

"""Quantization: fp16 and int8 ONNX models, quantization-aware training, accuracy-aware fallback.

Every function takes a float32 ONNX file (as written by `shrinkflow.export.export_onnx`) and writes
a new one; the result runs in ONNX Runtime on the CPU with the same float32 input and logits.

  to_fp16              half-precision weights (input and output stay float32). ONNX Runtime's CPU
                       provider computes these in float32, so this halves the file, not the time.
  to_int8_dynamic      int8 weights; MatMul/Gemm quantize their activations at run time. Conv
                       weights are only *stored* as int8 (expanded to float when the session loads):
                       ONNX Runtime's ConvInteger, what dynamic quantization makes of a Conv, ran
                       5x (batch 1) to 13x (batch 256) slower than float32 on this CPU.
  to_int8_weights      weight-only int8: the file shrinks ~4x, ONNX Runtime expands the weights once
                       at load and computes in float32, so latency is the float32 model's.
  to_int8_static       int8 weights (per channel) and activations (ranges calibrated on given rows),
                       QDQ format: the variant that runs int8 kernels (digits CNN on this CPU:
                       ~1.1x float32 throughput at batch 256, ~30% slower at batch 1).
  quantization_aware_training
                       fine-tunes a torch model through fake quantization (straight-through
                       estimator), then `export_qat_onnx` + `to_int8_static` make the int8 file.
  quantize_with_fallback
                       int8 static, and when it loses too much accuracy: other calibrations, keeping
                       the most sensitive layers in float, then QAT; every attempt is recorded.

Keys read from `quantize` (`QuantizeConfig`, by `quantize_with_fallback` and `qat_train_config`):
  calibration           minmax | percentile | entropy: the calibration tried first
  calibration_samples   at most this many rows of the calibration array are used
  percentile            percentile calibration keeps this share (in %) of |activation| values
  per_channel           one weight scale per output channel (else one per tensor)
  max_accuracy_drop_pp  largest accepted accuracy drop, in percentage points of the reference
  fallback              steps tried in order after a too large drop: percentile | entropy | minmax
                        (another calibration), exclude_sensitive (keep the most sensitive layers in
                        float, one more at a time), qat (quantization-aware training)
  qat_epochs            epochs of quantization-aware fine-tuning
(`quantize.methods`, which variants to make, is read by the stage that calls these functions.)

Calibration methods, as set up here. ONNX Runtime's `quantize_static` does not pass histogram
sizes on to its calibrators, and with its defaults (128 bins, 128 quantized bins) the entropy
search has a single candidate, the full range: a model byte-identical to minmax. So the ranges
are computed here with ORT's calibrators and explicit sizes, and handed to `quantize_static` as a
calibration cache:
  minmax      the observed minimum and maximum of each activation
  percentile  |x| histogram of 2048 bins cut at `percentile` %, clipped to the observed [min, max]
  entropy     ORT's KL-divergence threshold search (TensorRT's method) over a 512-bin histogram
              with 128 quantized bins, clipped to [min, max]. Finer histograms (1024+ bins) made
              ORT's search settle on its first, degenerate candidate (a slice so small nothing is
              merged) for ReLU outputs, clipping them to a quarter of their range, and took seconds.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

from shrinkflow.config import QuantizeConfig, TrainConfig
from shrinkflow.data import Augmenter, Split
from shrinkflow.measure import file_size
from shrinkflow.train import EpochLog, fit

if TYPE_CHECKING:
    import onnx

CalibrationName = Literal["minmax", "percentile", "entropy"]
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "percentile", "entropy")
QUANT_FORMATS: tuple[str, ...] = ("qdq", "qoperator")
# nodes that hold weights: where int8 saves bytes and time, and what exclusion is about
WEIGHTED_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")
DYNAMIC_OPS: tuple[str, ...] = ("MatMul", "Gemm")
# histogram sizes that make percentile and entropy calibration differ from minmax (see docstring)
PERCENTILE_BINS = 2048
ENTROPY_BINS = 512
ENTROPY_QUANTIZED_BINS = 128


# ---------------------------------------------------------------------------------------------
# Small ONNX helpers
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence onnxruntime.quantization: it prints progress and logs advice on the root logger
    (logging.disable is process-wide, so this is kept to the quantizer calls themselves)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def _load(path: str | Path) -> onnx.ModelProto:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    return onnx.load(str(path))


def _topological(model: onnx.ModelProto) -> None:
    """Reorder nodes so each comes after its inputs' producers (ONNX requires it; some tools
    append nodes at the end, which ONNX Runtime tolerates but onnx.checker rejects)."""
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:  # a cycle or a dangling input: leave the rest as it was
            ordered += pending
            break
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        placed = {id(node) for node in ready}
        pending = [node for node in pending if id(node) not in placed]
    del graph.node[:]
    graph.node.extend(ordered)


def _save_lean(model: onnx.ModelProto, dst: str | Path) -> Path:
    """Save without bytes that change nothing: debugging metadata (as export does), opset imports
    of unused domains (the quantizer declares nine), all-zero int32 bias zero points (0 is the
    default) and Q/DQ node names (ORT fuses those nodes away). ~1.5 kB: QDQ was larger than
    float32 for an 8/16-channel CNN without this."""
    import onnx
    from onnx import numpy_helper

    from shrinkflow.export import strip_metadata

    strip_metadata(model)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node.name = ""
            zero_point = initializers.get(node.input[2]) if len(node.input) == 3 else None
            if zero_point is not None and zero_point.data_type == onnx.TensorProto.INT32 \
                    and not numpy_helper.to_array(zero_point).any():
                del node.input[2]
    used = {name for node in graph.node for name in node.input}
    for name, init in initializers.items():
        if name not in used:
            graph.initializer.remove(init)
    domains = {node.domain for node in graph.node} | {"", "ai.onnx"}
    kept = [opset for opset in model.opset_import if opset.domain in domains]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.save(model, str(dst))
    return Path(dst)


def _input_name(model: onnx.ModelProto) -> str:
    initializers = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializers)


def _preprocess(src: str | Path, dst: Path) -> Path:
    """ORT's recommended step before quantizing: shape inference and graph fusions."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _load(src)  # fail early, naming the path
    with _quiet():
        quant_pre_process(str(src), str(dst))
    return dst


def quantizable_nodes(path: str | Path) -> list[str]:
    """Names of the nodes holding weights (Conv, ConvTranspose, Gemm, MatMul), in graph order.

    These are what `exclude_nodes` and the exclude_sensitive fallback are about: the other
    quantized nodes (pooling, reshapes) just follow their neighbours' scales.
    """
    model = _load(path)
    return [node.name for node in model.graph.node if node.op_type in WEIGHTED_OPS]


def _check_method(method: str) -> None:
    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"unknown calibration method {method!r} (quantize.calibration): "
            f"expected one of {', '.join(CALIBRATION_METHODS)}"
        )


def _check_percentile(percentile: float) -> None:
    if not 50 < percentile <= 100:  # the same bounds as quantize.percentile in config.py
        raise ValueError(f"quantize.percentile must be in (50, 100], got {percentile!r}")


def _calibration_rows(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"calibration_x needs at least one row, got shape {x.shape}")
    return x


# ---------------------------------------------------------------------------------------------
# fp16, int8 dynamic and int8 weight-only
# ---------------------------------------------------------------------------------------------
def to_fp16(src: str | Path, dst: str | Path) -> Path:
    """Half-precision weights; inputs and outputs stay float32, so callers feed the same arrays.

    ONNX Runtime's CPU provider has no fp16 kernels for these ops: it casts back to float32 at
    load time ("precision-free casts"), so the file halves and speed and results match float32.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(_load(src), keep_io_types=True)
    _topological(model)  # the converter appends the input casts after their consumers
    return _save_lean(model, dst)


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
        pre = _preprocess(src, Path(tmp) / "pre.onnx")
        out = Path(tmp) / "dynamic.onnx"
        with _quiet():
            quantize_dynamic(str(pre), str(out), op_types_to_quantize=list(op_types),
                             weight_type=QuantType.QInt8)
        model = _load(out)
    if store_conv_weights_int8:
        _store_weights_int8(model, ("Conv",))
    return _save_lean(model, dst)


def to_int8_weights(src: str | Path, dst: str | Path) -> Path:
    """Weight-only int8: every Conv/Gemm/MatMul weight stored as int8, computed in float32.

    The file shrinks like int8 (~4x), while ONNX Runtime expands the weights once when the session
    loads and runs the float32 graph with all its fusions: the latency of the float32 model, not
    the overhead of quantizing activations on every call, which costs more than it saves on small
    models at batch 1. (ONNX Runtime's own weight-only quantizer, MatMulNBits, covers MatMul and
    Gather, not Conv.)
    """
    model = _load(src)
    _store_weights_int8(model, WEIGHTED_OPS)
    return _save_lean(model, dst)


def _weight_axis(node: onnx.NodeProto, ndim: int) -> int:
    """The output-channel axis of a node's weight: per-channel scales run along it."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return ndim - 1
    return 0 if node.op_type == "Conv" else 1  # ConvTranspose: (C_in, C_out / group, ...)


def _store_weights_int8(model: onnx.ModelProto, op_types: Sequence[str]) -> None:
    """Replace the float weight initializers of `op_types` nodes by int8 + per-channel scale,
    expanded back by Cast + Mul nodes that ONNX Runtime constant-folds when the session loads."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    axes = {node.input[1]: _weight_axis(node, len(initializers[node.input[1]].dims))
            for node in graph.node
            if node.op_type in op_types and len(node.input) > 1 and node.input[1] in initializers}
    new_nodes = []
    for name, axis in sorted(axes.items()):
        weight = numpy_helper.to_array(initializers[name])
        if weight.dtype != np.float32 or weight.ndim < 2:
            continue
        # symmetric per output channel, like ORT's static int8 weights: scale = max|w| / 127
        absmax = np.abs(np.moveaxis(weight, axis, 0)).reshape(weight.shape[axis], -1).max(axis=1)
        scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
        scale = scale.reshape([-1 if dim == axis else 1 for dim in range(weight.ndim)])
        quantized = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(initializers[name])
        graph.initializer.extend([numpy_helper.from_array(quantized, f"{name}_int8"),
                                  numpy_helper.from_array(scale, f"{name}_scale")])
        # Cast + Mul rather than DequantizeLinear: ORT keeps DequantizeLinear unfolded (it waits
        # for a QDQ fusion), which made each call dequantize and lose the NCHWc conv (2.5x slower)
        new_nodes += [
            helper.make_node("Cast", [f"{name}_int8"], [f"{name}_float"], to=TensorProto.FLOAT,
                             name=f"{name}_Cast"),
            helper.make_node("Mul", [f"{name}_float", f"{name}_scale"], [name], name=f"{name}_Mul"),
        ]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + nodes)


# ---------------------------------------------------------------------------------------------
# int8 static: calibration and quantization
# ---------------------------------------------------------------------------------------------
def _reader(model: onnx.ModelProto, x: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class _OneBatch(CalibrationDataReader):
        # one batch of all rows: ORT's histogram collectors stack the batches, so they must all
        # have the same shape (a short last batch breaks them)
        def __init__(self) -> None:
            self._feeds = iter([{_input_name(model): x}])

        def get_next(self) -> dict | None:
            return next(self._feeds, None)

    return _OneBatch()


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[method]


def _calibrate(pre: Path, x: np.ndarray, method: str, percentile: float, workdir: Path):
    """Activation ranges of every float tensor (ORT TensorsData), computed with our settings."""
    from onnxruntime.quantization.calibrate import create_calibrator

    options = {"minmax": {},
               "percentile": {"num_bins": PERCENTILE_BINS, "percentile": percentile,
                              "symmetric": True},
               "entropy": {"num_bins": ENTROPY_BINS,
                           "num_quantized_bins": ENTROPY_QUANTIZED_BINS}}[method]
    with _quiet():
        calibrator = create_calibrator(pre, None, calibrate_method=_ort_method(method),
                                       extra_options=options,
                                       augmented_model_path=str(workdir / f"aug-{method}.onnx"))
        calibrator.collect_data(_reader(_load(pre), x))
        return calibrator.compute_data()


class _Calibrated:
    """One source model, pre-processed once, with calibration results cached per method: the
    fallback chain quantizes the same model many times with different exclusions."""

    def __init__(self, src: str | Path, x: np.ndarray, percentile: float, workdir: Path) -> None:
        self.workdir = workdir
        self.pre = _preprocess(src, workdir / "pre.onnx")
        self.x = x
        self.percentile = percentile
        self._caches: dict[str, Path] = {}

    def cache(self, method: str) -> Path:
        """ORT calibration cache (JSON) of `method`: quantize_static reads it, no recalibration."""
        from onnxruntime.quantization.calibrate import save_tensors_data

        if method not in self._caches:
            path = self.workdir / f"ranges-{method}.json"
            save_tensors_data(_calibrate(self.pre, self.x, method, self.percentile, self.workdir), path)
            self._caches[method] = path
        return self._caches[method]

    def quantize(self, dst: str | Path, method: str, per_channel: bool = True,
                 exclude_nodes: Sequence[str] = (), only_nodes: Sequence[str] = (),
                 quant_format: str = "qdq") -> Path:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        out = self.workdir / "quantized.onnx"
        with _quiet():
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
        return _save_lean(_load(out), dst)


def to_int8_static(
    src: str | Path,
    dst: str | Path,
    calibration_x: np.ndarray,
    method: CalibrationName = "minmax",
    per_channel: bool = True,
    percentile: float = 99.99,
    exclude_nodes: Sequence[str] = (),
    quant_format: Literal["qdq", "qoperator"] = "qdq",
) -> Path:
    """int8 weights and activations, activation ranges calibrated on `calibration_x` rows.

    `method`: minmax | percentile | entropy (see the module docstring). `exclude_nodes`: node
    names (see `quantizable_nodes`) left in float32. `quant_format`: qdq (QuantizeLinear /
    DequantizeLinear around float ops; ORT fuses them into int8 kernels at load) or qoperator
    (QLinearConv etc. written out: a smaller file, the same kernels). Deterministic: the same
    inputs give the same bytes.
    """
    _check_method(method)
    _check_percentile(percentile)
    if quant_format not in QUANT_FORMATS:
        raise ValueError(f"unknown quant_format {quant_format!r}: expected one of {QUANT_FORMATS}")
    x = _calibration_rows(calibration_x)
    with tempfile.TemporaryDirectory(prefix="shrinkflow-int8s-") as tmp:
        work = _Calibrated(src, x, percentile, Path(tmp))
        names = {node.name for node in _load(work.pre).graph.node}
        unknown = sorted(set(exclude_nodes) - names)
        if unknown:
            raise ValueError(f"exclude_nodes names nodes not in {src}: {unknown}; "
                             f"quantizable nodes are {quantizable_nodes(work.pre)}")
        return work.quantize(dst, method, per_channel, exclude_nodes, quant_format=quant_format)


# ---------------------------------------------------------------------------------------------
# Sensitivity: which layers lose most when quantized
# ---------------------------------------------------------------------------------------------
def _sensitivity(work: _Calibrated, method: str, per_channel: bool) -> list[tuple[str, float]]:
    from shrinkflow.export import onnx_predictor

    reference = onnx_predictor(work.pre)(work.x)
    power = float(np.mean(reference**2)) or 1.0
    scores = []
    for name in quantizable_nodes(work.pre):
        path = work.quantize(work.workdir / "single.onnx", method, per_channel, only_nodes=[name])
        # relative squared error of the logits: a ranking signal only, not a reported metric
        error = float(np.mean((onnx_predictor(path)(work.x) - reference) ** 2)) / power
        scores.append((name, error))
    # most sensitive first; the name breaks ties so the order is reproducible
    return sorted(scores, key=lambda item: (-item[1], item[0]))


def node_sensitivity(
    src: str | Path,
    calibration_x: np.ndarray,
    method: CalibrationName = "minmax",
    per_channel: bool = True,
    percentile: float = 99.99,
) -> list[tuple[str, float]]:
    """(node, relative logit error) when only that weighted node is int8, most sensitive first.

    The error is mean((int8 logits - float logits)^2) / mean(float logits^2) on the
    calibration rows: cheap, label-free and deterministic.
    """
    _check_method(method)
    _check_percentile(percentile)
    x = _calibration_rows(calibration_x)
    with tempfile.TemporaryDirectory(prefix="shrinkflow-sens-") as tmp:
        return _sensitivity(_Calibrated(src, x, percentile, Path(tmp)), method, per_channel)


# ---------------------------------------------------------------------------------------------
# Quantization-aware training (fake quantization with a straight-through estimator)
# ---------------------------------------------------------------------------------------------
def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Round to symmetric int8 per output channel (axis 0), as ORT quantizes weights:
    scale = max|w| / 127, values in [-127, 127]. The gradient passes straight through."""
    absmax = weight.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-12)
    scale = (absmax / 127.0).view(-1, *([1] * (weight.ndim - 1)))
    quantized = torch.clamp(torch.round(weight / scale), -127, 127) * scale
    return weight + (quantized - weight).detach()


def fake_quantize_activation(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Round to asymmetric uint8 over [low, high] per tensor, as ORT quantizes activations.

    The straight-through gradient is 1 inside the range and 0 where the value was clipped.
    """
    low, high = low.clamp(max=0.0), high.clamp(min=0.0)  # zero must be exact (padding, ReLU)
    scale = ((high - low) / 255.0).clamp_min(1e-12)
    zero_point = torch.clamp(torch.round(-low / scale), 0, 255)
    codes = torch.clamp(torch.round(x / scale) + zero_point, 0, 255)
    quantized = (codes - zero_point) * scale
    clipped = torch.clamp(x, (0 - zero_point) * scale, (255 - zero_point) * scale)
    return clipped + (quantized - clipped).detach()


class ActivationFakeQuant(nn.Module):
    """Fake-quantizes a tensor over a range tracked with an exponential moving average of each
    training batch's min and max (frozen in eval mode). Buffers, so fit's best-state restore
    and state_dict carry them."""

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                low, high = x.min().float(), x.max().float()
                if not self.observed:
                    self.low.copy_(low)
                    self.high.copy_(high)
                    self.observed.fill_(True)
                else:
                    self.low.lerp_(low, self.momentum)
                    self.high.lerp_(high, self.momentum)
        if not self.observed:
            return x
        return fake_quantize_activation(x, self.low, self.high)


class _QuantInput(nn.Module):
    """Conv/Linear computed with a fake-quantized weight on a fake-quantized input."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.act = ActivationFakeQuant()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        # the module runs with its weight swapped for the rounded one; gradients reach the
        # float weight through the straight-through estimator
        weight = fake_quantize_weight(self.module.weight)
        return functional_call(self.module, {"weight": weight}, (self.act(x),))


class _QuantOutput(nn.Module):
    """ReLU whose output is fake-quantized: ORT quantizes a Conv+ReLU at the ReLU's output."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.act = ActivationFakeQuant()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.module(x))


_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)


def prepare_qat(model: nn.Module) -> nn.Module:
    """A copy of `model` with fake quantization on Conv/Linear weights (per-channel symmetric
    int8), on their inputs and on ReLU outputs (per-tensor uint8, EMA ranges).

    BatchNorm stays separate: ORT folds it into the conv, which scales each output channel by a
    constant, and per-channel symmetric quantization is unchanged by such a scaling.
    """
    qat = copy.deepcopy(model)

    def wrap(module: nn.Module) -> None:
        for name, child in list(module.named_children()):
            if isinstance(child, _WEIGHTED):
                setattr(module, name, _QuantInput(child))
            elif isinstance(child, nn.ReLU):
                setattr(module, name, _QuantOutput(child))
            else:
                wrap(child)

    wrap(qat)
    return qat


def strip_fake_quant(model: nn.Module) -> nn.Module:
    """The plain model again (same class and state_dict keys as before `prepare_qat`), in eval
    mode, with weights snapped to their int8 grid, so `to_int8_static` reproduces them."""
    plain = copy.deepcopy(model)

    def unwrap(module: nn.Module) -> None:
        for name, child in list(module.named_children()):
            if isinstance(child, (_QuantInput, _QuantOutput)):
                inner = child.module
                if isinstance(child, _QuantInput):
                    with torch.no_grad():
                        inner.weight.copy_(fake_quantize_weight(inner.weight))
                setattr(module, name, inner)
            else:
                unwrap(child)

    unwrap(plain)
    return plain.eval()


def qat_train_config(train_cfg: TrainConfig, cfg: QuantizeConfig) -> TrainConfig:
    """Fine-tuning settings for QAT: `quantize.qat_epochs` epochs at a tenth of the learning rate
    (the model is already trained; a full rate would undo it), no early stop before the end."""
    return train_cfg.model_copy(update={"epochs": cfg.qat_epochs, "lr": train_cfg.lr / 10,
                                        "patience": max(train_cfg.patience, cfg.qat_epochs)})


def quantization_aware_training(
    model: nn.Module,
    train: Split,
    val: Split,
    train_cfg: TrainConfig,
    augment: Augmenter | None = None,
    on_epoch_end: Callable[[EpochLog], None] | None = None,
    progress: bool = False,
) -> nn.Module:
    """Fine-tune a fake-quantized copy of `model` with `shrinkflow.train.fit`; `model` is left as
    it was. The result keeps its fake quantization (its accuracy is the int8 estimate); pass
    it to `export_qat_onnx` / `qat_to_int8`. Use `qat_train_config` for `train_cfg`."""
    qat = prepare_qat(model)
    fit(qat, train, val, train_cfg, augment=augment, on_epoch_end=on_epoch_end,
        progress=progress, description="quantization-aware training")
    return qat


def export_qat_onnx(qat_model: nn.Module, input_shape: tuple[int, ...], dst: str | Path) -> Path:
    """The QAT model's float weights (on the int8 grid) as a float32 ONNX file."""
    from shrinkflow.export import export_onnx

    return export_onnx(strip_fake_quant(qat_model), input_shape, dst)


def qat_to_int8(
    qat_model: nn.Module,
    input_shape: tuple[int, ...],
    calibration_x: np.ndarray,
    dst: str | Path,
    per_channel: bool = True,
) -> Path:
    """Export the QAT model and quantize it with minmax calibration (the same min/max statistic
    the EMA ranges tracked during training, measured on the calibration rows)."""
    with tempfile.TemporaryDirectory(prefix="shrinkflow-qat-") as tmp:
        float_path = export_qat_onnx(qat_model, input_shape, Path(tmp) / "qat.onnx")
        return to_int8_static(float_path, dst, calibration_x, "minmax", per_channel)


# ---------------------------------------------------------------------------------------------
# Accuracy-aware fallback
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    """One quantized model tried by `quantize_with_fallback`."""

    step: str  # what produced it: initial | minmax | percentile | entropy | exclude_sensitive | qat
    method: str  # int8_static, or qat (int8 static of the QAT-trained model)
    calibration: str
    excluded_nodes: tuple[str, ...]
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


def quantize_with_fallback(
    src: str | Path,
    dst: str | Path,
    calibration_x: np.ndarray,
    evaluate: Callable[[Path], float],
    reference_accuracy: float,
    cfg: QuantizeConfig,
    qat: Callable[[], Path] | None = None,
) -> FallbackResult:
    """int8 static with `quantize.calibration`; while the accuracy drop exceeds
    `quantize.max_accuracy_drop_pp`, try the `quantize.fallback` steps in order.

    evaluate(path) -> accuracy in [0, 1] of a quantized ONNX file (the caller's data and metric).
    reference_accuracy: the float model's accuracy on the same data.
    qat() -> path of a float32 ONNX of a QAT-trained model (e.g. `export_qat_onnx`); it is
    quantized with minmax calibration. Without it the qat step is skipped.

    Steps: a calibration name tries that calibration (skipped if already tried);
    exclude_sensitive ranks the weighted nodes by `node_sensitivity` (with the best calibration
    so far) and keeps the 1, 2, ... most sensitive in float (at least one stays int8); qat as
    above. The chain stops at the first accepted attempt. The chosen file (the accepted one, or
    the most accurate with `accepted=False`: the caller decides) is written to `dst`; the other
    attempts live in a temporary directory that is removed.
    """
    _check_method(cfg.calibration)
    if not 0.0 <= reference_accuracy <= 1.0:
        raise ValueError(f"reference_accuracy must be in [0, 1], got {reference_accuracy!r}")
    x = _calibration_rows(calibration_x)[: cfg.calibration_samples]
    attempts: list[tuple[Attempt, Path]] = []

    with tempfile.TemporaryDirectory(prefix="shrinkflow-fallback-") as tmp:
        workdir = Path(tmp)
        work = _Calibrated(src, x, cfg.percentile, _subdir(workdir, "source"))

        def attempt(step: str, calibration: str, excluded: tuple[str, ...] = (),
                    source: _Calibrated = work, method: str = "int8_static") -> Attempt:
            path = source.quantize(workdir / f"attempt-{len(attempts)}.onnx", calibration,
                                   cfg.per_channel, excluded, quant_format=cfg.format)
            accuracy = float(evaluate(path))
            # rounded so that 0.99 - 0.985 counts as 0.5 pp, not 0.5000000000000004
            drop_pp = round((reference_accuracy - accuracy) * 100.0, 9)
            record = Attempt(step, method, calibration, excluded, accuracy, drop_pp,
                             file_size(path), drop_pp <= cfg.max_accuracy_drop_pp)
            attempts.append((record, path))
            return record

        done = attempt("initial", cfg.calibration).accepted
        for step in cfg.fallback:
            if done:
                break
            if step in CALIBRATION_METHODS:
                if any(a.calibration == step and a.method == "int8_static" and not a.excluded_nodes
                       for a, _ in attempts):
                    continue
                done = attempt(step, step).accepted
            elif step == "exclude_sensitive":
                calibration = max((a for a, _ in attempts if a.method == "int8_static"),
                                  key=lambda a: a.accuracy).calibration
                ranking = [name for name, _ in _sensitivity(work, calibration, cfg.per_channel)]
                for count in range(1, len(ranking)):
                    if attempt(step, calibration, tuple(ranking[:count])).accepted:
                        done = True
                        break
            elif step == "qat" and qat is not None:
                trained = _Calibrated(qat(), x, cfg.percentile, _subdir(workdir, "qat"))
                done = attempt(step, "minmax", source=trained, method="qat").accepted

        accepted = [item for item in attempts if item[0].accepted]
        # none accepted: the most accurate; on a tie the smaller file, then the earlier attempt
        chosen, chosen_path = accepted[0] if accepted else min(
            attempts, key=lambda item: (-item[0].accuracy, item[0].size_bytes))
        shutil.copyfile(chosen_path, dst)
    return FallbackResult(Path(dst), chosen, tuple(a for a, _ in attempts))


def _subdir(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir()
    return path

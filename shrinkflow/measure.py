"""The one place where model quality, size and speed are computed.

Every number that reaches MLflow, DVC metrics or the benchmark report comes from here, with the
standard names: accuracy, f1_macro, params_count, nonzero_params, size_bytes, flops, macs,
latency_ms_p50_b1, latency_ms_p95_b1, throughput_sps_b256.

Keys read from `measure`:
  threads             intra-op threads for torch and ONNX Runtime (fixed so numbers compare)
  warmup              untimed calls before timing
  repeats             timed calls at batch 1; p50/p95 are taken over them
  throughput_repeats  timed calls at batch 256; the median gives samples per second
  rounds              models measured together are loaded and timed in turn, in this many rounds

A model is measured through a `Predictor`: a function from a float32 numpy batch to logits. The
same timing harness serves eager torch and ONNX Runtime, so their numbers are comparable.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shrinkflow.config import MeasureConfig

Predictor = Callable[[np.ndarray], np.ndarray]
THROUGHPUT_BATCH = 256  # fixed: it is part of the standard metric name throughput_sps_b256


# ---------------------------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------------------------
def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def predict_batched(predict: Predictor, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    return np.concatenate([predict(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def evaluate(predict: Predictor, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """accuracy and f1_macro of `predict`'s most likely class on (x, y)."""
    return classification_metrics(y, predict_batched(predict, x).argmax(1))


# ---------------------------------------------------------------------------------------------
# Size and compute
# ---------------------------------------------------------------------------------------------
def count_params(model: nn.Module) -> tuple[int, int]:
    """(all parameters, non-zero parameters) of a torch model."""
    tensors = list(model.parameters())
    return sum(t.numel() for t in tensors), sum(int(t.count_nonzero()) for t in tensors)


def count_onnx_params(path: str | Path) -> tuple[int, int]:
    """(all, non-zero) numbers held in an ONNX file's initializers, dense and sparse."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    arrays = [numpy_helper.to_array(init) for init in model.graph.initializer]
    arrays = [a for a in arrays if a.dtype.kind in "fiu" and a.size > 1]  # skip scalars/shapes
    total = sum(a.size for a in arrays)
    nonzero = sum(int(np.count_nonzero(a)) for a in arrays)
    for sparse in model.graph.sparse_initializer:  # COO: only the stored values can be non-zero
        total += math.prod(sparse.dims)
        nonzero += int(np.count_nonzero(numpy_helper.to_array(sparse.values)))
    return total, nonzero


def file_size(path: str | Path) -> int:
    return Path(path).stat().st_size


def compute(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, dict[str, int]]:
    """(total FLOPs, multiply-accumulates per layer) for one sample, counted by torch itself."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_shape))
    root = type(model).__name__  # FlopCounterMode names modules "<RootClass>.<path>"

    def path(name: str) -> str:
        return "" if name == root else name.removeprefix(f"{root}.")

    leaves = {name for name, module in model.named_modules() if not list(module.children())}
    # a FLOP is one multiply or one add; a MAC is one of each
    macs = {
        path(name) or root: int(sum(counts.values())) // 2
        for name, counts in counter.get_flop_counts().items()
        if name != "Global" and path(name) in leaves
    }
    return int(counter.get_total_flops()), macs


# ---------------------------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------------------------
@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def torch_predictor(model: nn.Module) -> Predictor:
    model = model.eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return predict


def _time_calls_ms(predict: Predictor, x: np.ndarray, calls: int) -> np.ndarray:
    times = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter_ns()
        predict(x)
        times[i] = (time.perf_counter_ns() - started) / 1e6
    return times


def latencies(loaders: Mapping[str, Callable[[], Predictor]], sample: np.ndarray,
              cfg: MeasureConfig) -> dict[str, dict[str, float]]:
    """Batch-1 latency percentiles and batch-256 throughput of several models, by name.

    `loaders[name]()` returns a ready predictor (for ONNX, a new Runtime session). The timed calls
    are split into `cfg.rounds` rounds and every round loads and times every model in turn:
    a slow phase of the machine falls on all models alike instead of on whichever was being
    timed, and a session whose buffers happen to land badly in memory (up to 30% slower than
    another session of the same file, measured here) is one round out of several.
    `cfg.warmup` untimed batch-1 calls, spread over the rounds, and one untimed batch-256 call
    per round precede the timed ones.
    """
    one = np.ascontiguousarray(sample[:1])
    batch = np.ascontiguousarray(np.resize(sample, (THROUGHPUT_BATCH, *sample.shape[1:])))
    at_one: dict[str, list[np.ndarray]] = {name: [] for name in loaders}
    at_batch: dict[str, list[np.ndarray]] = {name: [] for name in loaders}
    rounds = min(cfg.rounds, cfg.throughput_repeats, cfg.repeats)
    for index in range(rounds):
        for name, load in loaders.items():
            predict = load()
            for _ in range(_share(cfg.warmup, rounds, index)):
                predict(one)
            predict(batch)
            at_one[name].append(_time_calls_ms(predict, one, _share(cfg.repeats, rounds, index)))
            at_batch[name].append(
                _time_calls_ms(predict, batch, _share(cfg.throughput_repeats, rounds, index)))
    results = {}
    for name in loaders:
        ones, batches = np.concatenate(at_one[name]), np.concatenate(at_batch[name])
        results[name] = {
            "latency_ms_p50_b1": float(np.percentile(ones, 50)),
            "latency_ms_p95_b1": float(np.percentile(ones, 95)),
            "throughput_sps_b256": float(THROUGHPUT_BATCH / (np.median(batches) / 1e3)),
        }
    return results


def _share(total: int, parts: int, index: int) -> int:
    """Part `index` of `total` split into `parts` near-equal integers (they sum to `total`)."""
    return total // parts + (1 if index < total % parts else 0)


# ---------------------------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """One model's standard metrics (names as in MLflow and the benchmark report)."""

    accuracy: float
    f1_macro: float
    params_count: int
    nonzero_params: int
    size_bytes: int
    latency_ms_p50_b1: float
    latency_ms_p95_b1: float
    throughput_sps_b256: float
    flops: int | None = None
    macs: int | None = None

    def metrics(self) -> dict[str, float]:
        return {key: float(value) for key, value in asdict(self).items() if value is not None}


def machine_info(threads: int) -> dict[str, object]:
    import platform

    import onnxruntime

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


@dataclass(frozen=True)
class Subject:
    """One model to measure: how to load a predictor, the file that holds it, its torch module."""

    load: Callable[[], Predictor]
    artifact: str | Path
    model: nn.Module | None = None  # torch: parameter and compute counts come from the module


def measure_all(subjects: Mapping[str, Subject], x_test: np.ndarray, y_test: np.ndarray,
                cfg: MeasureConfig) -> dict[str, Measurement]:
    """Accuracy on the test split, file size and speed of each subject, timed side by side.

    Parameter and compute counts come from the torch module when given, else from the ONNX file.
    """
    with torch_threads(cfg.threads):
        quality = {name: evaluate(s.load(), x_test, y_test) for name, s in subjects.items()}
        speed = latencies({name: s.load for name, s in subjects.items()}, x_test, cfg)
    return {name: _measurement(subject, quality[name], speed[name], x_test.shape[1:])
            for name, subject in subjects.items()}


def _measurement(subject: Subject, quality: dict[str, float], speed: dict[str, float],
                 input_shape: tuple[int, ...]) -> Measurement:
    flops = macs = None
    if subject.model is not None:
        params, nonzero = count_params(subject.model)
        flops, per_layer = compute(subject.model, input_shape)
        macs = sum(per_layer.values())
    else:
        params, nonzero = count_onnx_params(subject.artifact)
    return Measurement(
        accuracy=quality["accuracy"],
        f1_macro=quality["f1_macro"],
        params_count=params,
        nonzero_params=nonzero,
        size_bytes=file_size(subject.artifact),
        latency_ms_p50_b1=speed["latency_ms_p50_b1"],
        latency_ms_p95_b1=speed["latency_ms_p95_b1"],
        throughput_sps_b256=speed["throughput_sps_b256"],
        flops=flops,
        macs=macs,
    )


def relative(candidate: Measurement, torch_baseline: Measurement, onnx_baseline: Measurement,
             teacher_accuracy: float) -> dict[str, float]:
    """Ratios against the fp32 baseline, each taken from numbers measured in the same run.

    size_ratio             baseline fp32 torch file bytes / candidate file bytes
    speedup_b1_vs_torch    baseline eager-torch p50 latency / candidate p50 latency (batch 1)
    speedup_b1_vs_ort_fp32 baseline ONNX Runtime fp32 p50 latency / candidate p50 latency
    throughput_ratio_b256_vs_ort_fp32  candidate / baseline ONNX Runtime fp32 samples per second
    accuracy_drop_pp       teacher accuracy minus candidate accuracy, in percentage points
    """
    return {
        "size_ratio": torch_baseline.size_bytes / candidate.size_bytes,
        "speedup_b1_vs_torch": torch_baseline.latency_ms_p50_b1 / candidate.latency_ms_p50_b1,
        "speedup_b1_vs_ort_fp32": onnx_baseline.latency_ms_p50_b1 / candidate.latency_ms_p50_b1,
        "throughput_ratio_b256_vs_ort_fp32":
            candidate.throughput_sps_b256 / onnx_baseline.throughput_sps_b256,
        "accuracy_drop_pp": 100.0 * (teacher_accuracy - candidate.accuracy),
    }

"""The one place where model quality, size and speed are computed.

Every number that reaches MLflow, DVC metrics or the benchmark report comes from here, with the
standard names: accuracy and f1_macro (test split; `val_` prefixed on validation), params_count,
nonzero_params, size_bytes, flops, macs, latency_ms_p50_b1, latency_ms_p95_b1, throughput_sps_b256.

Quality and size are properties of a file and are computed by the stage that makes it. Speed is
not: it depends on the moment and on what else runs, so models are only ever timed side by side,
in one process, by the `compare` stage (`time_side_by_side`), and every speed ratio comes with an
interval from the timing's own noise (`Noise`).

Keys read from `measure`:
  threads             intra-op threads for torch and ONNX Runtime (fixed so numbers compare)
  warmup              untimed calls before timing, spread over the rounds
  repeats             timed calls at batch 1; p50/p95 are taken over them
  throughput_repeats  timed calls at batch 256; the median gives samples per second
  rounds              models timed together take turns in this many rounds; the intervals
                      resample them, so more rounds give tighter, more trustworthy intervals

A model is measured through a `Predictor`: a function from a float32 numpy batch to logits. The
same timing harness serves eager torch and ONNX Runtime, so their numbers are comparable.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shrinkflow.config import MeasureConfig
from shrinkflow.progress import Heartbeat

_log = logging.getLogger("shrinkflow.measure")

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
    # packed types (INT4, INT2) come back as ml_dtypes arrays of kind "V"; int8 holds their values
    arrays = [array.astype(np.int8) if array.dtype.kind == "V" else array
              for array in map(numpy_helper.to_array, model.graph.initializer)]
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
# Speed: every model timed side by side, with the noise of the timing measured too
# ---------------------------------------------------------------------------------------------
@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads within the block (None: as they are)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
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


@dataclass(frozen=True)
class Timing:
    """Call times of one model, in ms, one row per round: timed side by side with other models."""

    batch1_ms: np.ndarray  # (rounds, calls per round), batch 1
    batch256_ms: np.ndarray  # (rounds, calls per round), batch THROUGHPUT_BATCH

    def metrics(self) -> dict[str, float]:
        return {"latency_ms_p50_b1": float(np.percentile(self.batch1_ms, 50)),
                "latency_ms_p95_b1": float(np.percentile(self.batch1_ms, 95)),
                "throughput_sps_b256": THROUGHPUT_BATCH / (float(np.median(self.batch256_ms)) / 1e3)}


def time_side_by_side(loaders: Mapping[str, Callable[[], Predictor]], sample: np.ndarray,
                      cfg: MeasureConfig, seed: int = 0) -> dict[str, Timing]:
    """Batch-1 and batch-256 call times of several models, by name, taken in turn.

    `loaders[name]()` returns a ready predictor (for ONNX, a new Runtime session). The timed calls
    are split into `cfg.rounds` rounds; every round loads and times every model, in an order
    shuffled per round (seeded): a slow phase of the machine falls on all models alike instead of
    on whichever was being timed, no model always follows the same neighbour, and a session whose
    buffers happen to land badly in memory (up to 30% slower than another session of the same
    file, measured here) is one round out of several. Each round starts with untimed warm-up calls
    (`cfg.warmup` in all) and one untimed batch-256 call. The rounds are what `Noise` resamples.
    """
    one = np.ascontiguousarray(sample[:1])
    batch = np.ascontiguousarray(np.resize(sample, (THROUGHPUT_BATCH, *sample.shape[1:])))
    rounds = cfg.rounds
    per_round = (-(-cfg.repeats // rounds), -(-cfg.throughput_repeats // rounds))
    at_one: dict[str, list[np.ndarray]] = {name: [] for name in loaders}
    at_batch: dict[str, list[np.ndarray]] = {name: [] for name in loaders}
    order = np.random.default_rng(seed)
    heartbeat = Heartbeat()
    for round_number in range(1, rounds + 1):
        for position, name in enumerate(order.permutation(list(loaders)), 1):
            if heartbeat.due():
                _log.info("timing round %d/%d, model %d/%d (%s)", round_number, rounds, position,
                          len(loaders), name)
            predict = loaders[name]()
            for _ in range(-(-cfg.warmup // rounds)):
                predict(one)
            predict(batch)
            at_one[name].append(_time_calls_ms(predict, one, per_round[0]))
            at_batch[name].append(_time_calls_ms(predict, batch, per_round[1]))
    return {name: Timing(np.stack(at_one[name]), np.stack(at_batch[name])) for name in loaders}


# a quick batch-1 timing of one model, for search trials (compare times candidates properly)
QUICK_TIMING = MeasureConfig(threads=1, warmup=10, repeats=60, throughput_repeats=3, rounds=3)


def quick_latency_ms(load: Callable[[], Predictor], sample: np.ndarray) -> float:
    """Median batch-1 latency of one model (`load()` returns its predictor), on one thread."""
    timing = time_side_by_side({"model": load}, sample, QUICK_TIMING)["model"]
    return float(np.median(timing.batch1_ms))


@dataclass(frozen=True)
class Ratio:
    """A speed ratio and its confidence interval."""

    value: float
    low: float
    high: float

    def fields(self, name: str) -> dict[str, float | list[float]]:
        """`name` and `name_interval`, as the benchmark report writes them."""
        return {name: self.value, f"{name}_interval": [self.low, self.high]}


class Noise:
    """How sure a speed ratio is: a bootstrap over the rounds of a side-by-side timing.

    Each resample draws the rounds with replacement, the same rounds for every model (they were
    timed together, so a slow moment of the machine stays shared), and takes each model's median
    call time over the calls of the drawn rounds. A ratio's interval spans the middle `level`
    share of its resampled values. Two models whose batch-1 ratio interval contains 1 are not told
    apart by this timing (`faster` is False both ways).
    """

    def __init__(self, timings: Mapping[str, Timing], resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> None:
        self.timings = timings
        self.tails = (50 * (1 - level), 50 * (1 + level))
        rounds = {len(t.batch1_ms) for t in timings.values()}
        if len(rounds) != 1:
            raise ValueError(f"the models were not timed side by side: rounds {sorted(rounds)}")
        count = rounds.pop()
        drawn = np.random.default_rng(seed).integers(0, count, (resamples, count))
        self._medians = {
            (name, batch): np.median(times[drawn].reshape(resamples, -1), axis=1)
            for name, timing in timings.items()
            for batch, times in ((1, timing.batch1_ms), (THROUGHPUT_BATCH, timing.batch256_ms))}

    def speedup(self, reference: str, candidate: str, batch: int = 1) -> Ratio:
        """How many times faster `candidate` runs than `reference` at `batch` (1 or 256): the
        ratio of their median call times (at 256, the ratio of throughputs)."""
        def median(name: str) -> float:
            timing = self.timings[name]
            return float(np.median(timing.batch1_ms if batch == 1 else timing.batch256_ms))

        resampled = self._medians[reference, batch] / self._medians[candidate, batch]
        low, high = np.percentile(resampled, self.tails)
        return Ratio(median(reference) / median(candidate), float(low), float(high))

    def faster(self, first: str, second: str, by: float = 1.0) -> bool:
        """Is `first` more than `by` times faster than `second` at batch 1, beyond the noise?
        (The whole interval of the ratio must clear `by`.)"""
        return self.speedup(second, first).low > by


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


# ---------------------------------------------------------------------------------------------
# Quality and size of one model, as every stage reports them
# ---------------------------------------------------------------------------------------------
def scores(predict: Predictor, val_x: np.ndarray, val_y: np.ndarray, test_x: np.ndarray,
           test_y: np.ndarray) -> dict[str, float]:
    """Accuracy and macro F1 on validation (`val_*`: what choices read) and on test (reported)."""
    val = evaluate(predict, val_x, val_y)
    return {**{f"val_{key}": value for key, value in val.items()},
            **evaluate(predict, test_x, test_y)}


def onnx_size(path: str | Path) -> dict[str, float]:
    """File size and (all, non-zero) parameter counts of an ONNX file."""
    params, nonzero = count_onnx_params(path)
    return {"params_count": float(params), "nonzero_params": float(nonzero),
            "size_bytes": float(file_size(path))}


def torch_size(model: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> dict[str, float]:
    """File size, parameter counts and compute (FLOPs, MACs per sample) of a saved torch model."""
    params, nonzero = count_params(model)
    flops, per_layer = compute(model, input_shape)
    return {"params_count": float(params), "nonzero_params": float(nonzero),
            "size_bytes": float(file_size(path)), "flops": float(flops),
            "macs": float(sum(per_layer.values()))}

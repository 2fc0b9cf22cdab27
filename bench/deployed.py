"""The deployed candidate timed again after the choice, in absolute terms, beside the runtime's floor.

compare picks the deployed candidate partly on speed, from its own timing rounds: the ratio read in
those rounds is the one that won, so it leans high (the winner's curse). Here the deployed file and
the fp32 baseline (eager torch and ONNX Runtime) are timed again in fresh rounds, side by side
with:

  served    the deployable graph users call (models/deploy/model.onnx: raw rows or uint8 images
            in, label names and probabilities out), fed raw rows or images;
  identity  a one-node Identity graph of the input's width: what a call of an empty graph costs;
  matmul    one MatMul of the input's width x classes: the smallest graph that can classify.

Every figure is absolute (microseconds per call at batch 1, samples per second at batch 256) and
every ratio comes with its interval from the same rounds. All sessions share the settings
compare uses (`measure.threads`, sequential execution).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shrinkflow.footprint import floor_graph

FLOORS = ("identity", "matmul")
RETIMED = ("torch", "baseline", "deployed", "served", *FLOORS)


def _fed(predict: Callable[[np.ndarray], np.ndarray], one: np.ndarray, batch: np.ndarray
         ) -> Callable[[np.ndarray], np.ndarray]:
    """A predictor that answers the shared timing sample with its own input of the same batch
    size (raw rows for the served graph, flat rows for the floors)."""
    return lambda x: predict(one if len(x) == 1 else batch)


def _served_predictor(path: Path, raw: np.ndarray, threads: int) -> Callable[[np.ndarray], object]:
    from shrinkflow.export import onnx_session
    from shrinkflow.measure import THROUGHPUT_BATCH

    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    dtype = np.uint8 if raw.dtype == np.uint8 else np.float32  # images, or rows of numbers
    one = np.ascontiguousarray(raw[:1], dtype=dtype)
    batch = np.ascontiguousarray(np.resize(raw, (THROUGHPUT_BATCH, *raw.shape[1:])), dtype=dtype)
    return _fed(lambda rows: session.run(None, {name: rows}), one, batch)


def retime(project: Path, deployed_file: str, threads: int, rounds: int = 10) -> dict:
    """The deployed candidate of `project`, its served graph, the fp32 baseline and the floors,
    timed side by side in fresh rounds; returns the absolute figures and the ratios."""
    from shrinkflow.config import MeasureConfig
    from shrinkflow.export import onnx_predictor
    from shrinkflow.measure import THROUGHPUT_BATCH, Noise, time_side_by_side, torch_predictor, torch_threads
    from tasks.services.candidates import load_torch
    from tasks.services.registry import Rows

    cfg = MeasureConfig(threads=threads, warmup=50, repeats=2000, throughput_repeats=20,
                        rounds=rounds)
    sample = np.load(project / "data" / "processed" / "val.npz")["x"]
    raw = Rows.of_split(project, "val").x
    _, teacher = load_torch(project / "models" / "baseline", "baseline")
    spec = json.loads((project / "data" / "processed" / "dataset.json").read_text())["spec"]
    width, classes = int(np.prod(sample.shape[1:])), len(spec["classes"])
    flat_one = np.ascontiguousarray(sample[:1].reshape(1, width))
    flat_batch = np.ascontiguousarray(np.resize(sample, (THROUGHPUT_BATCH, *sample.shape[1:]))
                                      .reshape(THROUGHPUT_BATCH, width))
    with tempfile.TemporaryDirectory(prefix="shrinkflow-floor-") as scratch:
        floors = {kind: floor_graph(kind, width, classes, Path(scratch) / f"{kind}.onnx")
                  for kind in FLOORS}
        loaders = {
            "torch": lambda: torch_predictor(teacher),
            "baseline": lambda: onnx_predictor(project / "models" / "baseline" / "model.onnx",
                                               threads),
            "deployed": lambda: onnx_predictor(project / deployed_file, threads),
            "served": lambda: _served_predictor(project / "models" / "deploy" / "model.onnx",
                                                raw, threads),
            **{kind: (lambda path=path: _fed(onnx_predictor(path, threads), flat_one, flat_batch))
               for kind, path in floors.items()}}
        with torch_threads(threads):
            timings = time_side_by_side(loaders, sample, cfg, seed=1)  # not compare's order
    noise = Noise(timings)
    figures = {name: timings[name].metrics() for name in RETIMED}
    return {"rounds": rounds, "threads": threads,
            **noise.speedup("baseline", "deployed").fields("retimed_speedup_b1_vs_ort_fp32"),
            **noise.speedup("torch", "deployed").fields("retimed_speedup_b1_vs_torch"),
            **noise.speedup("baseline", "deployed", THROUGHPUT_BATCH).fields(
                "retimed_throughput_ratio_b256_vs_ort_fp32"),
            # times the floor: how many MatMul calls one call of the deployed file costs
            **noise.speedup("deployed", "matmul").fields("latency_vs_matmul_b1"),
            "latency_us_b1": 1e3 * figures["deployed"]["latency_ms_p50_b1"],
            "throughput_sps_b256": figures["deployed"]["throughput_sps_b256"],
            "served_latency_us_b1": 1e3 * figures["served"]["latency_ms_p50_b1"],
            "served_throughput_sps_b256": figures["served"]["throughput_sps_b256"],
            "baseline_latency_us_b1": 1e3 * figures["baseline"]["latency_ms_p50_b1"],
            "torch_latency_us_b1": 1e3 * figures["torch"]["latency_ms_p50_b1"],
            "floor_us_b1": {kind: 1e3 * figures[kind]["latency_ms_p50_b1"] for kind in FLOORS},
            "input_width": width, "classes": classes}


def against_teacher(deployed: dict, teacher: dict) -> dict:
    """The deployed row's size and test accuracy against another teacher's torch row (params.yaml's
    fixed config: ratios that do not move when the search changes the teacher)."""
    return {"size_ratio": teacher["size_bytes"] / deployed["size_bytes"],
            "accuracy_drop_pp": 100 * (teacher["accuracy"] - deployed["accuracy"]),
            "teacher_accuracy": teacher["accuracy"], "teacher_size_bytes": teacher["size_bytes"]}

"""ONNX Runtime sessions as every measure opens them: on the CPU, with a fixed intra-op thread
count, one model call at a time. Free of torch, so a process that only runs ONNX files (the
memory probe of `shrinkflow.footprint`) does not import it."""

from __future__ import annotations

from pathlib import Path


def onnx_session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session with a fixed intra-op thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

"""Whether a candidate runs alike in a second runtime: OpenVINO, when it is installed (the
optional extra `portability`; `make install` brings it).

  second_runtime            the runtime and its version ("openvino 2026.4.1"), or "" when none is
                            installed
  second_runtime_agreement  the share of samples whose top class it gives as ONNX Runtime does,
                            on the same inputs; NaN when it cannot run the file
  second_runtime_error      why it cannot (the operators it failed to convert, or its first
                            message line); "" when it can

A file only one runtime runs says so here rather than failing a stage: ONNX Runtime's QOperator
int8 convolutions with per-channel scales, for one, are refused by OpenVINO's ONNX reader.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

SECOND_RUNTIME = "openvino"
_SHOWN_CHARS = 200  # of a runtime's error message


@functools.cache
def second_runtime() -> str:
    """"openvino <version>" when OpenVINO is installed, else ""."""
    try:
        import openvino
    except ImportError:
        return ""
    return f"{SECOND_RUNTIME} {openvino.__version__.split('-')[0]}"


@functools.cache
def _core():
    import openvino

    return openvino.Core()


def _reason(error: Exception) -> str:
    """The runtime's message in a line: the operators it failed on, or its last statement."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    failed = [line.removeprefix("-- ").split(" with a message")[0] for line in lines
              if line.startswith("-- ")]
    if failed:
        return f"cannot convert {', '.join(dict.fromkeys(failed))}"[:_SHOWN_CHARS]
    meaningful = [line for line in lines if not line.startswith(("Exception from", "Check "))]
    return (meaningful or lines or [type(error).__name__])[-1][:_SHOWN_CHARS]


def check(path: Path, x: np.ndarray, onnx_runtime_logits: np.ndarray, threads: int = 1
          ) -> dict[str, str | float]:
    """The module docstring's figures of the ONNX file at `path` on the inputs `x`, against ONNX
    Runtime's logits on them."""
    name = second_runtime()
    if not name:
        return {"second_runtime": "", "second_runtime_agreement": math.nan,
                "second_runtime_error": "no second runtime installed"}
    core = _core()
    try:
        compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                      {"INFERENCE_NUM_THREADS": threads})
        logits = np.asarray(compiled(np.ascontiguousarray(x, np.float32))[0])
    except Exception as error:  # the runtime's own errors have no common type
        return {"second_runtime": name, "second_runtime_agreement": math.nan,
                "second_runtime_error": _reason(error)}
    same = logits.argmax(axis=1) == onnx_runtime_logits.argmax(axis=1)
    return {"second_runtime": name, "second_runtime_agreement": float(same.mean()),
            "second_runtime_error": ""}

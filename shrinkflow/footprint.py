"""The memory a model takes when served: an ONNX Runtime session's peak resident memory.

Each file is opened in a fresh process, forked from a small process that has imported the
runtime once (and not torch), so nothing the measuring process allocated before counts. That
process resets its peak resident set (Linux's /proc/self/clear_refs), opens the session, runs a
batch of 1 and then one of 256 (`BATCHES`), and reads the peak after each: the growth over its
start is the memory serving that batch takes (weights, the runtime's arena, the batch and its
activations). The peak only grows, so the batch-256 figure holds the batch-1 one.

  memory_mb_b1     peak growth opening the session and running a batch of 1, in MB
  memory_mb_b256   the same once a batch of 256 has run too
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_STATUS = Path("/proc/self/status")
BATCHES = (1, 256)  # shrinkflow.measure's batch-1 and THROUGHPUT_BATCH


def floor_graph(kind: str, width: int, classes: int, path: Path) -> Path:
    """A float32 graph of input [N, width]: Identity, or MatMul by a width x classes weight: the
    runtime's floor, what a call (or a session) costs with nothing in it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])
    if kind == "identity":
        nodes, weights, out_width = [helper.make_node("Identity", ["x"], ["y"])], [], width
    else:
        weight = np.random.default_rng(0).normal(size=(width, classes)).astype(np.float32)
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        weights, out_width = [numpy_helper.from_array(weight, "w")], classes
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_width])
    model = helper.make_model(helper.make_graph(nodes, kind, [x], [y], weights),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the pinned ONNX Runtime reads (onnx's helper writes a newer one)
    onnx.save(model, str(path))
    return path


def _peak_kb() -> int:
    """The process's peak resident memory so far, in kB."""
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise OSError("/proc/self/status has no VmHWM line")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak to the current size


def _probe(path: str, input_shape: tuple[int, ...], threads: int) -> dict[str, float]:
    from shrinkflow.runtime import onnx_session

    _reset_peak()
    start = _peak_kb()
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    found = {}
    for batch in BATCHES:
        # a batch of real values: zeros would be pages the system never maps
        session.run(None, {name: np.full((batch, *input_shape), 0.5, np.float32)})
        found[f"memory_mb_b{batch}"] = (_peak_kb() - start) / 1024
    return found


# one interpreter imports the runtime once, then forks a child per file (the children share the
# imports, and their own allocations are all that is measured); a subprocess rather than
# multiprocessing, which would import the caller's main module again in it
_FORKING_PROBE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])  # where this package is
import onnxruntime
from shrinkflow.footprint import _probe
threads = int(sys.argv[2])
for path, shape in json.loads(sys.stdin.read()):
    shape = tuple(shape)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # whatever happens, the child leaves through os._exit: no cleanup of the parent's
        os.close(read)
        try:
            found = _probe(path, shape, threads)
        except BaseException as error:
            found = {"error": f"{type(error).__name__}: {error}"}
        os.write(write, json.dumps(found).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        found = answer.read()
    os.waitpid(child, 0)
    if not found or "error" in json.loads(found):
        sys.exit(f"{path}: {json.loads(found or '{}').get('error', 'the probe died')}")
    print(found, flush=True)
"""


def with_floor(paths: list[Path], input_shape: tuple[int, ...], threads: int = 1
               ) -> tuple[list[dict[str, float]], dict[str, float]]:
    """`session_memory` of `paths`, and the same figures for a one-node Identity graph of the
    input's width: what the runtime takes with no model in it (one probe for all)."""
    width = math.prod(input_shape)
    with tempfile.TemporaryDirectory(prefix="shrinkflow-floor-") as scratch:
        floor = floor_graph("identity", width, 1, Path(scratch) / "identity.onnx")
        *found, identity = _probe_all([*((path, input_shape) for path in paths),
                                       (floor, (width,))], threads)
    return found, identity


def session_memory(paths: list[Path], input_shape: tuple[int, ...], threads: int = 1
                   ) -> list[dict[str, float]]:
    """`memory_mb_b1` and `memory_mb_b256` of each ONNX file (float32 input of per-sample shape
    `input_shape`), each measured in a process of its own.

    Raises:
        RuntimeError: a file could not be opened or run, with the probe's own message.
    """
    return _probe_all([(path, input_shape) for path in paths], threads)


def _probe_all(files: list[tuple[Path, tuple[int, ...]]], threads: int) -> list[dict[str, float]]:
    if not files:
        return []
    package_root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(  # nosec B603: this interpreter, this package's code, file paths
        [sys.executable, "-c", _FORKING_PROBE, package_root, str(threads)],
        input=json.dumps([[str(path), list(shape)] for path, shape in files]),
        capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip()
                           else f"the memory probe exited with {done.returncode}")
    return [json.loads(line) for line in done.stdout.splitlines()]

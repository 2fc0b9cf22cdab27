"""Small helpers shared by the quantizers: loading ONNX files, saving lean ones, ORT
pre-processing, the list of weighted nodes that int8 quantization (and exclusion from it) is
about, and the sensitivity ranking the fallback keeps the most sensitive ones by."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

# nodes that hold weights: where int8 saves bytes and time, and what exclusion is about
WEIGHTED_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence onnxruntime.quantization: it prints progress and logs advice on the root logger
    (logging.disable is process-wide, so this is kept to the quantizer calls themselves)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """The ONNX model at `path`, or FileNotFoundError naming it."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    return onnx.load(str(path))


def opset_of(model: onnx.ModelProto) -> int:
    """The model's default-domain opset."""
    return next(opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx"))


def load_at_opset(path: str | Path, opset: int) -> onnx.ModelProto:
    """The ONNX model at `path`, converted to default-domain `opset` when it is on an older one."""
    from onnx import version_converter

    model = load_onnx(path)
    return version_converter.convert_version(model, opset) if opset_of(model) < opset else model


def sort_topologically(model: onnx.ModelProto) -> None:
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


def save_lean(model: onnx.ModelProto, dst: str | Path) -> Path:
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


def input_name(model: onnx.ModelProto) -> str:
    """The graph input fed with data (older exporters also list initializers as inputs)."""
    initializers = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in initializers)


def preprocess(src: str | Path, dst: Path) -> Path:
    """ORT's recommended step before quantizing: shape inference and graph fusions."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    load_onnx(src)  # fail early, naming the path
    with quiet():
        quant_pre_process(str(src), str(dst))
    return dst


def quantizable_nodes(path: str | Path) -> list[str]:
    """Names of the nodes holding weights (Conv, ConvTranspose, Gemm, MatMul), in graph order.

    These are what `exclude_nodes` and the exclude_sensitive fallback are about: the other
    quantized nodes (pooling, reshapes) just follow their neighbours' scales.
    """
    model = load_onnx(path)
    return [node.name for node in model.graph.node if node.op_type in WEIGHTED_OPS]


def rank_by_sensitivity(names: Sequence[str], logits_with: Callable[[str], np.ndarray],
                        reference: np.ndarray) -> list[tuple[str, float, float]]:
    """(name, disagreement, relative error) for each of `names`, most sensitive first, from
    `logits_with(name)`, the logits with only that part quantized, against the float `reference`
    logits on the same rows: first the share of rows whose top class changes (what the accuracy
    check will see), then mean((logits - reference)^2) / mean(reference^2), which orders the parts
    that change no top class. Label-free and deterministic: a ranking signal, not a metric."""
    power = float(np.mean(reference**2)) or 1.0
    top = reference.argmax(axis=1)
    scores = []
    for name in names:
        logits = logits_with(name)
        scores.append((name, float(np.mean(logits.argmax(axis=1) != top)),
                       float(np.mean((logits - reference) ** 2)) / power))
    # the name breaks ties so the order is reproducible
    return sorted(scores, key=lambda item: (-item[1], -item[2], item[0]))

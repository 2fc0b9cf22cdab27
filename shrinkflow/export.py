"""ONNX export and ONNX Runtime sessions.

Models are exported with torch's dynamo exporter (it needs onnxscript) with a dynamic batch axis, so
one file serves batch 1 and batch 256. ONNX is what gets registered and served: loading it executes
no pickled code, unlike a pickled torch module.

`torch.onnx.export` rebuilds its table of ATen-to-ONNX translations from torchlib on every call,
about half the time of exporting a small model; a run exports dozens of candidates, so the table is
built once per process and handed to the exporter's core, called as `torch.onnx.export(dynamo=True)`
calls it (torch is pinned; tests/core/test_export.py checks that the files are the same).
"""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from shrinkflow.measure import Predictor
from shrinkflow.runtime import onnx_session

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """Write `model` as ONNX to `path` (the caller picks a temporary path for atomic writes)."""
    from torch.onnx._internal.exporter import _core

    model = model.eval().cpu()
    example = torch.zeros(2, *input_shape)
    dynamic = ({0: torch.export.Dim("batch", min=1)},)
    # the exporter reports each pass and the absence of torchvision (unused here) on the
    # console; keep the pipeline's output readable
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        translations = _translations()
        program = _core.export(
            model, (example,), registry=translations, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, verbose=False,
            opset_version=translations.opset_version,
        )
        program._rename_dynamic_axes(dynamic)  # the file's batch axis is called "batch"
    program.save(str(path))
    model_proto = onnx.load(str(path))
    strip_metadata(model_proto)
    onnx.save(model_proto, str(path))
    return Path(path)


def adopt_onnx(source: Path, path: Path) -> Path:
    """A user's ONNX model written to `path` as the pipeline writes its own: its data input named
    `input` and its first output `logits` (any other output dropped), debugging metadata
    stripped; checked by the ONNX checker."""
    model = onnx.load(str(source))
    initializers = {tensor.name for tensor in model.graph.initializer}
    (data_input,) = [value for value in model.graph.input if value.name not in initializers]
    renamed = {data_input.name: INPUT_NAME, model.graph.output[0].name: OUTPUT_NAME}
    for node in model.graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    data_input.name = INPUT_NAME
    del model.graph.output[1:]
    model.graph.output[0].name = OUTPUT_NAME
    strip_metadata(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


@functools.cache
def _translations():
    """The exporter's ATen-to-ONNX table at its default opset, as `torch.onnx.export` builds it on
    every call."""
    from torch.onnx._constants import ONNX_DEFAULT_OPSET
    from torch.onnx._internal.exporter import _registration

    return _registration.ONNXRegistry.from_torchlib(opset_version=ONNX_DEFAULT_OPSET)


def strip_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop what only debugging needs: per-node provenance (exporter stack traces with local paths,
    which also cost more bytes than a small model's weights), doc strings, metadata and
    intermediate value_info. Inputs, outputs, initializers and node names stay."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]
    del model.graph.metadata_props[:]  # the exporter's program signature (~1 kB per graph)
    del model.metadata_props[:]
    model.graph.doc_string = ""
    model.doc_string = ""
    return model


def onnx_predictor(path: str | Path, threads: int = 1) -> Predictor:
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x.astype(np.float32, copy=False)})[0]

    return predict

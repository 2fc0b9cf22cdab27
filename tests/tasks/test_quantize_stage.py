"""Stage `quantize`: every candidate quantized, sparse ones stay sparse, every file recorded."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper

from shrinkflow.measure import file_size
from tasks.services import io
from tasks.services.candidates import read_manifest
from tasks.services.catalog import Catalog
from tasks.services.runner import run_stage
from tasks.stages.quantize import run_quantize

QUICK_QUANTIZE = ["prune.structured.enabled=false", "distill.enabled=false",
                  "quantize.methods=[fp16, int8_weights, ternary]"]


def test_quantize__makes_every_method_of_every_candidate_and_keeps_unstructured_sparse(
        trained_project):
    from shrinkflow.config import load_params
    from tests.conftest import TINY

    # given a baseline and its 80% unstructured-pruned candidate (stored sparse)
    project = trained_project
    params = load_params(project / "params.yaml", overrides=[*TINY, *QUICK_QUANTIZE])
    for stage in ("prune", "distill"):
        run_stage(stage, params, project)
    catalog = Catalog.at(project)
    # when both are quantized
    run_quantize(params, project)
    # then each gets each method, listed in the manifest
    folder = catalog.models_dir("quantize")
    names = [c.name for c in read_manifest(folder, "quantize")]
    assert names == ["baseline-fp32-fp16", "baseline-fp32-int8_weights", "baseline-fp32-ternary",
                     "unstructured-80-fp16", "unstructured-80-int8_weights",
                     "unstructured-80-ternary"]
    # and a ternary file stores its hidden weights as 2-bit codes
    ternary = onnx.load(str(folder / "baseline-fp32-ternary.onnx"))
    assert any(init.data_type == onnx.TensorProto.INT2 for init in ternary.graph.initializer)
    # and the int8 version of the sparse candidate stores its int8 weights sparse: smaller than
    # both its fp32 sparse source and the dense int8 baseline
    int8 = onnx.load(str(folder / "unstructured-80-int8_weights.onnx"))
    sparse_dtypes = {numpy_helper.to_array(t.values).dtype for t in int8.graph.sparse_initializer}
    assert np.dtype(np.int8) in sparse_dtypes, f"int8 weights should be stored sparse: {sparse_dtypes}"
    unstructured = catalog.models_dir("prune") / "unstructured-80" / "model.onnx"
    sizes = {"int8 sparse": file_size(folder / "unstructured-80-int8_weights.onnx"),
             "fp32 sparse": file_size(unstructured),
             "int8 dense": file_size(folder / "baseline-fp32-int8_weights.onnx")}
    assert sizes["int8 sparse"] < min(sizes["fp32 sparse"], sizes["int8 dense"]), f"sizes {sizes}"
    # and its recorded test accuracy is within two test rows (of 360) of its fp32 source's
    quantized = io.read_candidates(catalog, "quantize")["candidates"]
    pruned = io.read_candidates(catalog, "prune")["candidates"]
    int8_accuracy = quantized["unstructured-80-int8_weights"]["accuracy"]
    fp32_accuracy = pruned["unstructured-80"]["accuracy"]
    assert abs(int8_accuracy - fp32_accuracy) <= 2 / 360 + 1e-9, (
        f"int8 weights {int8_accuracy:.4f} vs fp32 {fp32_accuracy:.4f}")
    # and: the ternary files went through the fallback chain, each attempt recorded on
    # validation, and reports/quantize/metrics.json counts those no attempt brought within the drop
    ternaries = [quantized[name] for name in names if name.endswith("-ternary")]
    for record in ternaries:
        assert record["attempts"][0]["step"] == "initial" and record["attempts"][0]["method"] == "ternary"
        assert record["accepted"] == any(attempt["accepted"] for attempt in record["attempts"])
    assert io.read_metrics(catalog, "quantize") == {
        "candidates": 6, "beyond_drop": sum(not record["accepted"] for record in ternaries)}
    # and: metrics/quantize.json shows the count and the best on validation, not on test
    best = max(quantized.values(), key=lambda row: row["val_accuracy"])
    assert json.loads(catalog.metrics_file("quantize").read_text()) == {
        "candidates": 6, "val_accuracy": best["val_accuracy"], "accuracy": best["accuracy"]}

"""shrinkflow.quantize.graph: the ONNX helpers every quantizer shares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from shrinkflow import quantize as q


def test_quantizable_nodes_lists_weighted_nodes_in_graph_order(fp32: Path):
    model = onnx.load(str(fp32))
    expected = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert q.quantizable_nodes(fp32) == expected and len(expected) == 3, (
        f"expected the 2 convs and the Gemm, got {q.quantizable_nodes(fp32)}")


def test_a_missing_onnx_file_is_named_before_anything_is_written(tmp_path: Path):
    # given a path with no file; when a quantizer reads it; then the error names the path
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        q.to_int8_dynamic(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists(), "nothing should be written"


def test_a_part_that_changes_top_classes_ranks_before_a_larger_but_harmless_logit_error():
    from shrinkflow.quantize.graph import rank_by_sensitivity

    reference = np.array([[4.0, 0.0], [0.0, 4.0], [2.0, 1.9], [1.0, 3.0]])
    quantized = {
        "shifts_every_logit": reference + np.array([[0.9, 0.0]]),  # big error, no top class moves
        "flips_a_close_row": reference + np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.2], [0, 0]]),
        "exact": reference,
    }
    ranking = rank_by_sensitivity(sorted(quantized), quantized.__getitem__, reference)
    assert [name for name, *_ in ranking] == ["flips_a_close_row", "shifts_every_logit", "exact"]
    assert ranking[0][1] == 0.25 and ranking[1][1] == 0.0 and ranking[1][2] > ranking[0][2]

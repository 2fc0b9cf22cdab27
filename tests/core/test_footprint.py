"""The memory of an ONNX Runtime session: bigger weights and bigger batches must need more, each
file measured in a process of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from shrinkflow import footprint
from shrinkflow.measure import THROUGHPUT_BATCH

WIDE = 65_536  # a batch of 256 such rows is 64 MB of float32


def test_bigger_weights_and_a_bigger_batch_need_more_memory(tmp_path: Path):
    # given a MatMul with 16 MB of weights over wide rows, and an Identity of narrow ones
    heavy = footprint.floor_graph("matmul", WIDE, 64, tmp_path / "heavy.onnx")
    light = footprint.floor_graph("identity", 16, 1, tmp_path / "light.onnx")
    # when each is measured
    (wide,) = footprint.session_memory([heavy], (WIDE,))
    (narrow,) = footprint.session_memory([light], (16,))
    # then the weights show at batch 1, and 256 wide rows add tens of MB more
    assert wide["memory_mb_b1"] > narrow["memory_mb_b1"] + 12
    assert wide["memory_mb_b256"] > wide["memory_mb_b1"] + 40
    assert narrow["memory_mb_b256"] >= narrow["memory_mb_b1"] > 0


def test_the_floor_is_an_identity_graph_of_the_inputs_width(tmp_path: Path):
    heavy = footprint.floor_graph("matmul", 64, 10, tmp_path / "heavy.onnx")
    (found,), floor = footprint.with_floor([heavy], (64,))
    assert set(floor) == set(found) == {"memory_mb_b1", "memory_mb_b256"}
    assert 0 < floor["memory_mb_b1"] <= floor["memory_mb_b256"]
    assert footprint.BATCHES == (1, THROUGHPUT_BATCH)


def test_a_file_the_runtime_cannot_open_is_named(tmp_path: Path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(RuntimeError, match="broken.onnx"):
        footprint.session_memory([broken], (4,))

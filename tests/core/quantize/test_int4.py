"""shrinkflow.quantize's 4-bit weight-only files, against numpy references: the blocks, their
packing, and the model the file computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from shrinkflow import quantize as q
from shrinkflow.export import export_onnx, onnx_predictor
from shrinkflow.measure import count_onnx_params, file_size
from shrinkflow.quantize.convert import block_for, int4_blockwise, int4_expand, weight_names
from tests.core.quantize.conftest import assert_runs_like_fp32

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("width, block", [(27, 27), (64, 64), (144, 48), (288, 48), (576, 64),
                                          (131, 64)])
def test_a_channel_is_split_in_blocks_without_padding_when_it_can_be(width, block):
    assert block_for(width, 64) == block


@pytest.mark.parametrize("shape, axis", [((16, 8, 3, 3), 0), ((100, 10), 1), ((10, 131), 0)])
def test_blocks_hold_values_within_7_and_expand_within_half_a_step(shape, axis):
    weight = RNG.normal(size=shape).astype(np.float32)
    values, scale = int4_blockwise(weight, axis, 64)
    assert values.dtype == np.int8 and np.abs(values).max() == 7 and scale.dtype == np.float16
    expanded = int4_expand(values, scale, shape, axis)
    assert expanded.shape == shape
    # each weight is within half a quantization step of its block (float16 scales round a little)
    rows = np.moveaxis(weight, axis, 0).reshape(shape[axis], -1)
    step = np.repeat(scale.astype(np.float32)[:, :, 0], values.shape[2], axis=1)[:, :rows.shape[1]]
    error = np.abs(np.moveaxis(expanded, axis, 0).reshape(shape[axis], -1) - rows)
    assert np.all(error <= 0.5 * step * 1.01 + 1e-6)


class TwoLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.head = torch.nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def test_the_file_computes_with_the_numpy_reference_weights(tmp_path: Path):
    # given a float model and its 4-bit file
    torch.manual_seed(0)
    model = TwoLayers().eval()
    fp32 = export_onnx(model, (1, 8, 8), tmp_path / "fp32.onnx")
    int4 = q.to_int4_weights(fp32, tmp_path / "int4.onnx")
    # when the float model gets the weights the numpy reference expands from the same blocks
    with torch.no_grad():
        for layer, axis in ((model.conv, 0), (model.head, 0)):
            weight = layer.weight.numpy()
            layer.weight.copy_(torch.from_numpy(int4_expand(*int4_blockwise(weight, axis, 64),
                                                            weight.shape, axis)))
    x = RNG.normal(size=(32, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    # then the file computes the same logits
    np.testing.assert_allclose(onnx_predictor(int4)(x), expected, rtol=1e-4, atol=1e-4)
    # and it stores packed INT4 (two to a byte) and float16 scales, no float weight
    stored = onnx.load(str(int4)).graph.initializer
    packed = [init for init in stored if init.data_type == onnx.TensorProto.INT4]
    assert len(packed) == 2
    assert all(len(init.raw_data) == -(-int(np.prod(init.dims)) // 2) for init in packed)
    floats = [numpy_helper.to_array(init) for init in stored if init.data_type == onnx.TensorProto.FLOAT]
    assert sum(array.size for array in floats) <= 10 + 16  # the two biases
    # and the packed weights count as parameters
    assert count_onnx_params(int4)[0] >= sum(p.numel() for p in model.parameters())


def test_big_weights_shrink_about_twice_from_int8_weights(tmp_path: Path):
    # given an MLP whose file is mostly weights
    mlp = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    fp32 = export_onnx(mlp.eval(), (256,), tmp_path / "fp32.onnx")
    int8 = q.to_int8_weights(fp32, tmp_path / "int8.onnx")
    int4 = q.to_int4_weights(fp32, tmp_path / "int4.onnx")
    assert file_size(int8) / file_size(int4) >= 1.8


def test_the_packaged_cnn_runs_like_fp32(fp32, workdir, splits):
    assert_runs_like_fp32(q.to_int4_weights(fp32, workdir / "int4.onnx"), fp32, splits.test.x)


def test_the_weight_with_outliers_ranks_first_and_stays_int8_when_kept(tmp_path: Path):
    # given a model whose head holds a few outliers: 4-bit blocks scaled to them zero the rest
    torch.manual_seed(0)
    model = TwoLayers().eval()
    with torch.no_grad():
        model.head.weight[:, ::97] *= 40.0
    fp32 = export_onnx(model, (1, 8, 8), tmp_path / "fp32.onnx")
    x = np.random.default_rng(0).normal(size=(64, 1, 8, 8)).astype(np.float32)
    names = weight_names(fp32)
    ranking = q.int4_sensitivity(fp32, x, tmp_path)
    head = next(name for name in names if "head" in name)
    assert sorted(ranking) == names and ranking[0] == head, ranking
    # when the head is kept at 8 bits, it is stored int8 and the conv INT4, and it answers closer
    mixed = q.to_int4_weights(fp32, tmp_path / "mixed.onnx", keep_int8=[head])
    types = {init.name: init.data_type for init in onnx.load(str(mixed)).graph.initializer}
    assert types[f"{head}_int8"] == onnx.TensorProto.INT8 and f"{head}_int4" not in types
    assert sum(t == onnx.TensorProto.INT4 for t in types.values()) == 1
    reference = onnx_predictor(fp32)(x)
    error = {path: np.abs(onnx_predictor(path)(x) - reference).mean()
             for path in (mixed, q.to_int4_weights(fp32, tmp_path / "all.onnx"))}
    assert error[mixed] < error[tmp_path / "all.onnx"] / 2, error

"""Ternary and binary weights against numpy references: the values, the straight-through
training that leaves them in place, and the 2-bit file that computes with them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from shrinkflow import quantize as q
from shrinkflow.export import export_onnx, onnx_predictor
from shrinkflow.measure import file_size
from shrinkflow.quantize.convert import (
    INT4_BLOCK,
    block_for,
    int4_blockwise,
    int4_expand,
    on_int4_grid,
)
from shrinkflow.quantize.ternary import (
    THRESHOLD,
    hidden_layers,
    int4_values,
    ternarize,
    ternary_codes,
)


def _reference(weight: np.ndarray, binary: bool) -> np.ndarray:
    """TWN's rule in numpy, channel by channel."""
    out = np.zeros_like(weight)
    for channel, row in enumerate(weight.reshape(len(weight), -1)):
        keep = np.ones_like(row, bool) if binary else np.abs(row) > THRESHOLD * np.abs(row).mean()
        out[channel] = (np.sign(row) * keep * np.abs(row[keep]).mean()).reshape(weight.shape[1:])
    return out


@pytest.mark.parametrize("binary", [False, True])
def test_ternarize_matches_the_numpy_reference(binary: bool):
    weight = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    values = ternarize(weight, binary).numpy()
    np.testing.assert_allclose(values, _reference(weight.numpy(), binary), rtol=1e-6)
    per_channel = [set(np.unique(np.abs(row))) for row in values.reshape(8, -1)]
    assert all(len(levels - {0.0}) == 1 for levels in per_channel)
    assert all((0.0 in levels) != binary for levels in per_channel)


def test_codes_are_found_only_in_weights_of_at_most_three_values_per_channel():
    weight = ternarize(torch.randn(6, 10)).numpy()
    codes, scale = ternary_codes(weight, 0)
    assert set(np.unique(codes)) <= {-1, 0, 1}
    np.testing.assert_allclose(codes * scale.astype(np.float32), weight, rtol=1e-3)
    assert ternary_codes(np.random.default_rng(0).normal(size=(6, 10)).astype(np.float32), 0) is None


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.hidden = torch.nn.Conv2d(8, 64, 3, padding=1)
        self.more = torch.nn.Conv2d(64, 64, 3, padding=1)
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.more(torch.relu(self.hidden(torch.relu(self.first(x))))))
        return self.head(x.mean(dim=(2, 3)))


def test_the_2_bit_file_computes_with_the_ternary_weights_and_shrinks(tmp_path: Path):
    # given a network whose hidden layers hold ternary values (first and last as they are)
    torch.manual_seed(0)
    model = Net().eval()
    assert hidden_layers(model) == {"hidden": model.hidden, "more": model.more}
    with torch.no_grad():
        for layer in hidden_layers(model).values():
            layer.weight.copy_(ternarize(layer.weight))
    fp32 = export_onnx(model, (1, 8, 8), tmp_path / "fp32.onnx")
    # when stored in 2 bits
    ternary = q.to_ternary_weights(fp32, tmp_path / "ternary.onnx")
    # then it computes the same logits, from packed INT2 codes (four to a byte)
    x = np.random.default_rng(0).normal(size=(16, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(onnx_predictor(ternary)(x), onnx_predictor(fp32)(x), atol=2e-3)
    packed = [init for init in onnx.load(str(ternary)).graph.initializer
              if init.data_type == onnx.TensorProto.INT2]
    assert len(packed) == 2
    assert all(len(init.raw_data) == -(-int(np.prod(init.dims)) // 4) for init in packed)
    # and is far smaller than the int8 weight-only file of the same network
    int8 = q.to_int8_weights(fp32, tmp_path / "int8.onnx")
    assert file_size(int8) / file_size(ternary) >= 1.8


@pytest.mark.parametrize("binary", [False, True])
def test_training_leaves_ternary_hidden_weights_the_file_computes_with(trained, splits, workdir,
                                                                        binary):
    from shrinkflow.config import TrainConfig

    tuned = q.low_bit_training(trained, splits.train, splits.val,
                               TrainConfig(epochs=2, lr=3e-4, patience=2), binary=binary)
    for layer in hidden_layers(tuned).values():
        levels = [set(np.unique(np.abs(row))) for row in layer.weight.detach().numpy().reshape(
            layer.weight.shape[0], -1)]
        assert all(len(level - {0.0}) <= 1 for level in levels)
    assert not any(torch.nn.utils.parametrize.is_parametrized(layer) for layer in tuned.modules())
    path = q.to_ternary_weights(export_onnx(tuned, (1, 8, 8), workdir / f"t-{binary}.onnx"),
                                workdir / f"ternary-{binary}.onnx")
    # the 2-bit file (its first and last layers as int8 weights) answers as the trained model
    # does, and still classifies digits
    with torch.no_grad():
        expected = tuned.eval()(torch.from_numpy(splits.test.x)).numpy()
    logits = onnx_predictor(path)(splits.test.x)
    assert (logits.argmax(1) == expected.argmax(1)).mean() >= 0.97
    assert (logits.argmax(1) == splits.test.y).mean() > 0.85


def test_sensitivity_ranks_every_hidden_layer_and_a_kept_one_trains_to_4_bits(trained, splits,
                                                                               workdir):
    from shrinkflow.config import TrainConfig

    ranking = q.ternary_sensitivity(trained, splits.train.x[:128])
    assert sorted(ranking) == sorted(hidden_layers(trained)) and ranking
    kept = ranking[0]
    tuned = q.low_bit_training(trained, splits.train, splits.val,
                               TrainConfig(epochs=1, lr=3e-4, patience=1), keep=[kept])
    for name, layer in hidden_layers(tuned).items():
        weight = layer.weight.detach()
        levels = {len(set(np.unique(np.abs(row))) - {0.0})
                  for row in weight.numpy().reshape(weight.shape[0], -1)}
        assert (max(levels) > 1) == (name == kept), (name, levels)
        assert torch.equal(int4_values(weight), weight) == (name == kept), name
    # the file stores the kept layer as INT4 blocks, the others in INT2, and answers as the model
    path = q.to_ternary_weights(export_onnx(tuned, (1, 8, 8), workdir / "kept.onnx"),
                                workdir / "kept-ternary.onnx")
    types = {init.name: init.data_type for init in onnx.load(str(path)).graph.initializer}
    assert types[f"{kept}.weight_int4"] == onnx.TensorProto.INT4
    assert sum(t == onnx.TensorProto.INT2 for t in types.values()) == len(ranking) - 1
    with torch.no_grad():
        expected = tuned.eval()(torch.from_numpy(splits.test.x)).numpy()
    assert (onnx_predictor(path)(splits.test.x).argmax(1) == expected.argmax(1)).mean() >= 0.97


def test_4_bit_training_values_match_the_stored_blocks():
    # a width of 72 weights per channel: blocks of 36, no padding; 67: blocks of 64, padded
    for shape in ((8, 8, 3, 3), (6, 67)):
        weight = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        values = int4_values(weight).numpy()
        width = int(np.prod(shape[1:]))
        blocks, scale = int4_blockwise(weight.numpy(), 0, block_for(width, INT4_BLOCK))
        np.testing.assert_allclose(values, int4_expand(blocks, scale, shape, 0), rtol=1e-6)
        assert on_int4_grid(values, 0) and not on_int4_grid(weight.numpy(), 0)

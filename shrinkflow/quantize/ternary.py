"""Ternary and binary weights: trained through a straight-through estimator, stored in 2 bits.

Each hidden Conv/Linear weight becomes, per output channel, {-a, 0, +a} (ternary; Li & Liu 2016,
Ternary Weight Networks) or {-a, +a} (binary, the extreme setting of the same method):
  ternary  weights with |w| <= 0.7 * mean|w| become 0, the others +-a, a the mean |w| over them
           (the least-squares scale for that support)
  binary   every weight becomes +-a, a = mean|w|
The network's first weighted layer and its classifier stay as they are (as Trained Ternary
Quantization keeps them): they hold few weights and most of the accuracy a few bits would cost.
The accuracy-aware fallback may keep hidden layers out of 2 bits too (`keep`, ranked by
`ternary_sensitivity`): those train to 4-bit values instead, one step up in precision.

`low_bit_training` fine-tunes a torch model with its hidden weights replaced by their ternary (or
binary, or kept layers' 4-bit) values in the forward pass while the float weights learn through
the straight-through gradient (`torch.nn.utils.parametrize`), then leaves those values in place.
`to_ternary_weights` stores every weight at the fewest bits that hold it exactly: at most three
values per channel as packed ONNX INT2 codes (four to a byte) and a float16 scale per channel,
4-bit values as `to_int4_weights` stores them, the remaining float weights as int8 weights; all
expanded when the session loads (opset 25).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from shrinkflow.config import TrainConfig
from shrinkflow.data import Augmenter, Split
from shrinkflow.quantize.convert import (
    INT4_BLOCK,
    int4_round_trip,
    on_int4_grid,
    packed,
    replace_weights,
    store_weights_int4,
    store_weights_int8,
)
from shrinkflow.quantize.graph import WEIGHTED_OPS, load_at_opset, rank_by_sensitivity, save_lean
from shrinkflow.train import EpochLog, fit

THRESHOLD = 0.7  # of mean|w|: at or below it a ternary weight is 0 (TWN's rule)
INT2_OPSET = 25  # INT2 tensors and their Cast
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)


def ternarize(weight: torch.Tensor, binary: bool = False) -> torch.Tensor:
    """`weight`'s ternary (or binary) values per output channel (axis 0); see the module
    docstring."""
    flat = weight.flatten(1)
    magnitude = flat.abs()
    if binary:
        keep = torch.ones_like(flat, dtype=torch.bool)
    else:
        keep = magnitude > THRESHOLD * magnitude.mean(dim=1, keepdim=True)
    kept = keep.sum(dim=1, keepdim=True).clamp_min(1)
    scale = (magnitude * keep).sum(dim=1, keepdim=True) / kept
    return (torch.sign(flat) * keep * scale).view_as(weight)


def int4_values(weight: torch.Tensor, block_size: int = INT4_BLOCK) -> torch.Tensor:
    """`weight`'s 4-bit values, exactly as the file stores them (`int4_round_trip` along the
    output channels, axis 0). No gradient flows through them: the straight-through estimator
    takes the float weight's."""
    array = weight.detach().cpu().numpy()
    return torch.from_numpy(int4_round_trip(array, 0, block_size)).to(weight)


class _StraightThrough(nn.Module):
    """The low-bit values forward, the float weight's gradient backward."""

    def __init__(self, values: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.values = values

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.values(weight) - weight).detach()


def hidden_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The weighted layers but the first and the last by name, in the order `model` registers
    them."""
    weighted = [(name, module) for name, module in model.named_modules()
                if isinstance(module, _WEIGHTED)]
    return dict(weighted[1:-1])


def low_bit_training(model: nn.Module, train: Split, val: Split, cfg: TrainConfig,
                     augment: Augmenter | None = None, binary: bool = False,
                     on_epoch_end: Callable[[EpochLog], None] | None = None,
                     keep: Collection[str] = ()) -> nn.Module:
    """A copy of `model` whose hidden layers' weights are ternary (binary) values, those named in
    `keep` 4-bit values (`int4_values`), fine-tuned for `cfg.epochs` through the
    straight-through estimator (early stopping on validation as every fit)."""
    import copy

    tuned = copy.deepcopy(model)
    layers = {layer: int4_values if name in keep else partial(ternarize, binary=binary)
              for name, layer in hidden_layers(tuned).items()}
    for layer, values in layers.items():
        parametrize.register_parametrization(layer, "weight", _StraightThrough(values))
    fit(tuned, train, val, cfg, augment, on_epoch_end=on_epoch_end,
        description="binary" if binary else "ternary")
    for layer, values in layers.items():  # the float weights back, then their exact values
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        with torch.no_grad():
            layer.weight.copy_(values(layer.weight))
    return tuned


def ternary_sensitivity(model: nn.Module, x: np.ndarray, binary: bool = False) -> list[str]:
    """`model`'s hidden layers (`hidden_layers`), most sensitive to 2 bits first: ranked on rows
    `x` with only that layer's weights ternary (binary) values, before any training
    (`rank_by_sensitivity`)."""
    import copy

    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def logits(net: nn.Module) -> np.ndarray:
        with torch.no_grad():
            return net.eval()(inputs).numpy()

    def logits_with(name: str) -> np.ndarray:
        single = copy.deepcopy(model)
        layer = single.get_submodule(name)
        with torch.no_grad():
            layer.weight.copy_(ternarize(layer.weight, binary))
        return logits(single)

    return [name for name, *_ in rank_by_sensitivity(list(hidden_layers(model)), logits_with,
                                                     logits(model))]


def ternary_codes(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(codes in {-1, 0, 1} as int8, float16 scale per channel shaped to broadcast) when each
    channel along `axis` of `weight` holds only 0 and +-a, else None."""
    rows = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    scale = np.abs(rows).max(axis=1, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    codes = np.round(rows / scale)
    if not np.allclose(codes * scale, rows, rtol=1e-3, atol=1e-6):
        return None
    shape = [-1 if dim == axis else 1 for dim in range(weight.ndim)]
    moved = np.moveaxis(codes.reshape([weight.shape[axis], *np.delete(weight.shape, axis)]), 0,
                        axis)
    return moved.astype(np.int8), scale.reshape(shape).astype(np.float16)


def to_ternary_weights(src: str | Path, dst: str | Path) -> Path:
    """Store the ternary (or binary) weights of the float ONNX file `src` (made from
    `low_bit_training`'s model) as INT2 codes and per-channel scales, its 4-bit weights as INT4
    blocks, the other weights as int8 weights; see the module docstring."""
    from onnx import TensorProto, helper, numpy_helper

    def expand(name: str, weight: np.ndarray, axis: int) -> tuple[list, list] | None:
        found = ternary_codes(weight, axis)
        if found is None:
            return None
        codes, scale = found
        return ([packed(f"{name}_int2", codes, 2), numpy_helper.from_array(scale, f"{name}_scale")],
                [helper.make_node("Cast", [f"{name}_int2"], [f"{name}_codes"], to=TensorProto.FLOAT),
                 helper.make_node("Cast", [f"{name}_scale"], [f"{name}_scales"],
                                  to=TensorProto.FLOAT),
                 helper.make_node("Mul", [f"{name}_codes", f"{name}_scales"], [name])])

    model = load_at_opset(src, INT2_OPSET)
    replace_weights(model, WEIGHTED_OPS, expand)
    store_weights_int4(model, WEIGHTED_OPS, INT4_BLOCK,
                       lambda _, weight, axis: on_int4_grid(weight, axis))
    store_weights_int8(model, WEIGHTED_OPS)
    return save_lean(model, dst)


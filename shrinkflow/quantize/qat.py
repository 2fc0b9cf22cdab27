"""Quantization-aware training: fake quantization (straight-through estimator) that mimics ORT's
int8 static rounding, wrapping and unwrapping a torch model, the fine-tuning settings and the
float32 ONNX export that `to_int8_static` then quantizes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from shrinkflow.config import QuantizeConfig, TrainConfig
from shrinkflow.data import Augmenter, Split
from shrinkflow.train import EpochLog, fit

# torch modules whose weights become the int8 Conv / Gemm weights of the exported model
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """Round to symmetric int8 per output channel (axis 0), as ORT quantizes weights:
    scale = max|w| / 127, values in [-127, 127]. The gradient passes straight through."""
    absmax = weight.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-12)
    scale = (absmax / 127.0).view(-1, *([1] * (weight.ndim - 1)))
    quantized = torch.clamp(torch.round(weight / scale), -127, 127) * scale
    return weight + (quantized - weight).detach()


def fake_quantize_activation(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Round to asymmetric uint8 over [low, high] per tensor, as ORT quantizes activations.

    The straight-through gradient is 1 inside the range and 0 where the value was clipped.
    """
    low, high = low.clamp(max=0.0), high.clamp(min=0.0)  # zero must be exact (padding, ReLU)
    scale = ((high - low) / 255.0).clamp_min(1e-12)
    zero_point = torch.clamp(torch.round(-low / scale), 0, 255)
    codes = torch.clamp(torch.round(x / scale) + zero_point, 0, 255)
    quantized = (codes - zero_point) * scale
    clipped = torch.clamp(x, (0 - zero_point) * scale, (255 - zero_point) * scale)
    return clipped + (quantized - clipped).detach()


class ActivationFakeQuant(nn.Module):
    """Fake-quantizes a tensor over a range tracked with an exponential moving average of each
    training batch's min and max (frozen in eval mode). Buffers, so fit's best-state restore
    and state_dict carry them."""

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                low, high = x.min().float(), x.max().float()
                if not self.observed:
                    self.low.copy_(low)
                    self.high.copy_(high)
                    self.observed.fill_(True)
                else:
                    self.low.lerp_(low, self.momentum)
                    self.high.lerp_(high, self.momentum)
        if not self.observed:
            return x
        return fake_quantize_activation(x, self.low, self.high)


class _QuantInput(nn.Module):
    """Conv/Linear computed with a fake-quantized weight on a fake-quantized input."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.act = ActivationFakeQuant()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        # the module runs with its weight swapped for the rounded one; gradients reach the
        # float weight through the straight-through estimator
        weight = fake_quantize_weight(self.module.weight)
        return functional_call(self.module, {"weight": weight}, (self.act(x),))


class _QuantOutput(nn.Module):
    """ReLU whose output is fake-quantized: ORT quantizes a Conv+ReLU at the ReLU's output."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.act = ActivationFakeQuant()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.module(x))


def prepare_qat(model: nn.Module) -> nn.Module:
    """A copy of `model` with fake quantization on Conv/Linear weights (per-channel symmetric
    int8), on their inputs and on ReLU outputs (per-tensor uint8, EMA ranges).

    BatchNorm stays separate: ORT folds it into the conv, which scales each output channel by a
    constant, and per-channel symmetric quantization is unchanged by such a scaling.
    """
    qat = copy.deepcopy(model)

    def wrap(module: nn.Module) -> None:
        for name, child in list(module.named_children()):
            if isinstance(child, _WEIGHTED):
                setattr(module, name, _QuantInput(child))
            elif isinstance(child, nn.ReLU):
                setattr(module, name, _QuantOutput(child))
            else:
                wrap(child)

    wrap(qat)
    return qat


def strip_fake_quant(model: nn.Module) -> nn.Module:
    """The plain model again (same class and state_dict keys as before `prepare_qat`), in eval
    mode, with weights snapped to their int8 grid, so `to_int8_static` reproduces them."""
    plain = copy.deepcopy(model)

    def unwrap(module: nn.Module) -> None:
        for name, child in list(module.named_children()):
            if isinstance(child, (_QuantInput, _QuantOutput)):
                inner = child.module
                if isinstance(child, _QuantInput):
                    with torch.no_grad():
                        inner.weight.copy_(fake_quantize_weight(inner.weight))
                setattr(module, name, inner)
            else:
                unwrap(child)

    unwrap(plain)
    return plain.eval()


def fine_tune_config(train_cfg: TrainConfig, epochs: int) -> TrainConfig:
    """Fine-tuning settings of an already trained model: `epochs` epochs at a tenth of the
    learning rate (a full rate would undo the training), no early stop before the end."""
    return train_cfg.model_copy(update={"epochs": epochs, "lr": train_cfg.lr / 10,
                                        "patience": max(train_cfg.patience, epochs)})


def qat_train_config(train_cfg: TrainConfig, cfg: QuantizeConfig) -> TrainConfig:
    """Fine-tuning settings for QAT: `fine_tune_config` for `quantize.qat_epochs`."""
    return fine_tune_config(train_cfg, cfg.qat_epochs)


def quantization_aware_training(
    model: nn.Module,
    train: Split,
    val: Split,
    train_cfg: TrainConfig,
    augment: Augmenter | None = None,
    on_epoch_end: Callable[[EpochLog], None] | None = None,
    progress: bool = False,
) -> nn.Module:
    """Fine-tune a fake-quantized copy of `model` with `shrinkflow.train.fit`; `model` is left as
    it was. The result keeps its fake quantization (its accuracy is the int8 estimate); pass
    it to `export_qat_onnx`, then `to_int8_static` with minmax calibration (the statistic the
    EMA ranges tracked). Use `qat_train_config` for `train_cfg`."""
    qat = prepare_qat(model)
    fit(qat, train, val, train_cfg, augment=augment, on_epoch_end=on_epoch_end,
        progress=progress, description="quantization-aware training")
    return qat


def export_qat_onnx(qat_model: nn.Module, input_shape: tuple[int, ...], dst: str | Path) -> Path:
    """The QAT model's float weights (on the int8 grid) as a float32 ONNX file."""
    from shrinkflow.export import export_onnx

    return export_onnx(strip_fake_quant(qat_model), input_shape, dst)

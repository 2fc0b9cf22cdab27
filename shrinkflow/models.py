"""Model families: an MLP for tables and a CNN for images (2-D) and signals (1-D).

Keys read from `baseline.model`:
  family            auto | mlp | cnn (auto: cnn for images and signals, mlp for tables)
  depth             hidden layers (mlp) or conv blocks (cnn)
  width             units of each hidden layer (mlp) or channels of the first conv block (cnn)
  width_multiplier  cnn: channels grow by this factor per block (32, 64, 128, ...)
  kernel_size       cnn kernel size
  dropout           dropout before the classifier

An architecture is described by an `Architecture`: explicit per-layer widths rather than
(depth, width), so a model whose channels were removed by structured pruning is described, saved
and rebuilt the same way as a freshly built one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from shrinkflow.config import ModelConfig

Family = Literal["mlp", "cnn"]


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild a model before loading its state_dict."""

    family: Family
    input_shape: tuple[int, ...]  # per-sample, e.g. (1, 8, 8), (1, 40) or (30,)
    n_classes: int
    widths: tuple[int, ...]  # units per hidden layer (mlp) or channels per conv block (cnn)
    kernel_size: int = 3
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        fields = dict(data)
        fields["input_shape"] = tuple(fields["input_shape"])
        fields["widths"] = tuple(fields["widths"])
        return cls(**fields)


def architecture_for(
    cfg: ModelConfig, kind: str, input_shape: tuple[int, ...], n_classes: int
) -> Architecture:
    """Resolve `baseline.model` against the data: family and per-layer widths."""
    family: Family = ("mlp" if kind == "tabular" else "cnn") if cfg.family == "auto" else cfg.family
    if family == "cnn" and kind == "tabular":
        raise ValueError("baseline.model.family 'cnn' needs image or signal data, got a table")
    if family == "mlp":
        widths = tuple(cfg.width for _ in range(cfg.depth))
    else:
        widths = tuple(max(1, round(cfg.width * cfg.width_multiplier**i)) for i in range(cfg.depth))
    return Architecture(family, tuple(input_shape), n_classes, widths, cfg.kernel_size, cfg.dropout)


class MLP(nn.Module):
    """Flatten -> [Linear -> BatchNorm -> ReLU] x depth -> Dropout -> Linear."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        in_features = int(torch.tensor(arch.input_shape).prod())
        for width in arch.widths:
            layers += [nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU()]
            in_features = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(arch.dropout), nn.Linear(in_features, arch.n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class CNN(nn.Module):
    """[Conv -> BatchNorm -> ReLU -> MaxPool] x depth -> global average pool -> Dropout -> Linear.

    Works on 1-D signals (N, C, L) and 2-D images (N, C, H, W). Pooling halves the spatial size
    after each block while it is larger than 2, so deep models still fit small inputs (8x8).
    """

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        dims = len(arch.input_shape) - 1
        if dims not in (1, 2):
            raise ValueError(f"cnn needs (C, L) or (C, H, W) inputs, got shape {arch.input_shape}")
        conv, norm, pool = (
            (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d) if dims == 1
            else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)
        )
        in_channels, size = arch.input_shape[0], min(arch.input_shape[1:])
        blocks: list[nn.Module] = []
        for width in arch.widths:
            blocks += [
                conv(in_channels, width, arch.kernel_size, padding=arch.kernel_size // 2, bias=False),
                norm(width),
                nn.ReLU(),
            ]
            if size > 2:
                blocks.append(pool(2))
                size //= 2
            in_channels = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(arch.dropout), nn.Linear(in_channels, arch.n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def build_model(arch: Architecture) -> nn.Module:
    return MLP(arch) if arch.family == "mlp" else CNN(arch)


def load_model(arch: Architecture, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild from an architecture and a state_dict (loaded with weights_only=True by the caller)."""
    model = build_model(arch)
    model.load_state_dict(state_dict)
    return model.eval()

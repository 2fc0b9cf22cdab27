"""Model families: an MLP for tables and a CNN for images (2-D) and signals (1-D); or a team's own
class, or a torchvision network (`shrinkflow.user_models`).

Keys read from `baseline.model`:
  family            auto | mlp | cnn | custom | torchvision (auto: cnn for images and signals,
                    mlp for tables)
  depth             hidden layers (mlp) or conv blocks (cnn)
  width             units of each hidden layer (mlp) or channels of the first conv block (cnn)
  width_multiplier  cnn: channels grow by this factor per block (32, 64, 128, ...)
  kernel_size       cnn kernel size
  dropout           dropout before the classifier
  class_path, init_args   custom: the class and its keyword arguments
  arch              torchvision: the network's name

An architecture is described by an `Architecture`: explicit per-layer widths rather than
(depth, width), so a model whose channels were removed by structured pruning is described, saved
and rebuilt the same way as a freshly built one; a custom or torchvision network records what
pruning changed in its layers instead (`resized`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from shrinkflow import user_models
from shrinkflow.config import BaselineConfig, ModelConfig

Family = Literal["mlp", "cnn", "custom", "torchvision"]
BUILTIN: tuple[Family, ...] = ("mlp", "cnn")


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild a model before loading its state_dict."""

    family: Family
    input_shape: tuple[int, ...]  # per-sample, e.g. (1, 8, 8), (1, 40) or (30,)
    n_classes: int
    widths: tuple[int, ...] = ()  # units per hidden layer (mlp) or channels per conv block (cnn)
    kernel_size: int = 3
    dropout: float = 0.0
    class_path: str | None = None  # custom
    init_args: dict[str, Any] = field(default_factory=dict)  # custom
    arch: str | None = None  # torchvision
    resized: dict[str, dict[str, Any]] = field(default_factory=dict)  # custom, torchvision:
    # the layer attributes structured pruning changed (user_models.resized_attributes)

    @property
    def is_builtin(self) -> bool:
        return self.family in BUILTIN

    def describe(self) -> str:
        """e.g. "cnn (16, 32)", "tests.nets:ResidualNet", "torchvision resnet18"."""
        if self.family == "custom":
            return str(self.class_path)
        if self.family == "torchvision":
            return f"torchvision {self.arch}"
        return f"{self.family} {self.widths}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        fields = dict(data)
        fields["input_shape"] = tuple(fields["input_shape"])
        fields["widths"] = tuple(fields.get("widths", ()))
        return cls(**fields)


def architecture_for(
    cfg: ModelConfig, kind: str, input_shape: tuple[int, ...], n_classes: int
) -> Architecture:
    """Resolve `baseline.model` against the data: family and per-layer widths."""
    if not cfg.is_builtin:
        return Architecture(cfg.family, tuple(input_shape), n_classes, class_path=cfg.class_path,
                            init_args=dict(cfg.init_args), arch=cfg.arch)
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


def build_model(arch: Architecture, key: str = "baseline.model") -> nn.Module:
    """A freshly initialised model of `arch` (before any pruning it records); errors in a
    custom or torchvision network's settings name `key`."""
    if arch.family == "mlp":
        return MLP(arch)
    if arch.family == "cnn":
        return CNN(arch)
    if arch.family == "custom":
        return user_models.build_custom(arch.class_path or "", arch.init_args, key)
    return user_models.build_torchvision(arch.arch or "", arch.input_shape, arch.n_classes,
                                         f"{key}.arch")


def build_for_data(cfg: ModelConfig, kind: str, input_shape: tuple[int, ...], n_classes: int,
                   key: str = "baseline.model") -> tuple[Architecture, nn.Module]:
    """`cfg` resolved against the data and built; a custom or torchvision network is also run
    on a batch of the data's inputs, so a misfit is told (naming `key`) before any training.
    Initialisation draws from torch's global RNG: seed it first for a reproducible model."""
    arch = architecture_for(cfg, kind, input_shape, n_classes)
    model = build_model(arch, key)
    if not arch.is_builtin:
        user_models.check_outputs(model, tuple(input_shape), n_classes,
                                  f"{key} ({arch.class_path or arch.arch})")
    return arch, model


def teacher_for_data(cfg: BaselineConfig, kind: str, input_shape: tuple[int, ...],
                     n_classes: int, root: Path) -> tuple[Architecture, nn.Module]:
    """`baseline.model` built for the data (`build_for_data`), given `baseline.weights` (a path
    under `root`) when set."""
    arch, model = build_for_data(cfg.model, kind, input_shape, n_classes)
    if cfg.weights is not None:
        user_models.load_weights(model, root / cfg.weights)
    return arch, model


def load_model(arch: Architecture, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild from an architecture and a state_dict (loaded with weights_only=True by the caller)."""
    model = build_model(arch)
    if arch.resized:
        user_models.resize(model, arch.resized, state_dict)
    model.load_state_dict(state_dict)
    return model.eval()

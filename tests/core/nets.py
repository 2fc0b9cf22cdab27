"""Networks of a team's own, as the tests' `baseline.model.class_path` names them."""

from __future__ import annotations

import torch
from torch import nn


class ResidualNet(nn.Module):
    """A small residual CNN: a stem, two residual blocks, global average pooling, a linear head."""

    def __init__(self, in_channels: int = 3, n_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                          nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, bias=False),
                          nn.BatchNorm2d(width)) for _ in range(2))
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.head(x.mean(dim=(2, 3)))


class Pooled(nn.Module):
    """Ignores its input's classes: one number per sample, whatever the data."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).mean(dim=1, keepdim=True)


NOT_A_MODULE = object()

"""The image task's teacher: a ResNet for small images (He et al. 2016, section 4.2, CIFAR-10).

Three stages of `blocks` basic residual blocks at `width`, 2x`width` and 4x`width` channels, the
last two halving the resolution; global average pooling and one linear layer. `blocks=1` is
ResNet-8, `blocks=3` ResNet-20. `make bench` names it as a team names its own class:
`baseline.model.class_path: bench.nets:ResNet`.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut (a 1x1 convolution when the shape
    changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_channels))
        self.shortcut = nn.Identity() if stride == 1 and in_channels == out_channels else \
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """See the module docstring."""

    def __init__(self, in_channels: int = 3, n_classes: int = 10, width: int = 16,
                 blocks: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        layers, channels = [], width
        for stage in range(3):
            out = width * 2 ** stage
            for block in range(blocks):
                layers.append(BasicBlock(channels, out, 2 if stage and block == 0 else 1))
                channels = out
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))

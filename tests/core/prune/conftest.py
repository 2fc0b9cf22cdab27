"""Shared by the pruning tests: small architectures and models with trained-like BatchNorm statistics.

The helpers are plain functions (imported by the test modules) because tests call them with
different architectures; nothing here is expensive enough to cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from shrinkflow.models import Architecture, build_model

CNN_ARCH = Architecture("cnn", (1, 8, 8), 10, (8, 16))
CNN_1D_ARCH = Architecture("cnn", (1, 40), 10, (8, 16), kernel_size=5)
MLP_ARCH = Architecture("mlp", (30,), 3, (16, 8))


def make_model(arch: Architecture, seed: int = 0) -> nn.Module:
    """A model with non-trivial BatchNorm statistics (as after training), in eval mode."""
    torch.manual_seed(seed)
    model = build_model(arch)
    model.train()
    with torch.no_grad():
        model(torch.randn(64, *arch.input_shape) * 2 + 0.5)
    return model.eval()


def example_input(arch: Architecture) -> torch.Tensor:
    """The batch of one that structured pruning traces the layer dependencies with."""
    return torch.zeros(1, *arch.input_shape)


@contextmanager
def left_untouched(model: nn.Module) -> Iterator[None]:
    """Asserts that the block (pruning a copy of `model`) leaves the caller's `model` as it was."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    yield
    after = model.state_dict()
    assert after.keys() == before.keys(), "the caller's model should keep its parameters"
    for key, value in before.items():
        assert torch.equal(after[key], value), f"the caller's model should be untouched, {key} changed"

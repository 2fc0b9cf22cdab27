"""Which layers pruning acts on: every Conv/Linear layer, and the classifier it must protect."""

from __future__ import annotations

from torch import nn


def prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every Conv and Linear layer, in registration order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)]


def classifier(model: nn.Module) -> nn.Linear:
    """The last Linear layer: `model.head[-1]` for MLP/CNN, else the last Linear registered."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
        return head[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear classifier to protect from pruning")
    return linears[-1]

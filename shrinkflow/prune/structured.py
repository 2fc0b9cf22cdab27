"""Structured pruning with Torch-Pruning: how channels are ranked, which are removed, the new widths.

Torch-Pruning traces the dependency graph, so a removed conv channel also leaves its BatchNorm and
the next layer's inputs; the result is a physically smaller dense network. The classifier's outputs
are never pruned.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from shrinkflow import user_models
from shrinkflow.config import StructuredPruneConfig
from shrinkflow.models import CNN, MLP, Architecture, build_model
from shrinkflow.prune.layers import classifier
from shrinkflow.prune.schedule import Finetune, schedule

if TYPE_CHECKING:
    import torch_pruning as tp

# prune.structured.importance -> (p of the norm, how the coupled layers' scores are combined):
# "first" scores a channel by its own filter only, "mean" by every layer coupled to it
_IMPORTANCE = {"l1": (1, "first"), "l2": (2, "first"), "group_norm": (2, "mean")}


def structured_importance(name: str) -> tp.importance.Importance:
    """Torch-Pruning importance for `prune.structured.importance` (l1, l2 or group_norm).

    l1/l2 rank a channel by the p-norm of its own filter (Li et al. 2017); group_norm by the L2
    norm of all parameters coupled to it (filter, BatchNorm scale, the next layer's inputs;
    Torch-Pruning averages the squared norms over the coupled layers, which ranks the same).
    Scores are divided by the layer's mean ("mean" normalizer): it does not change the order
    within a layer, and makes a global ranking compare layers of different fan-in fairly.
    """
    import torch_pruning as tp

    p, reduction = _IMPORTANCE[name]
    return tp.importance.GroupMagnitudeImportance(p=p, group_reduction=reduction, normalizer="mean")


def _ratio_overrides(model: nn.Module, cfg: StructuredPruneConfig,
                     protected: nn.Module) -> dict[tuple[nn.Module, ...], float]:
    """pruning_ratio_dict for Torch-Pruning: conv layers -> conv_ratio, hidden linears -> linear_ratio.

    A tuple key is one scope: with global pruning its layers are ranked together, with layer scope
    Torch-Pruning gives each member its own ranking at that ratio.
    """
    overrides: dict[tuple[nn.Module, ...], float] = {}
    convs = tuple(m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd))
    hidden = tuple(m for m in model.modules() if isinstance(m, nn.Linear) and m is not protected)
    if cfg.conv_ratio is not None and convs:
        overrides[convs] = cfg.conv_ratio
    if cfg.linear_ratio is not None and hidden:
        overrides[hidden] = cfg.linear_ratio
    return overrides


def prune_structured(
    model: nn.Module,
    example_input: torch.Tensor,
    cfg: StructuredPruneConfig,
    ratio: float,
    steps: int = 1,
    finetune: Finetune | None = None,
) -> nn.Module:
    """A deep copy of `model` with `ratio` of its channels/neurons physically removed.

    `ratio` is the fraction removed from every conv and hidden linear layer (layer scope; conv_ratio
    / linear_ratio override it per layer type) or from all of them together (global scope). It is
    reached in `steps` steps along `schedule`, with `finetune(model, step)` after each step,
    importance re-ranked on the fine-tuned weights. `example_input` (batch of >= 1 on the CPU)
    is only used to trace the layer dependencies. The copy is returned in eval mode; with ratio 0
    and no override it is returned as it is, without fine-tuning.

    Global scope caveat (Torch-Pruning): a layer is never removed entirely; if all its channels
    fall below the global threshold, Torch-Pruning leaves that layer unpruned in that step.
    """
    import torch_pruning as tp

    importance = structured_importance(cfg.importance)
    model = copy.deepcopy(model).cpu().eval()
    protected = classifier(model)
    overrides = _ratio_overrides(model, cfg, protected)
    if ratio == 0.0 and not any(overrides.values()):
        return model

    # the dependency graph is traced through autograd: it must run even if the caller disabled it
    with torch.enable_grad():
        pruner = tp.pruner.BasePruner(
            model,
            example_input.detach().cpu(),
            importance,
            global_pruning=cfg.scope == "global",
            pruning_ratio=ratio,
            pruning_ratio_dict=overrides or None,
            iterative_steps=steps,
            # Torch-Pruning wants the ratio before the first step too (always 0)
            iterative_pruning_ratio_scheduler=lambda target, n: [0.0, *schedule(target, n)],
            ignored_layers=[protected],  # its outputs are the classes; its inputs still shrink
        )
    for step in range(1, steps + 1):
        model.eval()
        pruner.step()
        if finetune is not None:
            finetune(model, step)
    return model.cpu().eval()


def architecture_of(model: nn.Module, like: Architecture) -> Architecture:
    """`like` with the per-layer widths `model` actually has (after structured pruning).

    Input shape, classes, kernel size and dropout are taken from `like` (pruning keeps them); the
    result rebuilds `model` with models.load_model. A custom or torchvision network records the
    layer attributes pruning changed instead of widths.
    """
    if not like.is_builtin:
        fresh = build_model(replace(like, resized={}))
        return replace(like, resized=user_models.resized_attributes(fresh, model))
    expected = MLP if like.family == "mlp" else CNN
    if not isinstance(model, expected):
        raise ValueError(f"architecture family {like.family!r} needs a {expected.__name__}, "
                         f"got {type(model).__name__}")
    if like.family == "mlp":
        widths = tuple(m.out_features for m in model.features if isinstance(m, nn.Linear))
    else:
        widths = tuple(m.out_channels for m in model.features
                       if isinstance(m, nn.modules.conv._ConvNd))
    if len(widths) != len(like.widths):
        raise ValueError(f"model has {len(widths)} layers, the architecture {len(like.widths)}")
    classes = classifier(model).out_features
    if classes != like.n_classes:
        raise ValueError(f"model predicts {classes} classes, the architecture {like.n_classes}")
    return replace(like, widths=widths)

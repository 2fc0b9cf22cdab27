"""Unstructured pruning: zero single Conv/Linear weights by magnitude (ratio, threshold or histogram).

The classifier's weights are included; biases and BatchNorm are left alone. Zeros alone do not
shrink a file: `shrinkflow.sparse` stores the result compactly.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from shrinkflow.config import UnstructuredPruneConfig
from shrinkflow.prune.layers import prunable
from shrinkflow.prune.schedule import Finetune, schedule

# A fraction of weights (or a magnitude cut): one over all weights, or one per layer name.
PerLayer = dict[str, float] | float


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros over all Conv/Linear weights: what an unstructured ratio refers to.

    The standard metrics (params_count, nonzero_params) still come from measure.count_params.
    """
    weights = [m.weight for _, m in prunable(model)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def histogram_threshold(magnitudes: torch.Tensor, bins: int = 256) -> float:
    """A magnitude threshold from the histogram of log10|w| by Otsu's method.

    Otsu splits the histogram where the variance between the two sides is largest. On log|w| the
    two sides are the bulk of useful weights and the tail/mode of tiny ones; for a clearly
    bimodal histogram this is the valley, and unlike a valley search it needs no smoothing and
    always returns a threshold strictly inside the range (so 0 < sparsity < 1). On a unimodal
    histogram it cuts near the mode (~30-60% sparsity). Existing zeros are left out (log 0).
    """
    values = magnitudes.detach().abs().flatten().double().cpu()
    values = values[values > 0]
    logs = torch.log10(values).numpy()
    if logs.size < 2 or logs.min() == logs.max():
        raise ValueError("cannot choose a histogram threshold: the weights have fewer than two "
                         "distinct non-zero magnitudes")
    counts, edges = np.histogram(logs, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    # split i puts bins 0..i below the threshold and bins i+1.. above it
    below = np.cumsum(counts)[:-1].astype(np.float64)
    above = logs.size - below
    mass_below = np.cumsum(counts * centres)[:-1]
    mass_above = float((counts * centres).sum()) - mass_below
    with np.errstate(divide="ignore", invalid="ignore"):
        between = below * above * (mass_below / below - mass_above / above) ** 2
    between[(below == 0) | (above == 0)] = -1.0  # both sides must hold weights
    return float(10.0 ** edges[int(np.argmax(between)) + 1])


def _magnitudes(layers: list[tuple[str, nn.Module]]) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach().abs() for name, m in layers}


def _reject_contradictions(cfg: UnstructuredPruneConfig, ratio: float | None,
                           threshold: float | None) -> None:
    """A ratio or threshold argument only means something with the method that reads it."""
    if cfg.method != "ratio" and ratio is not None:
        raise ValueError(f"a ratio ({ratio!r}) was given but prune.unstructured.method is "
                         f"{cfg.method!r}, not 'ratio'")
    if cfg.method != "threshold" and threshold is not None:
        raise ValueError(f"a threshold ({threshold!r}) was given but prune.unstructured.method is "
                         f"{cfg.method!r}, not 'threshold'")


def _fraction_below(weights: dict[str, torch.Tensor], cut: PerLayer, scope: str) -> PerLayer:
    """The fraction of `weights` under `cut`: over all of them (global scope) or per layer."""
    if scope == "global":
        return sum(int((w < cut).sum()) for w in weights.values()) / sum(w.numel() for w in weights.values())
    cuts = cut if isinstance(cut, dict) else dict.fromkeys(weights, cut)
    return {name: float((w < cuts[name]).double().mean()) for name, w in weights.items()}


def _target_ratios(weights: dict[str, torch.Tensor], cfg: UnstructuredPruneConfig,
                   ratio: float | None, threshold: float | None) -> PerLayer:
    """The fraction to zero: one float (global scope) or one per layer (layer scope).

    threshold/histogram are turned into the fraction they zero on the current weights: one shot
    that is exactly "|w| < threshold"; with several steps it is the target the schedule reaches.
    """
    _reject_contradictions(cfg, ratio, threshold)
    if cfg.method == "ratio":
        if ratio is None:
            raise ValueError("prune.unstructured.method is 'ratio' but no ratio was given "
                             "(pass one of prune.unstructured.ratios)")
        return ratio if cfg.scope == "global" else dict.fromkeys(weights, ratio)
    if cfg.method == "threshold":
        cut: PerLayer | None = threshold if threshold is not None else cfg.threshold
        if cut is None:
            raise ValueError("prune.unstructured.method is 'threshold' but "
                             "prune.unstructured.threshold is not set")
    elif cfg.scope == "global":  # histogram over all weights
        cut = histogram_threshold(torch.cat([w.flatten() for w in weights.values()]))
    else:  # histogram per layer
        cut = {name: histogram_threshold(w) for name, w in weights.items()}
    return _fraction_below(weights, cut, cfg.scope)


def _smallest_mask(magnitudes: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep-mask (1 = keep) zeroing exactly round(ratio * n) of the smallest magnitudes."""
    flat = magnitudes.flatten()
    mask = torch.ones_like(flat)
    k = min(flat.numel(), int(round(ratio * flat.numel())))
    if k:
        # stable sort: ties go in index order, so the count is exact and the result deterministic
        mask[torch.sort(flat, stable=True).indices[:k]] = 0.0
    return mask.view_as(magnitudes)


def _masks(weights: dict[str, torch.Tensor], ratios: PerLayer) -> dict[str, torch.Tensor]:
    """Keep-masks zeroing the smallest `ratios` of `weights`, ranked per layer or all together."""
    if isinstance(ratios, dict):
        return {name: _smallest_mask(w, ratios[name]) for name, w in weights.items()}
    flat = _smallest_mask(torch.cat([w.flatten() for w in weights.values()]), ratios)
    parts = flat.split([w.numel() for w in weights.values()])
    return {name: part.view_as(weights[name]) for name, part in zip(weights, parts, strict=True)}


def _step_ratios(targets: PerLayer, steps: int) -> list[PerLayer]:
    """Per step, the cumulative ratio(s) along the cubic schedule."""
    if isinstance(targets, dict):
        per_layer = {name: schedule(r, steps) for name, r in targets.items()}
        return [{name: ratios[k] for name, ratios in per_layer.items()} for k in range(steps)]
    return schedule(targets, steps)


def prune_unstructured(
    model: nn.Module,
    cfg: UnstructuredPruneConfig,
    ratio: float | None = None,
    *,
    threshold: float | None = None,
    steps: int = 1,
    finetune: Finetune | None = None,
) -> tuple[nn.Module, float]:
    """A deep copy of `model` with Conv/Linear weights zeroed by magnitude, and its sparsity.

    `cfg.method` decides what is zeroed: `ratio` of the weights (globally or in each layer),
    every |w| < `threshold` (default cfg.threshold), or |w| below the histogram threshold. The
    classifier's weights are included; biases and BatchNorm are not. With `steps` > 1 the target
    fraction is reached along `schedule`, with `finetune(model, step)` after each step; pruned
    weights are held at zero while fine-tuning (torch.nn.utils.prune masks). The masks are made
    permanent before returning: plain `weight` tensors with exact zeros, no `weight_orig`.

    Returns (model in eval mode, fraction of zeros over all Conv/Linear weights).
    """
    from torch.nn.utils import prune as torch_prune

    model = copy.deepcopy(model).cpu().eval()
    layers = prunable(model)
    targets = _target_ratios(_magnitudes(layers), cfg, ratio, threshold)
    for step, ratios in enumerate(_step_ratios(targets, steps), start=1):
        # ranked on the current weights: zeros of earlier steps come first, so ratios accumulate
        masks = _masks(_magnitudes(layers), ratios)
        for name, layer in layers:
            torch_prune.custom_from_mask(layer, "weight", masks[name])
        if finetune is not None:
            finetune(model, step)
        for _, layer in layers:
            torch_prune.remove(layer, "weight")  # weight = weight_orig * mask, hooks removed
    return model.cpu().eval(), weight_sparsity(model)

"""Pruning: structured (whole channels) and unstructured (single weights), iterative, searched.

Structured pruning removes whole output channels of convolutions and neurons of hidden linear
layers with Torch-Pruning, which follows the dependencies between layers (a removed conv channel
also leaves its BatchNorm and the next layer's inputs). The result is a physically smaller dense
network, faster everywhere; `architecture_of` reads its new per-layer widths so it is saved and
rebuilt like any other model. The classifier's outputs are never pruned.

Unstructured pruning zeroes individual Conv/Linear weights (the classifier included; biases and
BatchNorm are left alone) by magnitude. Zeros alone do not shrink a file, so `shrinkflow.sparse`
stores sparse weights compactly.

Both can be reached in `steps` steps with fine-tuning in between (through train.fit, optionally
with a sparsity penalty), and `search_ratio` finds the highest ratio whose accuracy drop stays
within a limit. Every entry point deep-copies the model it is given: the caller's model is never
changed.

Keys read from `prune`:
  structured.ratios       fractions of channels/neurons to remove, one candidate each, in [0, 1)
  structured.importance   how channels are ranked: l1 | l2 norm of the channel's own filter,
                          group_norm: L2 norm over every coupled layer (filter, BatchNorm, the next
                          layer's input weights), as in DepGraph (Fang et al. 2023)
  structured.scope        layer: the same ratio in every layer; global: one ranking across layers
                          (importance normalized by each layer's mean so layers compare)
  structured.conv_ratio   overrides the ratio for conv layers
  structured.linear_ratio overrides the ratio for hidden linear layers (never the classifier)
  unstructured.method     ratio: zero that fraction of weights; threshold: zero |w| < threshold;
                          histogram: threshold chosen by Otsu's method on the histogram of log|w|
  unstructured.ratios     method ratio: fractions of weights to zero, one candidate each
  unstructured.threshold  method threshold: |w| below it is zeroed
  unstructured.scope      global: one ranking (or histogram) over all weights; layer: per layer
  steps                   prune in this many steps to the target (cubic schedule, see `schedule`)
  finetune_epochs         fine-tuning epochs after each step (0: no fine-tuning)
  penalty                 none | l1 | group_lasso, added to the loss while fine-tuning
  penalty_weight          weight of the penalty
  finetune_with_teacher   read by the stage: fine-tuning also matches the unpruned model's soft
                          labels (knowledge distillation, `distill.temperature` and `alpha`)
  max_accuracy_drop_pp    the accuracy-aware search accepts drops up to this (percentage points)
  search_ratios           ratios tried by the search, in ascending order
"""

from __future__ import annotations

import copy
import math
from numbers import Real
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from shrinkflow.config import PruneConfig, StructuredPruneConfig, TrainConfig, UnstructuredPruneConfig
from shrinkflow.data import Augmenter, Split
from shrinkflow.measure import count_params, evaluate, torch_predictor
from shrinkflow.models import CNN, MLP, Architecture
from shrinkflow.train import EpochLog, FitResult, Loss, cross_entropy, fit, sum_losses

# finetune(model, step) trains `model` in place after pruning step `step` (1-based)
Finetune = Callable[[nn.Module, int], object]
PruneAt = Callable[[float], nn.Module]
Kind = Literal["structured", "unstructured"]

IMPORTANCES = ("l1", "l2", "group_norm")
PENALTIES = ("none", "l1", "group_lasso")



# ---------------------------------------------------------------------------------------------
# Checks and schedule
# ---------------------------------------------------------------------------------------------
def check_ratio(value: float, key: str) -> float:
    """`value` as a float if it is a pruning ratio in [0, 1); else a ValueError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{key}: {value!r} is not in [0, 1)")
    return float(value)


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"prune.steps: {steps!r} must be an integer >= 1")
    return steps


def schedule(target: float, steps: int) -> list[float]:
    """Cumulative ratio after each of `steps` steps: cubic, ending exactly at `target`.

    r_k = target * (1 - (1 - k/steps)^3) (Zhu & Gupta 2017). Early steps remove much, late steps
    little: at first there is plenty of redundancy, near the target every weight matters more and
    fine-tuning needs smaller changes to recover from. steps=1 gives [target] (one shot).
    """
    return _cubic(check_ratio(target, "prune target ratio"), _check_steps(steps))


def _cubic(target: float, steps: int) -> list[float]:
    ratios = [target * (1.0 - (1.0 - k / steps) ** 3) for k in range(1, steps + 1)]
    ratios[-1] = target  # no floating-point drift at the end
    return ratios


def _classifier(model: nn.Module) -> nn.Linear:
    """The last Linear layer: `model.head[-1]` for MLP/CNN, else the last Linear registered."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
        return head[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear classifier to protect from pruning")
    return linears[-1]


def _prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every Conv and Linear layer, in registration order."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)]


# ---------------------------------------------------------------------------------------------
# Structured pruning (Torch-Pruning)
# ---------------------------------------------------------------------------------------------
def structured_importance(name: str):
    """Torch-Pruning importance for `prune.structured.importance`.

    l1/l2 rank a channel by the p-norm of its own filter (Li et al. 2017); group_norm by the L2
    norm of all parameters coupled to it (filter, BatchNorm scale, the next layer's inputs;
    Torch-Pruning averages the squared norms over the coupled layers, which ranks the same).
    Scores are divided by the layer's mean ("mean" normalizer): it does not change the order
    within a layer, and makes a global ranking compare layers of different fan-in fairly.
    """
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first", normalizer="mean")
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="first", normalizer="mean")
    if name == "group_norm":
        return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer="mean")
    raise ValueError(f"prune.structured.importance: {name!r} is not one of {', '.join(IMPORTANCES)}")


def _ratio_overrides(model: nn.Module, cfg: StructuredPruneConfig,
                     classifier: nn.Module) -> dict[tuple[nn.Module, ...], float]:
    """pruning_ratio_dict for Torch-Pruning: conv layers -> conv_ratio, hidden linears -> linear_ratio.

    A tuple key is one scope: with global pruning its layers are ranked together, with layer scope
    Torch-Pruning gives each member its own ranking at that ratio.
    """
    overrides: dict[tuple[nn.Module, ...], float] = {}
    convs = tuple(m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd))
    hidden = tuple(m for m in model.modules() if isinstance(m, nn.Linear) and m is not classifier)
    if cfg.conv_ratio is not None and convs:
        overrides[convs] = check_ratio(cfg.conv_ratio, "prune.structured.conv_ratio")
    if cfg.linear_ratio is not None and hidden:
        overrides[hidden] = check_ratio(cfg.linear_ratio, "prune.structured.linear_ratio")
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

    ratio = check_ratio(ratio, "prune.structured.ratios")
    _check_steps(steps)
    importance = structured_importance(cfg.importance)
    model = copy.deepcopy(model).cpu().eval()
    classifier = _classifier(model)
    overrides = _ratio_overrides(model, cfg, classifier)
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
            ignored_layers=[classifier],  # its outputs are the classes; its inputs still shrink
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
    result rebuilds `model` with models.build_model + load_state_dict.
    """
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
    classes = _classifier(model).out_features
    if classes != like.n_classes:
        raise ValueError(f"model predicts {classes} classes, the architecture {like.n_classes}")
    return replace(like, widths=widths)


# ---------------------------------------------------------------------------------------------
# Unstructured pruning (magnitude)
# ---------------------------------------------------------------------------------------------
def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in each Conv/Linear weight (the tensors unstructured pruning edits)."""
    return {name: float((m.weight == 0).float().mean()) for name, m in _prunable(model)}


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros over all Conv/Linear weights: what an unstructured ratio refers to.

    The standard metrics (params_count, nonzero_params) still come from measure.count_params.
    """
    weights = [m.weight for _, m in _prunable(model)]
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


def _count_to_zero(n: int, ratio: float) -> int:
    return min(n, int(round(ratio * n)))


def _smallest_mask(magnitudes: torch.Tensor, ratio: float) -> torch.Tensor:
    """Keep-mask (1 = keep) zeroing exactly round(ratio * n) of the smallest magnitudes."""
    flat = magnitudes.flatten()
    mask = torch.ones_like(flat)
    k = _count_to_zero(flat.numel(), ratio)
    if k:
        # stable sort: ties go in index order, so the count is exact and the result deterministic
        mask[torch.sort(flat, stable=True).indices[:k]] = 0.0
    return mask.view_as(magnitudes)


def _target_ratios(layers: list[tuple[str, nn.Module]], cfg: UnstructuredPruneConfig,
                   ratio: float | None, threshold: float | None) -> dict[str, float] | float:
    """The fraction to zero: one float (global scope) or one per layer (layer scope).

    threshold/histogram are turned into the fraction they zero on the current weights: one shot
    that is exactly "|w| < threshold"; with several steps it is the target the schedule reaches.
    """
    weights = {name: m.weight.detach().abs() for name, m in layers}
    if cfg.method != "ratio" and ratio is not None:
        raise ValueError(f"a ratio ({ratio!r}) was given but prune.unstructured.method is "
                         f"{cfg.method!r}, not 'ratio'")
    if cfg.method != "threshold" and threshold is not None:
        raise ValueError(f"a threshold ({threshold!r}) was given but prune.unstructured.method is "
                         f"{cfg.method!r}, not 'threshold'")
    if cfg.method == "ratio":
        if ratio is None:
            raise ValueError("prune.unstructured.method is 'ratio' but no ratio was given "
                             "(pass one of prune.unstructured.ratios)")
        ratio = check_ratio(ratio, "prune.unstructured.ratios")
        return ratio if cfg.scope == "global" else {name: ratio for name in weights}
    if cfg.method == "threshold":
        threshold = threshold if threshold is not None else cfg.threshold
        if threshold is None:
            raise ValueError("prune.unstructured.method is 'threshold' but "
                             "prune.unstructured.threshold is not set")
        if not threshold > 0:
            raise ValueError(f"prune.unstructured.threshold: {threshold!r} must be > 0")
        cut: dict[str, float] | float = float(threshold)
    elif cfg.method == "histogram":
        if cfg.scope == "global":
            cut = histogram_threshold(torch.cat([w.flatten() for w in weights.values()]))
        else:
            cut = {name: histogram_threshold(w) for name, w in weights.items()}
    else:
        raise ValueError(f"prune.unstructured.method: {cfg.method!r} is not one of "
                         "ratio, threshold, histogram")

    if isinstance(cut, dict):
        return {name: float((w < cut[name]).double().mean()) for name, w in weights.items()}
    if cfg.scope == "layer":
        return {name: float((w < cut).double().mean()) for name, w in weights.items()}
    return sum(int((w < cut).sum()) for w in weights.values()) / sum(w.numel() for w in weights.values())


def _masks(layers: list[tuple[str, nn.Module]], ratios: dict[str, float] | float) -> dict[str, torch.Tensor]:
    weights = {name: m.weight.detach().abs() for name, m in layers}
    if isinstance(ratios, dict):
        return {name: _smallest_mask(w, ratios[name]) for name, w in weights.items()}
    flat = _smallest_mask(torch.cat([w.flatten() for w in weights.values()]), ratios)
    parts = flat.split([w.numel() for w in weights.values()])
    return {name: part.view_as(weights[name]) for name, part in zip(weights, parts)}


def _step_ratios(targets: dict[str, float] | float, steps: int) -> list[dict[str, float] | float]:
    """Per step, the cumulative ratio(s) along the cubic schedule."""
    # not schedule(): a threshold above every weight is a (silly but literal) target of 1.0
    if isinstance(targets, dict):
        per_layer = {name: _cubic(r, steps) for name, r in targets.items()}
        return [{name: ratios[k] for name, ratios in per_layer.items()} for k in range(steps)]
    return _cubic(targets, steps)


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

    _check_steps(steps)
    model = copy.deepcopy(model).cpu().eval()
    layers = _prunable(model)
    targets = _target_ratios(layers, cfg, ratio, threshold)
    for step, ratios in enumerate(_step_ratios(targets, steps), start=1):
        # ranked on the current weights: zeros of earlier steps come first, so ratios accumulate
        masks = _masks(layers, ratios)
        for name, layer in layers:
            torch_prune.custom_from_mask(layer, "weight", masks[name])
        if finetune is not None:
            finetune(model, step)
        for _, layer in layers:
            torch_prune.remove(layer, "weight")  # weight = weight_orig * mask, hooks removed
    return model.cpu().eval(), weight_sparsity(model)


# ---------------------------------------------------------------------------------------------
# Sparsity penalties and fine-tuning
# ---------------------------------------------------------------------------------------------
def _weights(model: nn.Module) -> Iterable[torch.Tensor]:
    # `weight` (not weight_orig): while pruning masks are attached it is the masked tensor
    return (m.weight for _, m in _prunable(model))


def l1_penalty(weight: float) -> Loss:
    """weight * sum |w| over all Conv/Linear weights: pushes single weights to zero (unstructured)."""

    def penalty(model: nn.Module, inputs: torch.Tensor, logits: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
        return weight * sum(w.abs().sum() for w in _weights(model))

    return penalty


def group_lasso_penalty(weight: float) -> Loss:
    """weight * sum of L2 norms of output channels/rows: pushes whole channels to zero (structured).

    The subgradient at a zero row is 0 (torch.linalg.vector_norm), so pruned rows give no NaN.
    """

    def penalty(model: nn.Module, inputs: torch.Tensor, logits: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
        return weight * sum(torch.linalg.vector_norm(w.flatten(1), dim=1).sum()
                            for w in _weights(model))

    return penalty


def sparsity_penalty(kind: str, weight: float) -> Loss | None:
    """The extra loss for `prune.penalty` (None for 'none'), scaled by `prune.penalty_weight`."""
    if isinstance(weight, bool) or not isinstance(weight, Real) or not weight >= 0:
        raise ValueError(f"prune.penalty_weight: {weight!r} must be >= 0")
    if kind == "none":
        return None
    if kind == "l1":
        return l1_penalty(float(weight))
    if kind == "group_lasso":
        return group_lasso_penalty(float(weight))
    raise ValueError(f"prune.penalty: {kind!r} is not one of {', '.join(PENALTIES)}")


def make_finetune(
    train: Split,
    val: Split,
    train_cfg: TrainConfig,
    cfg: PruneConfig,
    augment: Augmenter | None = None,
    on_epoch_end: Callable[[int, EpochLog], None] | None = None,
    progress: bool = False,
    loss: Loss | None = None,
) -> Finetune | None:
    """finetune(model, step): `cfg.finetune_epochs` epochs of train.fit with `cfg.penalty`.

    Uses `train_cfg` (lr, batch size, device, seed...) with epochs replaced; a lower lr than the
    baseline's usually recovers better. `loss` is the objective the penalty is added to (default:
    cross-entropy); with `distill.distillation_loss` of the unpruned model, the pruned one learns
    from its teacher.
    `on_epoch_end(step, log)` sees every epoch. Returns None when finetune_epochs is 0. The
    callable returns fit's FitResult.
    """
    if cfg.finetune_epochs == 0:
        return None
    epochs_cfg = train_cfg.model_copy(update={"epochs": cfg.finetune_epochs})
    objective = sum_losses(loss or cross_entropy(train_cfg.label_smoothing),
                           sparsity_penalty(cfg.penalty, cfg.penalty_weight))

    def finetune(model: nn.Module, step: int) -> FitResult:
        hook = None if on_epoch_end is None else (lambda log: on_epoch_end(step, log))
        return fit(model, train, val, epochs_cfg, augment=augment, loss=objective,
                   on_epoch_end=hook, progress=progress, description=f"fine-tune step {step}")

    return finetune


def iterative(
    model: nn.Module,
    cfg: PruneConfig,
    kind: Kind,
    ratio: float | None = None,
    *,
    example_input: torch.Tensor | None = None,
    finetune: Finetune | None = None,
) -> tuple[nn.Module, float]:
    """Prune a deep copy of `model` to `ratio` in `cfg.steps` steps, fine-tuning after each.

    structured: prune_structured with cfg.structured (needs `example_input`); the returned
    fraction is the share of parameters removed (from measure.count_params).
    unstructured: prune_unstructured with cfg.unstructured (`ratio` only for method 'ratio');
    the returned fraction is the sparsity of the Conv/Linear weights.
    """
    if kind == "structured":
        if ratio is None or example_input is None:
            raise ValueError("structured pruning needs a ratio and an example input")
        pruned = prune_structured(model, example_input, cfg.structured, ratio, cfg.steps, finetune)
        return pruned, 1.0 - count_params(pruned)[0] / count_params(model)[0]
    if kind == "unstructured":
        return prune_unstructured(model, cfg.unstructured, ratio, steps=cfg.steps, finetune=finetune)
    raise ValueError(f"pruning kind {kind!r} is not one of structured, unstructured")


# ---------------------------------------------------------------------------------------------
# Accuracy-aware search
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchTry:
    ratio: float
    accuracy: float
    drop_pp: float  # teacher accuracy minus this accuracy, in percentage points
    accepted: bool


@dataclass(frozen=True)
class SearchResult:
    """The highest accepted ratio (None if none was) with its model, and every ratio tried."""

    ratio: float | None
    model: nn.Module | None
    teacher_accuracy: float
    max_drop_pp: float
    tries: tuple[SearchTry, ...]

    def records(self) -> list[dict[str, float | bool]]:
        """One plain dict per try (for a table or an MLflow artifact)."""
        return [asdict(t) for t in self.tries]


def _accuracy(model: nn.Module, split: Split) -> float:
    return evaluate(torch_predictor(model), split.x, split.y)["accuracy"]


def search_ratio(
    teacher: nn.Module,
    prune_at: PruneAt,
    evaluation: Split,
    max_drop_pp: float,
    ratios: Sequence[float],
    stop_at_first_failure: bool = True,
) -> SearchResult:
    """Try `ratios` in ascending order; keep the highest whose accuracy drop is <= `max_drop_pp`.

    `prune_at(ratio)` returns the pruned (and fine-tuned) model; it is the same search for
    structured and unstructured pruning. Accuracy is measured on `evaluation` (a validation
    split: choosing on the test split would leak). Accuracy falls with the ratio, so by default
    the search stops at the first rejected ratio and saves the remaining (costly) tries;
    stop_at_first_failure=False tries them all.
    """
    if isinstance(max_drop_pp, bool) or not isinstance(max_drop_pp, Real) or not max_drop_pp > 0:
        raise ValueError(f"prune.max_accuracy_drop_pp: {max_drop_pp!r} must be > 0")
    if not ratios:
        raise ValueError("prune.search_ratios: no ratio to try")
    ordered = sorted({check_ratio(r, "prune.search_ratios") for r in ratios})
    teacher_accuracy = _accuracy(teacher, evaluation)
    tries: list[SearchTry] = []
    best_ratio: float | None = None
    best_model: nn.Module | None = None
    for ratio in ordered:
        candidate = prune_at(ratio)
        accuracy = _accuracy(candidate, evaluation)
        drop_pp = (teacher_accuracy - accuracy) * 100.0
        accepted = drop_pp <= max_drop_pp + 1e-9  # 0.5 pp must pass a 0.5 pp limit despite rounding
        tries.append(SearchTry(ratio, accuracy, drop_pp, accepted))
        if accepted:
            best_ratio, best_model = ratio, candidate
        elif stop_at_first_failure:
            break
    return SearchResult(best_ratio, best_model, teacher_accuracy, float(max_drop_pp), tuple(tries))

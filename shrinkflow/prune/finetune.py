"""Fine-tuning between pruning steps: sparsity penalties, the finetune callback, and `iterative`.

`make_finetune` builds the callback both kinds of pruning call after each step (train.fit, with
an optional penalty that pushes weights or whole channels towards zero); `iterative` prunes either
kind to a ratio in `prune.steps` steps with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

from shrinkflow.config import PruneConfig, TrainConfig
from shrinkflow.data import Augmenter, Split
from shrinkflow.measure import count_params
from shrinkflow.prune.layers import prunable
from shrinkflow.prune.schedule import Finetune
from shrinkflow.prune.structured import prune_structured
from shrinkflow.prune.unstructured import prune_unstructured
from shrinkflow.train import EpochLog, FitResult, Loss, cross_entropy, fit, sum_losses

Kind = Literal["structured", "unstructured"]


def _weights(model: nn.Module) -> Iterable[torch.Tensor]:
    # `weight` (not weight_orig): while pruning masks are attached it is the masked tensor
    return (m.weight for _, m in prunable(model))


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
    """The extra loss for `prune.penalty` (none, l1 or group_lasso), scaled by `prune.penalty_weight`."""
    if kind == "l1":
        return l1_penalty(weight)
    if kind == "group_lasso":
        return group_lasso_penalty(weight)
    return None  # "none"


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
    # `kind` comes from code, not from a validated config: a typo must not prune the wrong way
    raise ValueError(f"pruning kind {kind!r} is not one of structured, unstructured")

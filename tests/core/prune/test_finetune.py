"""shrinkflow.prune.finetune: sparsity penalties, the fine-tuning callback, and `iterative`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shrinkflow.config import PruneConfig
from shrinkflow.measure import torch_predictor
from shrinkflow.models import Architecture
from shrinkflow.prune import (
    architecture_of,
    group_lasso_penalty,
    iterative,
    l1_penalty,
    make_finetune,
    sparsity_penalty,
)
from shrinkflow.train import label_loss
from tests.core.prune.conftest import example_input, make_model


def _tiny_module() -> nn.Module:
    module = nn.Sequential(nn.Conv1d(1, 2, 2, bias=True), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        module[0].weight.copy_(torch.tensor([[[1.0, -2.0]], [[0.0, 0.0]]]))  # one zero channel
        module[0].bias.fill_(100.0)  # biases are not penalized
        module[2].weight.copy_(torch.tensor([[3.0, -4.0], [0.5, 0.0]]))
    return module


# ---------------------------------------------------------------------------------------------
# penalties
# ---------------------------------------------------------------------------------------------
def test_l1_penalty_equals_the_hand_computed_sum_of_absolute_weights():
    # given a module with known weights (and a large bias that must not count)
    module, dummy = _tiny_module(), torch.zeros(1)
    # when its L1 penalty is computed
    value = l1_penalty(0.1)(module, dummy, dummy, dummy)
    # then it is the weight times the sum of |w| over Conv/Linear weights
    assert value.item() == pytest.approx(0.1 * (1 + 2 + 0 + 0 + 3 + 4 + 0.5 + 0)), "0.1 * sum |w|"


def test_group_lasso_penalty_equals_the_sum_of_row_norms():
    # given a module with known weights / when its group lasso penalty is computed
    module, dummy = _tiny_module(), torch.zeros(1)
    value = group_lasso_penalty(2.0)(module, dummy, dummy, dummy)
    # then it is the weight times the sum of the L2 norms of the output channels/rows
    expected = 2.0 * (5**0.5 + 0.0 + 5.0 + 0.5)
    assert value.item() == pytest.approx(expected), "2 * (|(1,-2)| + |0| + |(3,-4)| + |(0.5,0)|)"


@pytest.mark.parametrize("kind", ["l1", "group_lasso"])
def test_penalties_are_non_negative_and_differentiable_even_at_zero_rows(kind):
    # given a module with an all-zero channel
    module, dummy = _tiny_module(), torch.zeros(1)
    # when the penalty is computed and back-propagated
    value = sparsity_penalty(kind, 1e-3)(module, dummy, dummy, dummy)
    value.backward()
    # then it is non-negative and every weight gets a finite gradient, zero at the zero row
    assert value.item() >= 0, "a penalty is never negative"
    for name, p in module.named_parameters():
        if name.endswith("weight"):
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name} needs a finite gradient"
    assert torch.equal(module[0].weight.grad[1], torch.zeros(1, 2)), "a zero row gets a zero subgradient"


def test_sparsity_penalty_none_means_no_extra_loss():
    # given prune.penalty none / when the penalty is built / then there is none to add
    assert sparsity_penalty("none", 1e-4) is None


# ---------------------------------------------------------------------------------------------
# fine-tuning and iterative pruning
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["structured", "unstructured"])
def test_iterative_with_real_finetuning_through_fit(separable, cpu_train_cfg, kind):
    # given a 2-class problem, a small MLP and a config with 2 steps of 1 epoch with a penalty
    train_split, val_split = separable
    arch = Architecture("mlp", (4,), 2, (16, 16))
    model = make_model(arch)
    cfg = PruneConfig(steps=2, finetune_epochs=1, penalty="l1" if kind == "unstructured" else "group_lasso",
                      penalty_weight=1e-4)
    logged: list[int] = []
    finetune = make_finetune(train_split, val_split, cpu_train_cfg, cfg,
                             on_epoch_end=lambda step, log: logged.append(step))
    # when it is pruned iteratively
    pruned, achieved = iterative(model, cfg, kind, 0.5, example_input=example_input(arch), finetune=finetune)
    # then each step was fine-tuned for one epoch and the model still learns the problem
    assert logged == [1, 2], f"one epoch after each of the 2 steps, got steps {logged}"
    if kind == "unstructured":
        assert achieved == pytest.approx(0.5, abs=0.01), f"sparsity should be 0.5, got {achieved}"
    else:
        assert architecture_of(pruned, arch).widths == (8, 8), "half the neurons of each layer removed"
        assert 0.4 < achieved < 0.8, f"about half or more of the params removed, got {achieved}"
    accuracy = float((torch_predictor(pruned)(val_split.x).argmax(1) == val_split.y).mean())
    assert accuracy >= 0.9, f"the fine-tuned pruned model should still separate the blobs, got {accuracy}"


def test_iterative_structured_needs_an_example_input():
    # given structured pruning without the input that traces the layer dependencies
    model = make_model(Architecture("mlp", (4,), 2, (8,)))
    # when / then it fails saying what is missing
    with pytest.raises(ValueError, match="needs a ratio and an example input"):
        iterative(model, PruneConfig(steps=1), "structured", 0.5)


def test_make_finetune_adds_the_penalty_to_the_given_loss(separable, cpu_train_cfg):
    # given a loss (e.g. distillation from the unpruned model) that counts its calls
    train_split, val_split = separable
    calls: list[int] = []

    def objective(model, inputs, logits, targets):
        calls.append(len(inputs))
        return label_loss(logits, targets)

    cfg = PruneConfig(finetune_epochs=1, penalty="l1")
    finetune = make_finetune(train_split, val_split, cpu_train_cfg, cfg, loss=objective)
    # when one fine-tuning step runs
    finetune(make_model(Architecture("mlp", (4,), 2, (8,))), 1)
    # then the loss saw every training row once
    assert sum(calls) == len(train_split), f"{sum(calls)} rows seen, expected {len(train_split)}"


def test_make_finetune_is_none_without_finetune_epochs(separable, cpu_train_cfg):
    # given finetune_epochs 0 / when the callback is built / then there is nothing to run
    train_split, val_split = separable
    assert make_finetune(train_split, val_split, cpu_train_cfg, PruneConfig(finetune_epochs=0)) is None

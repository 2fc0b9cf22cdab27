"""shrinkflow.train: the one training loop (fit), devices, precision, hooks and early stopping."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from shrinkflow import train
from shrinkflow.config import AugmentConfig, TrainConfig
from shrinkflow.data import UNLABELED, Augmenter, Split
from shrinkflow.models import Architecture, build_model
from shrinkflow.train import (
    EpochLog,
    cross_entropy,
    fit,
    label_loss,
    predict_logits,
    resolve_device,
    sum_losses,
)

CUDA = torch.cuda.is_available()


def _mlp(seed: int = 0, features: int = 4, classes: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(Architecture("mlp", (features,), classes, (16,)))


def _linear_weights_sq(model: nn.Module) -> torch.Tensor:
    """Sum of squared Linear weights (BatchNorm scales are left out: they start at 1)."""
    return sum(m.weight.pow(2).sum() for m in model.modules() if isinstance(m, nn.Linear))


@torch.no_grad()
def _weight_norm(model: nn.Module) -> float:
    return float(_linear_weights_sq(model))


def _without_seconds(history: list[EpochLog]) -> list[EpochLog]:
    return [dataclasses.replace(log, seconds=0.0) for log in history]


# ---------------------------------------------------------------------------------------------
# learning
# ---------------------------------------------------------------------------------------------
def test_fit_learns_a_separable_problem(separable, cpu_train_cfg):
    # given a linearly separable 2-class problem and a small MLP
    train_split, val_split = separable
    model = _mlp()
    # when it is trained for a few epochs
    result = fit(model, train_split, val_split, cpu_train_cfg, progress=False)
    # then it reaches near-perfect validation accuracy and reports it
    assert result.best_val_accuracy >= 0.95, f"val accuracy should reach 0.95, got {result.best_val_accuracy}"
    assert len(result.history) == cpu_train_cfg.epochs, "without early stopping every epoch runs"
    assert 1 <= result.best_epoch <= cpu_train_cfg.epochs, "best_epoch should be one of the epochs run"
    assert result.history[-1].train_loss < result.history[0].train_loss, "the training loss should fall"
    # and the returned model (best weights, CPU, eval mode) reproduces the best accuracy
    assert not model.training, "fit should leave the model in eval mode"
    assert all(p.device.type == "cpu" for p in model.parameters()), "fit should leave the model on the CPU"
    accuracy = float((predict_logits(model, val_split.x).argmax(1) == val_split.y).mean())
    assert accuracy == pytest.approx(result.best_val_accuracy), (
        "the returned model should have the best epoch's validation accuracy"
    )


def test_fit_on_cpu_reports_cpu_and_fp32_even_with_amp(separable, cpu_train_cfg):
    train_split, val_split = separable
    dtypes: list[torch.dtype] = []

    def spy(model, inputs, logits, targets):
        dtypes.append(logits.dtype)
        return logits.new_zeros(())

    cfg = cpu_train_cfg.model_copy(update={"amp": True, "epochs": 1})
    result = fit(_mlp(), train_split, val_split, cfg, loss=sum_losses(cross_entropy(), spy),
                 progress=False)
    assert result.device == "cpu", f"device should be reported as cpu, got {result.device}"
    assert result.precision == "fp32", f"CPU training stays fp32, got {result.precision}"
    assert set(dtypes) == {torch.float32}, f"CPU forward passes should run in fp32, got {set(dtypes)}"


def test_fit_with_the_same_seed_gives_identical_history_and_weights(separable, cpu_train_cfg):
    # given two identically initialised models and one config (with augmentation-free data)
    train_split, val_split = separable
    first, second = _mlp(seed=1), _mlp(seed=1)
    # when both are trained
    a = fit(first, train_split, val_split, cpu_train_cfg, progress=False)
    b = fit(second, train_split, val_split, cpu_train_cfg, progress=False)
    # then every logged number (except wall time) and every weight is identical
    assert _without_seconds(a.history) == _without_seconds(b.history), "same seed -> same history"
    for (name, p), q in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(p, q), f"same seed -> same weights, but {name} differs"


def test_fit_with_another_seed_gives_another_run(separable, cpu_train_cfg):
    # given identical initial weights but a different training seed (shuffling, dropout)
    train_split, val_split = separable
    a = fit(_mlp(seed=1), train_split, val_split, cpu_train_cfg, progress=False)
    b = fit(_mlp(seed=1), train_split, val_split, cpu_train_cfg.model_copy(update={"seed": 1}),
            progress=False)
    # then the runs differ
    assert [log.train_loss for log in a.history] != [log.train_loss for log in b.history], (
        "the seed should change shuffling, so the training losses should differ"
    )


def test_fit_with_augmentation_is_reproducible(cpu_train_cfg):
    # given image data and an augmenter whose generator state was consumed before training
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > 0).astype(np.int64)
    tr, va = Split(x[:64], y[:64]), Split(x[64:], y[64:])
    cfg = cpu_train_cfg.model_copy(update={"epochs": 2})
    runs = []
    for burn in (0, 3):
        augment = Augmenter(AugmentConfig(), "image")
        for _ in range(burn):
            augment(torch.zeros(2, 1, 8, 8))
        torch.manual_seed(0)
        model = build_model(Architecture("cnn", (1, 8, 8), 2, (4,)))
        runs.append(fit(model, tr, va, cfg, augment=augment, progress=False))
    # then fit reseeds the augmenter, so both runs are identical
    assert _without_seconds(runs[0].history) == _without_seconds(runs[1].history), (
        "fit should seed the augmenter from the config seed"
    )


# ---------------------------------------------------------------------------------------------
# hooks
# ---------------------------------------------------------------------------------------------
def test_loss_is_called_per_batch_with_model_inputs_logits_targets(separable, cpu_train_cfg):
    train_split, val_split = separable
    calls: list[tuple] = []
    model = _mlp()

    def spy(m, inputs, logits, targets):
        calls.append((m, tuple(inputs.shape), tuple(logits.shape), tuple(targets.shape)))
        return label_loss(logits, targets)

    cfg = cpu_train_cfg.model_copy(update={"epochs": 2})
    fit(model, train_split, val_split, cfg, loss=spy, progress=False)
    batches = -(-len(train_split) // cfg.batch_size)
    assert len(calls) == cfg.epochs * batches, f"the loss should run once per batch, ran {len(calls)}"
    m, inputs, logits, targets = calls[0]
    assert m is model, "the loss should receive the model being trained"
    assert inputs == (32, 4) and logits == (32, 2) and targets == (32,), "shapes should be per batch"


def test_loss_changes_the_result__l2_penalty_shrinks_weights(separable, cpu_train_cfg):
    # given the same model and data, trained with and without a large L2 penalty
    train_split, val_split = separable

    def l2(model, inputs, logits, targets):
        return 1.0 * _linear_weights_sq(model)

    plain, penalised = _mlp(), _mlp()
    fit(plain, train_split, val_split, cpu_train_cfg, progress=False)
    result = fit(penalised, train_split, val_split, cpu_train_cfg,
                 loss=sum_losses(cross_entropy(), l2), progress=False)
    # then the penalty is part of the optimised loss: weights end up much smaller
    assert _weight_norm(penalised) < 0.5 * _weight_norm(plain), (
        f"an L2 penalty should shrink weights: {_weight_norm(penalised):.3f} vs {_weight_norm(plain):.3f}"
    )
    assert result.best_val_accuracy >= 0.9, "the penalised model should still learn the easy problem"


def test_on_epoch_end_receives_each_epoch_log_in_order(separable, cpu_train_cfg):
    train_split, val_split = separable
    seen: list[EpochLog] = []
    result = fit(_mlp(), train_split, val_split, cpu_train_cfg, on_epoch_end=seen.append, progress=False)
    assert seen == result.history, "on_epoch_end should get exactly the logs in the history"
    assert [log.epoch for log in seen] == list(range(1, cpu_train_cfg.epochs + 1)), "epochs count from 1"
    for log in seen:
        assert log.seconds > 0 and log.lr > 0, "each log should have a positive duration and lr"
        assert 0.0 <= log.val_accuracy <= 1.0, "val accuracy should be a fraction"
    lrs = [log.lr for log in seen]
    assert max(lrs) > lrs[0] and max(lrs) > lrs[-1], "the one-cycle lr should rise then fall"


# ---------------------------------------------------------------------------------------------
# early stopping and best weights
# ---------------------------------------------------------------------------------------------
def test_early_stopping_stops_after_patience_epochs_without_improvement(separable):
    # given a problem that plateaus at once: a learning rate too small to move any weight
    train_split, val_split = separable
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=20, batch_size=64, lr=1e-12, weight_decay=0.0, patience=2,
                      device="cpu", amp=False, seed=0)
    # when it is trained
    result = fit(model, train_split, val_split, cfg, progress=False)
    # then it stops `patience` epochs after the first (best) one
    assert result.stopped_early, "training should stop early on a plateau"
    assert len(result.history) == 1 + cfg.patience, f"expected 3 epochs, ran {len(result.history)}"
    assert result.best_epoch == 1, "the first epoch should stay the best on a flat plateau"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), (
        "with lr=1e-12 the weights should not have moved (the plateau is real)"
    )


def test_fit_without_a_plateau_is_not_marked_as_stopped_early(separable, cpu_train_cfg):
    result = fit(_mlp(), *separable, cpu_train_cfg, progress=False)
    assert not result.stopped_early, "a run that used every epoch should not report early stopping"


def test_fit_restores_the_best_weights_when_training_later_degrades(separable, cpu_train_cfg):
    # given an extra loss that sabotages training after the second epoch (gradient ascent on the
    # correct class), so validation accuracy collapses after a good start
    train_split, val_split = separable
    batches_per_epoch = -(-len(train_split) // cpu_train_cfg.batch_size)
    step = {"n": 0}

    def sabotage(model, inputs, logits, targets):
        step["n"] += 1
        if step["n"] <= 2 * batches_per_epoch:
            return logits.new_zeros(())
        return 50.0 * logits.gather(1, targets[:, None]).mean()

    model = _mlp()
    result = fit(model, train_split, val_split, cpu_train_cfg,
                 loss=sum_losses(cross_entropy(), sabotage), progress=False)
    # then the final logged accuracy is bad but the returned model carries the best epoch's weights
    assert result.history[-1].val_accuracy < result.best_val_accuracy, "the sabotage should hurt accuracy"
    assert result.best_epoch <= 2, f"the best epoch should be before the sabotage, got {result.best_epoch}"
    accuracy = float((predict_logits(model, val_split.x).argmax(1) == val_split.y).mean())
    assert accuracy == pytest.approx(result.best_val_accuracy), (
        f"the returned model should have the best accuracy {result.best_val_accuracy}, has {accuracy}"
    )


# ---------------------------------------------------------------------------------------------
# devices and precision
# ---------------------------------------------------------------------------------------------
def test_resolve_device__auto_and_cpu():
    assert resolve_device("cpu").type == "cpu", "cpu should resolve to the CPU"
    expected = "cuda" if CUDA else "cpu"
    assert resolve_device("auto").type == expected, f"auto should resolve to {expected}"


@pytest.mark.skipif(CUDA, reason="checks the error raised when CUDA is missing")
def test_fit__cuda_without_a_cuda_device_raises_a_clear_error(separable, cpu_train_cfg):
    cfg = cpu_train_cfg.model_copy(update={"device": "cuda"})
    with pytest.raises(RuntimeError, match=r"baseline\.train\.device is 'cuda'.*no CUDA device"):
        fit(_mlp(), *separable, cfg, progress=False)


def test_fit__mixed_precision_is_reported_as_bf16(separable, cpu_train_cfg, monkeypatch):
    # given the autocast dtype a bf16-capable GPU would get (forced, so this runs on the CPU)
    monkeypatch.setattr(train, "_autocast_dtype", lambda device, amp: torch.bfloat16)
    cfg = cpu_train_cfg.model_copy(update={"epochs": 1})
    # when a model is trained
    result = fit(_mlp(), *separable, cfg, progress=False)
    # then the precision uses the same short names as 'fp32'
    assert result.precision == "bf16", f"precision should read 'bf16', got {result.precision!r}"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_fit__amp_on_cuda_trains_in_half_precision(separable, cpu_train_cfg):
    # given a CUDA device and amp on
    train_split, val_split = separable
    dtypes: set[torch.dtype] = set()

    def spy(model, inputs, logits, targets):
        dtypes.add(logits.dtype)
        return logits.new_zeros((), dtype=torch.float32)

    cfg = cpu_train_cfg.model_copy(update={"device": "cuda", "amp": True})
    model = _mlp()
    # when it is trained
    result = fit(model, train_split, val_split, cfg, loss=sum_losses(cross_entropy(), spy),
                 progress=False)
    # then the forward passes ran in bf16 (or fp16 without bf16 support), and it still learned
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert dtypes == {expected}, f"forward passes should run in {expected}, got {dtypes}"
    assert result.device.startswith("cuda"), f"device should be reported as cuda, got {result.device}"
    assert result.precision in {"bf16", "fp16", "bfloat16", "float16"}, (
        f"precision should name a half type, got {result.precision!r}"
    )
    assert result.best_val_accuracy >= 0.9, "mixed precision should still learn the easy problem"
    assert all(p.device.type == "cpu" for p in model.parameters()), "the model should come back to the CPU"


def test_predict_logits_matches_the_model_across_batches():
    model = _mlp().eval()
    x = np.random.default_rng(0).standard_normal((23, 4)).astype(np.float32)
    batched = predict_logits(model, x, batch_size=5)
    with torch.no_grad():
        direct = model(torch.from_numpy(x)).numpy()
    assert batched.shape == (23, 2), "one row of logits per sample expected"
    np.testing.assert_allclose(batched, direct, rtol=1e-5, atol=1e-6)


def test_sum_losses_adds_the_given_losses_and_skips_none():
    def constant(value: float):
        return lambda model, inputs, logits, targets: torch.tensor(value)

    args = (nn.Identity(), torch.zeros(1), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    assert sum_losses() is None and sum_losses(None, None) is None
    single = constant(2.0)
    assert sum_losses(None, single) is single, "one loss is returned as it is"
    assert sum_losses(constant(2.0), None, constant(0.5))(*args).item() == 2.5


# ---------------------------------------------------------------------------------------------
# unlabeled rows
# ---------------------------------------------------------------------------------------------
def test_label_loss_averages_over_the_labeled_rows_only():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    targets = torch.tensor([0, UNLABELED, 1])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], targets[[0, 2]])
    assert torch.allclose(label_loss(logits, targets), expected)


def test_label_loss_of_a_batch_without_labels_is_zero_and_still_differentiable():
    logits = torch.randn(3, 2, requires_grad=True)
    loss = label_loss(logits, torch.full((3,), UNLABELED))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros(3, 2))


def test_fit_gets_no_signal_from_unlabeled_rows_under_the_default_loss(separable, cpu_train_cfg):
    # given the labeled rows, and the same rows followed by unlabeled ones whose inputs would
    # pull a model the other way if they counted (mirrored inputs)
    train_split, val_split = separable
    mixed = Split(np.concatenate([train_split.x, -train_split.x]),
                  np.concatenate([train_split.y, np.full(len(train_split), UNLABELED)]))
    # a model without BatchNorm and one batch per epoch: unlabeled rows could only act through
    # the loss, and the batch order cannot matter
    cfg = cpu_train_cfg.model_copy(update={"batch_size": len(mixed)})

    def linear() -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(4, 2)

    alone, with_unlabeled = linear(), linear()
    # when both are trained with the default cross-entropy
    fit(alone, train_split, val_split, cfg, progress=False)
    fit(with_unlabeled, mixed, val_split, cfg, progress=False)
    # then the unlabeled rows changed nothing
    for name, value in alone.state_dict().items():
        torch.testing.assert_close(with_unlabeled.state_dict()[name], value, rtol=1e-5, atol=1e-6,
                                   msg=f"{name} should not depend on unlabeled rows")

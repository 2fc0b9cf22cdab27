"""The one training loop, shared by baseline training, fine-tuning and distillation.

Keys read from `baseline.train`:
  epochs, batch_size        upper bound on epochs (early stopping may end sooner), mini-batch size
  lr, weight_decay          AdamW with a one-cycle schedule peaking at `lr`
  label_smoothing           cross-entropy label smoothing
  patience                  epochs without a better validation accuracy before stopping
  device, amp               auto/cpu/cuda; mixed precision on CUDA (bf16 where supported, else fp16)
  seed                      seeds init, shuffling and augmentation: same config -> same CPU result

`loss(model, inputs, logits, targets)` is what the loop minimises; by default the cross-entropy
(`cross_entropy`). Distillation and sparsity penalties pass their own objective instead of writing
their own loops (`sum_losses` adds terms). Rows labeled `data.UNLABELED` add nothing to the
cross-entropy (a batch of them only has 0 there); they are there for a loss that needs no label,
such as distillation's. `on_epoch_end` receives each epoch's numbers (the tracking layer logs them;
this module does not know about MLflow). The best weights by validation accuracy are restored at
the end.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shrinkflow.config import TrainConfig
from shrinkflow.data import UNLABELED, Augmenter, Split, make_loader
from shrinkflow.measure import classification_metrics
from shrinkflow.progress import Heartbeat, rate

_log = logging.getLogger("shrinkflow.train")

# loss(model, inputs, logits, targets) -> scalar tensor, computed on every training batch
Loss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sum_losses(*losses: Loss | None) -> Loss | None:
    """One loss adding up the given ones (None entries skipped; None if none is left)."""
    present = [loss for loss in losses if loss is not None]
    if len(present) <= 1:
        return present[0] if present else None

    def total(model: nn.Module, inputs: torch.Tensor, logits: torch.Tensor,
              targets: torch.Tensor) -> torch.Tensor:
        return sum(loss(model, inputs, logits, targets) for loss in present)

    return total


def label_loss(logits: torch.Tensor, targets: torch.Tensor,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy averaged over the labeled rows; 0 when the batch has none."""
    if not bool((targets != UNLABELED).any()):
        return logits.sum() * 0.0  # keeps the graph (and dtype) for backward
    return F.cross_entropy(logits, targets, ignore_index=UNLABELED,
                           label_smoothing=label_smoothing)


def cross_entropy(label_smoothing: float = 0.0) -> Loss:
    """fit's default objective: `label_loss` of the batch."""

    def loss(model: nn.Module, inputs: torch.Tensor, logits: torch.Tensor,
             targets: torch.Tensor) -> torch.Tensor:
        return label_loss(logits, targets, label_smoothing)

    return loss


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


@dataclass
class FitResult:
    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = 0.0
    stopped_early: bool = False
    device: str = "cpu"
    precision: str = "fp32"
    epochs: int = 0  # the budget the rows gave (`TrainConfig.for_rows`): at most this many ran
    batch_size: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("baseline.train.device is 'cuda' but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp or device.type != "cuda":
        return None  # CPU autocast slows these small models down; keep fp32 there
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 1024,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """Eval-mode logits for an array of inputs, batched."""
    model.eval()
    outputs = [
        model(torch.from_numpy(x[i : i + batch_size]).to(device)).float().cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outputs).numpy()


def _validate(model: nn.Module, val: Split, device: torch.device) -> tuple[float, float]:
    logits = predict_logits(model, val.x, device=device)
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(val.y)).item()
    return loss, classification_metrics(val.y, logits.argmax(1))["accuracy"]


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    cfg: TrainConfig,
    augment: Augmenter | None = None,
    loss: Loss | None = None,
    on_epoch_end: Callable[[EpochLog], None] | None = None,
    progress: bool = True,
    description: str = "training",
) -> FitResult:
    """Train `model` in place on `loss` (default: cross-entropy with `cfg.label_smoothing`) and
    restore its best weights by validation accuracy. With 0 epochs the model is only scored on
    validation, as it is (epoch 0 of the history)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    cfg = cfg.for_rows(int((train.y != UNLABELED).sum()))
    objective = loss or cross_entropy(cfg.label_smoothing)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    amp_dtype = _autocast_dtype(device, cfg.amp)
    model.to(device)
    if cfg.epochs == 0:
        val_loss, val_accuracy = _validate(model, val, device)
        return FitResult([EpochLog(0, math.nan, val_loss, val_accuracy, 0.0, 0.0)], 0,
                         val_accuracy, device=str(device), epochs=0, batch_size=int(cfg.batch_size))
    if augment is not None:
        augment.generator.manual_seed(cfg.seed)
    loader = make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * len(loader)
    )
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32")
    result = FitResult(device=str(device), precision=precision, epochs=cfg.epochs,
                       batch_size=int(cfg.batch_size))
    best_state, best_key, stale = copy.deepcopy(model.state_dict()), (-1.0, 0.0), 0

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn())
    heartbeat = Heartbeat()
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(description, total=cfg.epochs, status="")
        for epoch in range(1, cfg.epochs + 1):
            started = time.perf_counter()
            model.train()
            total_loss, seen = 0.0, 0
            for batch, (inputs, targets) in enumerate(loader, 1):
                if heartbeat.due():
                    _log.info("%s: epoch %d/%d, batch %d/%d, %s, best val acc %.4f", description,
                              epoch, cfg.epochs, batch, len(loader),
                              rate(seen, time.perf_counter() - started), result.best_val_accuracy)
                inputs, targets = inputs.to(device), targets.to(device)
                if augment is not None:
                    inputs = augment(inputs)
                context = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype
                           else nullcontext())
                with context:
                    logits = model(inputs)
                    batch_loss = objective(model, inputs, logits, targets)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(batch_loss).backward()
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                total_loss += batch_loss.item() * len(targets)
                seen += len(targets)

            val_loss, val_accuracy = _validate(model, val, device)
            log = EpochLog(epoch, total_loss / seen, val_loss, val_accuracy,
                           schedule.get_last_lr()[0], time.perf_counter() - started)
            result.history.append(log)
            if on_epoch_end is not None:
                on_epoch_end(log)
            bar.update(task, advance=1,
                       status=f"loss {log.train_loss:.3f}  val acc {val_accuracy:.4f}")

            # better accuracy wins; on a tie the lower validation loss wins
            key = (val_accuracy, -val_loss)
            if key > best_key:
                best_key, stale = key, 0
                best_state = copy.deepcopy(model.state_dict())
                result.best_epoch, result.best_val_accuracy = epoch, val_accuracy
            else:
                stale += 1
                if stale >= cfg.patience:
                    result.stopped_early = True
                    break

    model.load_state_dict(best_state)
    model.to("cpu").eval()  # later stages (measure, export) run on the CPU
    return result

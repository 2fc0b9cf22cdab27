"""Knowledge distillation: a small student learns from a trained teacher's soft labels and features.

Keys read from `distill`:
  student            ModelConfig of the student (family, depth, width, kernel_size, ...)
  temperature        T: both logit vectors are divided by T before the softmax (higher = softer)
  alpha              weight of the soft-label loss; the hard-label cross-entropy gets 1 - alpha
  feature_pairs      ((teacher layer, student layer), ...): module names, as in
                     `dict(model.named_modules())`, whose outputs are matched by MSE (FitNets)
  feature_weight     weight of the summed feature-matching loss
  epochs             student epochs (None: the `baseline.train.epochs` passed in)
  patience           student early-stopping patience (None: `baseline.train.patience`)
  train_without_teacher  read by the stage, not here: it trains the same student alone to compare

The loss minimised per batch is

    (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(p_teacher^T || p_student^T)
        + feature_weight * sum over pairs of MSE(adapter(student feature), teacher feature)

Unlabeled inputs (a transfer set) may join the labeled ones: the cross-entropy averages over the
labeled rows only, the other terms over all rows, so there the student learns from the teacher alone.

There is no training loop here: `distill` hands the student and the loss above to `train.fit`, the
one loop (alpha = 1 leaves the label term out). The teacher runs on the very inputs the student
sees (after augmentation), in eval mode and without gradients, on the student's device.

Feature pairs may join layers of different widths and resolutions: a 1x1 convolution (or a linear
layer for vectors) maps the student's channels onto the teacher's, created only when the counts
differ, and adaptive average pooling brings both maps to the smaller spatial size. The adapters are
trained with the student: fit receives a small wrapper module holding the student and the adapters
(its forward is the student's), so fit's optimizer sees both. The adapters are dropped afterwards;
the student itself stays a plain MLP/CNN with no hooks left attached, ready for export.

The same function fine-tunes a pruned model with the unpruned one as its teacher.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shrinkflow.config import DistillConfig, ModelConfig, TrainConfig
from shrinkflow.data import Augmenter, Split, with_unlabeled
from shrinkflow.errors import UserError
from shrinkflow.models import Architecture, build_for_data
from shrinkflow.train import EpochLog, FitResult, Loss, fit, label_loss, sum_losses


class DistillError(UserError, ValueError):
    """A distillation setting does not fit the models (e.g. an unknown layer name)."""


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Soft-label distillation loss (Hinton et al. 2015): T^2 * KL(p_teacher^T || p_student^T).

    p^T = softmax(logits / T). The KL divergence is summed over classes and averaged over the batch
    ("batchmean", the true KL per sample). Multiplying by T^2 keeps its gradients on the scale of
    the cross-entropy's whatever T is, so `alpha` means the same at every temperature.
    Gradients flow to the student only: the teacher's logits are detached.

    Args:
        student_logits (torch.Tensor): student logits, shape (batch_size, n_classes)
        teacher_logits (torch.Tensor): teacher logits, shape (batch_size, n_classes)
        temperature (float): T > 0

    Returns:
        torch.Tensor: the scalar loss, shape (), float32
    """
    if student_logits.shape != teacher_logits.shape:
        raise DistillError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: both models must predict the same classes"
        )
    # float32 keeps the log-softmax exact under mixed precision
    student_log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_p = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = F.kl_div(student_log_p, teacher_log_p, reduction="batchmean", log_target=True)
    return kl * temperature**2


def distillation_loss(teacher: nn.Module, temperature: float, alpha: float,
                      label_smoothing: float = 0.0, always_run_teacher: bool = False) -> Loss:
    """train.fit's loss: (1 - alpha) * CE(labels) + alpha * kd_loss(teacher's soft labels).

    CE averages over the labeled rows (with `label_smoothing`), kd_loss over every row, unlabeled
    ones included. `teacher` (in eval mode, the caller's business) runs without gradients on the
    very inputs the student sees, moved to their device on first use. With alpha 0 the teacher is
    skipped unless `always_run_teacher` (feature hooks need its forward pass). Used by `distill`
    and to fine-tune a pruned model with the unpruned one as teacher.
    """

    def loss(model: nn.Module, inputs: torch.Tensor, logits: torch.Tensor,
             targets: torch.Tensor) -> torch.Tensor:
        hard = label_loss(logits, targets, label_smoothing)
        if alpha == 0 and not always_run_teacher:
            return hard
        if _device_of(teacher) != inputs.device:
            teacher.to(inputs.device)
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        if alpha == 0:
            return hard
        soft = kd_loss(logits, teacher_logits, temperature)
        return (1 - alpha) * hard.float() + alpha * soft

    return loss


def make_adapter(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """What maps a student feature onto the teacher's channels: Identity when they already match.

    Shapes are per batch, channels second: (batch_size, C) for vectors, (batch_size, C, L) for
    signals, (batch_size, C, H, W) for images. When the ranks differ the feature map is first
    averaged over its positions (see `feature_loss`), so the adapter works on vectors then.

    Returns:
        nn.Identity when the channel counts match; otherwise a 1x1 Conv1d / Conv2d (same rank, 3 or
        4) or a Linear (vectors), from the student's channels to the teacher's.
    """
    student_channels, teacher_channels = student_shape[1], teacher_shape[1]
    if student_channels == teacher_channels:
        return nn.Identity()
    rank = len(student_shape) if len(student_shape) == len(teacher_shape) else 2
    if rank == 2:
        return nn.Linear(student_channels, teacher_channels)
    if rank == 3:
        return nn.Conv1d(student_channels, teacher_channels, kernel_size=1)
    if rank == 4:
        return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
    raise DistillError(f"cannot match features of shape {tuple(student_shape)}: rank {rank}")


def _to_vector(feature: torch.Tensor) -> torch.Tensor:
    """(batch_size, C, *positions) -> (batch_size, C), averaging over the positions."""
    return feature.flatten(2).mean(-1) if feature.dim() > 2 else feature


def feature_loss(
    student_feature: torch.Tensor, teacher_feature: torch.Tensor, adapter: nn.Module
) -> torch.Tensor:
    """MSE between an adapted student feature and a teacher feature (FitNets-style hint loss).

    Steps: (1) if one is a feature map and the other a vector, the map is averaged over its
    positions; (2) `adapter` maps the student's channels to the teacher's; (3) if the spatial sizes
    differ, both are adaptive-average-pooled to the smaller size per dimension; (4) mean squared
    error over every element. The teacher's feature is detached.

    Args:
        student_feature (torch.Tensor): shape (batch_size, C_s), (batch_size, C_s, L_s) or
            (batch_size, C_s, H_s, W_s)
        teacher_feature (torch.Tensor): shape (batch_size, C_t), (batch_size, C_t, L_t) or
            (batch_size, C_t, H_t, W_t)
        adapter (nn.Module): from `make_adapter`, C_s -> C_t channels

    Returns:
        torch.Tensor: the scalar loss, shape (), float32
    """
    student, teacher = student_feature.float(), teacher_feature.detach().float()
    if student.dim() != teacher.dim():
        student, teacher = _to_vector(student), _to_vector(teacher)
    student = adapter(student)
    if student.shape[2:] != teacher.shape[2:]:
        size = tuple(min(s, t) for s, t in zip(student.shape[2:], teacher.shape[2:], strict=True))
        pool = F.adaptive_avg_pool1d if student.dim() == 3 else F.adaptive_avg_pool2d
        student, teacher = pool(student, size), pool(teacher, size)
    return F.mse_loss(student, teacher)


# ---------------------------------------------------------------------------------------------
# Capturing intermediate outputs
# ---------------------------------------------------------------------------------------------
class FeatureCapture:
    """Records the outputs of named submodules at every forward pass, through forward hooks.

    `outputs[name]` holds the latest output of `dict(model.named_modules())[name]`. Use it as a
    context manager, or call `remove()`: either way no hook is left on the model afterwards.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], role: str = "model") -> None:
        modules = dict(model.named_modules())
        names = list(dict.fromkeys(names))  # one hook per layer, even if it appears in two pairs
        missing = [name for name in names if name not in modules]
        if missing:
            valid = ", ".join(repr(name) for name in modules if name)
            raise DistillError(
                f"distill.feature_pairs: {role} layer {', '.join(map(repr, missing))} not found "
                f"in {type(model).__name__}; valid names are: {valid}"
            )
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [
            modules[name].register_forward_hook(self._recorder(name)) for name in names
        ]

    def _recorder(self, name: str) -> Callable:
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.outputs[name] = output

        return record

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.outputs.clear()

    def __enter__(self) -> FeatureCapture:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()


# ---------------------------------------------------------------------------------------------
# Distillation
# ---------------------------------------------------------------------------------------------
class _StudentWithAdapters(nn.Module):
    """What fit trains: the student plus the feature adapters; its forward is the student's."""

    def __init__(self, student: nn.Module, adapters: nn.ModuleList) -> None:
        super().__init__()
        self.student = student
        self.adapters = adapters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


@torch.no_grad()
def _probe_shapes(model: nn.Module, capture: FeatureCapture, sample: torch.Tensor,
                  ) -> dict[str, tuple[int, ...]]:
    """Output shape of every captured layer, from one eval-mode pass (BN statistics untouched)."""
    was_training = model.training
    model.eval()
    model(sample.to(_device_of(model)))
    model.train(was_training)
    shapes = {name: tuple(output.shape) for name, output in capture.outputs.items()}
    capture.outputs.clear()
    return shapes


def distill(
    teacher: nn.Module,
    student: nn.Module,
    train: Split,
    val: Split,
    cfg: DistillConfig,
    train_cfg: TrainConfig,
    augment: Augmenter | None = None,
    on_epoch_end: Callable[[EpochLog], None] | None = None,
    progress: bool = True,
    unlabeled_x: np.ndarray | None = None,
) -> FitResult:
    """Train `student` in place from `teacher` (frozen) and the labels; return fit's result.

    `unlabeled_x`, inputs shaped like `train.x` without labels, join the training rows: there the
    student learns from the teacher alone (the soft-label and feature losses), which is how a
    student gains from data nobody labeled.

    `train_cfg` is the training loop's configuration; `cfg.epochs` / `cfg.patience`, when set,
    replace its own (see `student_train_config`).
    On return the student holds its best weights by validation accuracy (fit's rule), sits on the
    CPU in eval mode, and neither model carries a hook; the teacher's weights, BatchNorm statistics,
    device and train/eval mode are as they were.
    """
    train_cfg = student_train_config(cfg, train_cfg)
    teacher_names = [teacher_name for teacher_name, _ in cfg.feature_pairs]
    student_names = [student_name for _, student_name in cfg.feature_pairs]
    teacher_device, teacher_was_training = _device_of(teacher), teacher.training
    temperature, alpha = cfg.temperature, cfg.alpha

    with ExitStack() as cleanup:
        teacher_capture = cleanup.enter_context(FeatureCapture(teacher, teacher_names, "teacher"))
        student_capture = cleanup.enter_context(FeatureCapture(student, student_names, "student"))
        cleanup.callback(teacher.train, teacher_was_training)
        cleanup.callback(teacher.to, teacher_device)
        teacher.eval()

        adapters = nn.ModuleList()
        if cfg.feature_pairs:
            sample = torch.from_numpy(train.x[:2])
            teacher_shapes = _probe_shapes(teacher, teacher_capture, sample)
            student_shapes = _probe_shapes(student, student_capture, sample)
            with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG is untouched
                torch.manual_seed(train_cfg.seed)
                adapters.extend(
                    make_adapter(student_shapes[s], teacher_shapes[t]) for t, s in cfg.feature_pairs
                )

        def hint_loss(model: nn.Module, inputs: torch.Tensor, logits: torch.Tensor,
                      targets: torch.Tensor) -> torch.Tensor:
            # the student's features were captured by its forward pass, the teacher's by the
            # forward pass distillation_loss made on the same inputs just before
            return cfg.feature_weight * sum(
                feature_loss(student_capture.outputs[s], teacher_capture.outputs[t], adapter)
                for (t, s), adapter in zip(cfg.feature_pairs, adapters, strict=True)
            )

        soft = distillation_loss(teacher, temperature, alpha, train_cfg.label_smoothing,
                                 always_run_teacher=bool(cfg.feature_pairs))
        loss = sum_losses(soft, hint_loss if cfg.feature_pairs else None)
        return fit(
            _StudentWithAdapters(student, adapters), with_unlabeled(train, unlabeled_x), val,
            train_cfg, augment=augment, loss=loss, on_epoch_end=on_epoch_end,
            progress=progress,
            description=f"distilling (T={temperature:g}, alpha={alpha:g})",
        )


def student_train_config(cfg: DistillConfig, train_cfg: TrainConfig) -> TrainConfig:
    """The training loop's settings for a student: `distill.epochs` and `distill.patience`
    replace the baseline's when set (small students keep improving long after a teacher stops)."""
    changes = {key: value for key, value in (("epochs", cfg.epochs), ("patience", cfg.patience))
               if value is not None}
    return train_cfg.model_copy(update=changes)


def build_student(
    cfg: ModelConfig, kind: str, input_shape: tuple[int, ...], n_classes: int,
    key: str = "distill.student",
) -> tuple[Architecture, nn.Module]:
    """A student (`distill.student` or one of `distill.extra_students`), resolved against the
    data like the baseline.

    Initialisation draws from torch's global RNG: seed it first for a reproducible student.
    """
    return build_for_data(cfg, kind, input_shape, n_classes, key)

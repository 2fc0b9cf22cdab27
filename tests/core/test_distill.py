"""shrinkflow.distill: KD loss, feature matching, distillation through fit, and students."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shrinkflow import distill as distill_module
from shrinkflow.config import AugmentConfig, DistillConfig, ModelConfig, PrepareConfig, TrainConfig
from shrinkflow.data import (
    UNLABELED,
    Augmenter,
    Split,
    Splits,
    builtin_table,
    normalize_splits,
    stratified_split,
    table_to_arrays,
)
from shrinkflow.distill import (
    DistillError,
    FeatureCapture,
    build_student,
    distill,
    distillation_loss,
    feature_loss,
    kd_loss,
    make_adapter,
)
from shrinkflow.export import export_onnx, onnx_predictor
from shrinkflow.models import CNN, MLP, Architecture, build_model
from shrinkflow.train import fit, predict_logits

CUDA = torch.cuda.is_available()
TEACHER_ARCH = Architecture("cnn", (1, 8, 8), 10, (8, 16), kernel_size=3, dropout=0.0)
STUDENT_ARCH = Architecture("cnn", (1, 8, 8), 10, (6, 12), kernel_size=3, dropout=0.0)
FAST = TrainConfig(epochs=10, batch_size=64, lr=0.01, weight_decay=0.0, patience=100,
                   device="cpu", amp=False, seed=0)


def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict_logits(model, x).argmax(1) == y).mean())


def _hooks_left(model: nn.Module) -> list[str]:
    return [name or "(root)" for name, module in model.named_modules()
            if module._forward_hooks or module._forward_pre_hooks]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _same_state(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(value, snapshot[name]) for name, value in model.state_dict().items())


@pytest.fixture(scope="module")
def digits() -> Splits:
    """scikit-learn's 8x8 digits, split and normalized like the pipeline does."""
    prep = PrepareConfig(source="digits")
    frame, spec = builtin_table(prep)
    x, y = table_to_arrays(frame, spec)
    splits = stratified_split(x, y, prep.val_fraction, prep.test_fraction, prep.seed)
    return normalize_splits(splits, spec.kind)[0]


@pytest.fixture(scope="module")
def teacher(digits: Splits) -> nn.Module:
    """A trained (8, 16)-channel CNN teacher on digits (tests must leave it unchanged)."""
    torch.manual_seed(0)
    model = build_model(TEACHER_ARCH)
    fit(model, digits.train, digits.val, FAST, progress=False)
    assert _accuracy(model, digits.val.x, digits.val.y) >= 0.9, "the teacher fixture should learn digits"
    return model


# ---------------------------------------------------------------------------------------------
# kd_loss and distillation_loss
# ---------------------------------------------------------------------------------------------
def test_distillation_loss_is_the_alpha_mix_of_cross_entropy_and_kd():
    # given a fixed linear teacher, inputs, student logits and labels
    torch.manual_seed(0)
    teacher = nn.Linear(4, 3).eval()
    inputs, logits = torch.randn(5, 4), torch.randn(5, 3)
    targets = torch.tensor([0, 1, 2, 0, 1])
    ce = F.cross_entropy(logits, targets, label_smoothing=0.1)
    with torch.no_grad():
        kd = kd_loss(logits, teacher(inputs), 3.0)
    # when
    total = distillation_loss(teacher, 3.0, 0.25, label_smoothing=0.1)(teacher, inputs, logits, targets)
    # then the total is (1 - alpha) * CE + alpha * KD
    assert total.item() == pytest.approx((0.75 * ce + 0.25 * kd).item(), rel=1e-5)


def test_distillation_loss_on_unlabeled_rows_is_kd_there_and_the_alpha_mix_on_the_labeled():
    # given a batch whose last two rows have no label
    torch.manual_seed(0)
    teacher = nn.Linear(4, 3).eval()
    inputs, logits = torch.randn(5, 4), torch.randn(5, 3)
    targets = torch.tensor([0, 1, 2, UNLABELED, UNLABELED])
    ce = F.cross_entropy(logits[:3], targets[:3])
    with torch.no_grad():
        kd = kd_loss(logits, teacher(inputs), 3.0)
    # when
    total = distillation_loss(teacher, 3.0, 0.25)(teacher, inputs, logits, targets)
    # then CE counts the labeled rows and KD every row
    assert total.item() == pytest.approx((0.75 * ce + 0.25 * kd).item(), rel=1e-5)


def test_distillation_loss_with_alpha_zero_is_the_cross_entropy_without_the_teacher():
    def never(x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the teacher should not run when alpha is 0")

    teacher = nn.Module()
    teacher.forward = never
    logits, targets = torch.randn(2, 3), torch.tensor([0, 1])
    loss = distillation_loss(teacher, 2.0, 0.0)(teacher, torch.randn(2, 4), logits, targets)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, targets).item())


def test_kd_loss_is_zero_for_identical_logits():
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    for temperature in (1.0, 4.0):
        loss = kd_loss(logits, logits.clone(), temperature)
        assert loss.shape == (), "kd_loss should be a scalar"
        assert loss.item() == pytest.approx(0.0, abs=1e-6), f"identical logits give 0 at T={temperature}"


def test_kd_loss_is_positive_for_different_logits():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 10, generator=generator), torch.randn(8, 10, generator=generator)
    assert kd_loss(student, teacher, 2.0).item() > 0, "different distributions give a positive loss"


def test_kd_loss_matches_a_hand_computed_two_class_example_at_t2():
    # given student logits (0, 0) and teacher logits (2, 0), softened by T = 2
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    # by hand: p_student = (1/2, 1/2); p_teacher = softmax(1, 0) = (e, 1) / (e + 1)
    p1 = math.e / (math.e + 1)
    p2 = 1 / (math.e + 1)
    kl = p1 * math.log(p1 / 0.5) + p2 * math.log(p2 / 0.5)
    expected = 2.0**2 * kl  # T^2 * KL(p_teacher || p_student)
    assert kd_loss(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-6), (
        f"expected T^2 * KL = {expected:.6f}"
    )


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0, 10.0])
def test_kd_loss_is_t_squared_times_the_batch_mean_kl(temperature):
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(16, 5, generator=generator), 3 * torch.randn(16, 5, generator=generator)
    p_teacher = torch.softmax(teacher / temperature, dim=1)
    p_student = torch.softmax(student / temperature, dim=1)
    kl_per_sample = (p_teacher * (p_teacher.log() - p_student.log())).sum(dim=1)
    reference = temperature**2 * kl_per_sample.mean()
    assert kd_loss(student, teacher, temperature).item() == pytest.approx(reference.item(), rel=1e-5), (
        "kd_loss should be T^2 times the per-sample KL averaged over the batch"
    )


def test_kd_loss_sends_gradients_to_the_student_only():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(4, 3, generator=generator, requires_grad=True)
    teacher = torch.randn(4, 3, generator=generator, requires_grad=True)
    kd_loss(student, teacher, 4.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0, "the student should get gradients"
    assert teacher.grad is None, "the teacher's logits should be detached"


def test_kd_loss_rejects_logits_of_different_classes():
    with pytest.raises(DistillError, match="same classes"):
        kd_loss(torch.zeros(2, 10), torch.zeros(2, 3), 2.0)


# ---------------------------------------------------------------------------------------------
# feature capture, adapters, feature loss
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("input_shape", "expected"),
    [
        ((1, 40), {"features.2": (3, 4, 40), "features.6": (3, 8, 20), "features.7": (3, 8, 10)}),
        ((1, 8, 8), {"features.2": (3, 4, 8, 8), "features.6": (3, 8, 4, 4), "pool": (3, 8, 1, 1)}),
    ],
    ids=["signal", "image"],
)
def test_feature_capture_records_named_outputs_with_their_shapes(input_shape, expected):
    model = build_model(Architecture("cnn", input_shape, 10, (4, 8), kernel_size=5)).eval()
    with FeatureCapture(model, expected) as capture, torch.no_grad():
        model(torch.randn(3, *input_shape))
        shapes = {name: tuple(output.shape) for name, output in capture.outputs.items()}
    assert shapes == expected, f"captured shapes {shapes} should be {expected}"
    assert _hooks_left(model) == [], "leaving the context should remove every hook"


def test_feature_capture_of_an_unknown_layer_names_it_and_lists_valid_names():
    model = build_model(STUDENT_ARCH)
    with pytest.raises(DistillError) as error:
        FeatureCapture(model, ["features.2", "features.99"], role="student")
    message = str(error.value)
    assert "'features.99'" in message, "the error should name the missing layer"
    assert "distill.feature_pairs" in message, "the error should name the config key"
    for valid in ("features.0", "features.2", "pool", "head.2"):
        assert f"'{valid}'" in message, f"the error should list the valid name {valid!r}"
    assert _hooks_left(model) == [], "a failed capture should not leave hooks behind"


def test_adapter_is_created_only_when_channel_counts_differ():
    assert isinstance(make_adapter((2, 8, 10), (2, 8, 20)), nn.Identity), "same channels: no adapter"
    assert isinstance(make_adapter((2, 16), (2, 16)), nn.Identity), "same width: no adapter"
    conv1d = make_adapter((2, 4, 10), (2, 8, 10))
    assert isinstance(conv1d, nn.Conv1d) and (conv1d.in_channels, conv1d.out_channels) == (4, 8)
    assert conv1d.kernel_size == (1,), "signals get a 1x1 convolution"
    conv2d = make_adapter((2, 4, 4, 4), (2, 16, 2, 2))
    assert isinstance(conv2d, nn.Conv2d) and (conv2d.in_channels, conv2d.out_channels) == (4, 16)
    assert conv2d.kernel_size == (1, 1), "images get a 1x1 convolution"
    linear = make_adapter((2, 16), (2, 32))
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (16, 32)
    mixed = make_adapter((2, 4, 10), (2, 8))  # a map against a vector: matched after averaging
    assert isinstance(mixed, nn.Linear) and (mixed.in_features, mixed.out_features) == (4, 8)


def test_feature_loss_pools_to_the_smaller_spatial_size():
    # given a student map (4 channels, length 20) and a teacher map (8 channels, length 10)
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(3, 4, 20, generator=generator, requires_grad=True)
    teacher = torch.randn(3, 8, 10, generator=generator)
    adapter = make_adapter(student.shape, teacher.shape)
    # when they are compared
    loss = feature_loss(student, teacher, adapter)
    # then the adapted student is averaged in pairs of positions, then compared by MSE
    expected = F.mse_loss(F.avg_pool1d(adapter(student), 2), teacher)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5), "adapt, pool to length 10, MSE"
    loss.backward()
    assert student.grad is not None and adapter.weight.grad is not None, "student and adapter learn"


def test_feature_loss_pools_images_and_matches_maps_with_vectors():
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, 8, 4, 4, generator=generator)
    pooled = F.adaptive_avg_pool2d(image, 2)
    assert feature_loss(image, pooled, nn.Identity()).item() == pytest.approx(0.0, abs=1e-7), (
        "a 4x4 map pooled to 2x2 should match its own 2x2 average"
    )
    vector = image.mean(dim=(2, 3))
    assert feature_loss(image, vector, nn.Identity()).item() == pytest.approx(0.0, abs=1e-7), (
        "a map compared with a vector should be averaged over its positions first"
    )


# ---------------------------------------------------------------------------------------------
# distill: the loss plugged into fit
# ---------------------------------------------------------------------------------------------
def _captured_fit_arguments(monkeypatch, teacher: nn.Module, student: nn.Module, digits: Splits,
                         cfg: DistillConfig, train_cfg: TrainConfig = FAST):
    """Run distill with fit replaced by a spy; return what distill handed to fit."""
    seen: dict = {}

    def spy_fit(model, train, val, cfg, **kwargs):
        seen.update(model=model, cfg=cfg, **kwargs)
        return None

    monkeypatch.setattr(distill_module, "fit", spy_fit)
    distill(teacher, student, digits.train, digits.val, cfg, train_cfg, progress=False)
    return seen


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_distill_hands_fit_the_alpha_weighted_kd_objective(
    monkeypatch, teacher, digits, alpha
):
    # given the loss distill hands to fit (label smoothing on, to check it is matched too)
    train_cfg = FAST.model_copy(update={"label_smoothing": 0.1})
    cfg = DistillConfig(temperature=3.0, alpha=alpha)
    student = build_model(STUDENT_ARCH)
    seen = _captured_fit_arguments(monkeypatch, teacher, student, digits, cfg, train_cfg)
    inputs = torch.from_numpy(digits.train.x[:16])
    targets = torch.from_numpy(digits.train.y[:16])
    logits = seen["model"](inputs)
    # when it is evaluated on a batch
    cross_entropy = F.cross_entropy(logits, targets, label_smoothing=0.1)
    total = seen["loss"](seen["model"], inputs, logits, targets)
    # then the total is (1 - alpha) * CE + alpha * T^2 * KL
    with torch.no_grad():
        teacher_logits = teacher.eval()(inputs)
    expected = (1 - alpha) * cross_entropy + alpha * kd_loss(logits, teacher_logits, 3.0)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6), (
        f"the loss should equal (1 - alpha) * CE + alpha * KD at alpha={alpha}"
    )


def test_distill_epochs_come_from_the_distill_config_when_set(monkeypatch, teacher, digits):
    seen = _captured_fit_arguments(monkeypatch, teacher, build_model(STUDENT_ARCH), digits,
                                DistillConfig(epochs=3))
    assert seen["cfg"].epochs == 3, "distill.epochs should replace the training epochs"
    seen = _captured_fit_arguments(monkeypatch, teacher, build_model(STUDENT_ARCH), digits,
                                DistillConfig(epochs=None))
    assert seen["cfg"].epochs == FAST.epochs, "without distill.epochs the training config's epochs apply"


def test_distill_with_an_unknown_layer_fails_before_training_and_leaves_no_hooks(teacher, digits):
    student = build_model(STUDENT_ARCH)
    cfg = DistillConfig(feature_pairs=(("features.2", "features.2"), ("features.6", "feature.6")))
    with pytest.raises(DistillError, match=r"student layer 'feature\.6' not found.*'features\.6'"):
        distill(teacher, student, digits.train, digits.val, cfg, FAST, progress=False)
    assert _hooks_left(teacher) == [] and _hooks_left(student) == [], "no hook should remain"
    cfg = DistillConfig(feature_pairs=(("nope", "features.2"),))
    with pytest.raises(DistillError, match=r"teacher layer 'nope' not found"):
        distill(teacher, student, digits.train, digits.val, cfg, FAST, progress=False)
    assert _hooks_left(teacher) == [] and _hooks_left(student) == [], "no hook should remain"


def test_distill_learns_from_unlabeled_inputs_through_the_teacher(teacher, digits):
    # given 40 labeled training rows, the rest of the training split without its labels
    labeled = Split(digits.train.x[:40], digits.train.y[:40])
    pool = digits.train.x[40:]
    cfg = DistillConfig(temperature=2.0, alpha=0.5, epochs=15)

    def student_accuracy(unlabeled_x: np.ndarray | None) -> float:
        torch.manual_seed(0)
        student = build_model(STUDENT_ARCH)
        distill(teacher, student, labeled, digits.val, cfg, FAST, progress=False,
                unlabeled_x=unlabeled_x)
        return _accuracy(student, digits.test.x, digits.test.y)

    # when the same student is distilled without and with the pool
    without, with_pool = student_accuracy(None), student_accuracy(pool)
    # then the teacher's answers on the pool teach it what 40 labels cannot
    assert with_pool >= without + 0.1, f"{without:.3f} without the pool, {with_pool:.3f} with it"


def test_distill_trains_a_small_student_from_the_teacher(teacher, digits, tmp_path):
    # given a trained teacher and an untrained student with 3/4 of its channels (~40% of its weights)
    torch.manual_seed(0)
    student = build_model(STUDENT_ARCH)
    teacher_before = _snapshot(teacher)
    cfg = DistillConfig(temperature=2.0, alpha=0.5, feature_pairs=(("features.6", "features.6"),),
                        epochs=20)
    train_x = torch.from_numpy(digits.train.x)
    with torch.no_grad():
        teacher_logits = teacher.eval()(train_x)
        kd_before = kd_loss(student.eval()(train_x), teacher_logits, cfg.temperature).item()
    # when it is distilled (soft labels, augmentation, and one feature pair with an adapter)
    augment = Augmenter(AugmentConfig(), "image")
    result = distill(teacher, student, digits.train, digits.val, cfg, FAST, augment=augment,
                     progress=False)
    # then it imitates the teacher better and learned the task
    with torch.no_grad():
        kd_after = kd_loss(student(train_x), teacher_logits, cfg.temperature).item()
    assert kd_after < 0.5 * kd_before, f"the KD loss should fall: {kd_before:.3f} -> {kd_after:.3f}"
    assert len(result.history) == 20, "every epoch should run"
    assert result.history[-1].train_loss < result.history[0].train_loss, "the training loss should fall"
    accuracy = _accuracy(student, digits.test.x, digits.test.y)
    assert accuracy >= 0.85, f"the student should reach a sane test accuracy, got {accuracy:.3f}"
    # and the teacher is untouched, both models are free of hooks
    assert _same_state(teacher, teacher_before), "the teacher's weights and statistics should not change"
    assert _hooks_left(teacher) == [] and _hooks_left(student) == [], "distill should remove its hooks"
    # and the student is a plain CNN of its architecture (no adapters), on the CPU, exportable
    assert type(student) is CNN and not student.training, "the student stays a plain CNN in eval mode"
    assert student.state_dict().keys() == build_model(STUDENT_ARCH).state_dict().keys(), (
        "the student should carry no adapter or wrapper parameters"
    )
    path = export_onnx(student, STUDENT_ARCH.input_shape, tmp_path / "student.onnx")
    np.testing.assert_allclose(onnx_predictor(path)(digits.test.x[:8]),
                               predict_logits(student, digits.test.x[:8]), rtol=1e-4, atol=1e-4)


def test_the_teacher_sees_the_students_augmented_inputs_in_eval_mode_without_gradients(teacher, digits):
    # given pre-hooks recording what each model receives during one distillation epoch
    student = build_model(STUDENT_ARCH)
    seen: dict[str, list] = {"teacher": [], "student": []}

    def recorder(role):
        def record(module, args):
            if module.training or role == "teacher":
                seen[role].append((args[0].clone(), module.training, torch.is_grad_enabled()))
        return record

    handles = [teacher.register_forward_pre_hook(recorder("teacher")),
               student.register_forward_pre_hook(recorder("student"))]
    try:
        distill(teacher, student, digits.train, digits.val, DistillConfig(epochs=1), FAST,
                augment=Augmenter(AugmentConfig(), "image"), progress=False)
    finally:
        for handle in handles:
            handle.remove()
    # then every training batch reached the teacher unchanged, in eval mode, without autograd
    assert len(seen["teacher"]) == len(seen["student"]) > 0, "the teacher should run once per batch"
    for (t_inputs, t_training, t_grad), (s_inputs, _, _) in zip(seen["teacher"], seen["student"],
                                                                strict=True):
        assert torch.equal(t_inputs, s_inputs), "the teacher should get the student's (augmented) batch"
        assert not t_training and not t_grad, "the teacher should run in eval mode under no_grad"
    raw = {tuple(row.ravel()) for row in digits.train.x[:64]}
    assert not any(tuple(row.ravel()) in raw for row in seen["student"][0][0].numpy()), (
        "the batches should be augmented"
    )


def test_distill_trains_the_feature_adapters_with_the_student(monkeypatch, teacher, digits):
    # given fit wrapped by a spy that records the module it trains
    real_fit, trained = distill_module.fit, {}

    def recording_fit(model, *args, **kwargs):
        trained["model"] = model
        trained["before"] = _snapshot(model.adapters)
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(distill_module, "fit", recording_fit)
    torch.manual_seed(0)
    student = build_model(STUDENT_ARCH)
    cfg = DistillConfig(feature_pairs=(("features.2", "features.2"), ("features.6", "features.6")),
                        epochs=2)
    distill(teacher, student, digits.train, digits.val, cfg, FAST, progress=False)
    # then fit trained the student and one 1x1 conv adapter per pair (6 -> 8 and 12 -> 16 channels)
    wrapper = trained["model"]
    assert wrapper.student is student, "fit should train the student itself"
    shapes = [(a.in_channels, a.out_channels) for a in wrapper.adapters]
    assert all(isinstance(a, nn.Conv2d) for a in wrapper.adapters) and shapes == [(6, 8), (12, 16)]
    assert not _same_state(wrapper.adapters, trained["before"]), "the adapters should be trained"


def test_distill_restores_the_teachers_mode(teacher, digits):
    student = build_model(STUDENT_ARCH)
    teacher.train()
    try:
        distill(teacher, student, digits.train, digits.val, DistillConfig(epochs=1), FAST,
                progress=False)
        assert teacher.training, "a teacher handed over in train mode should come back in train mode"
    finally:
        teacher.eval()


def _keep_strongest_channels(model: CNN, arch: Architecture) -> CNN:
    """A structurally pruned copy: per block, keep the output channels with the largest L1 norm."""
    pruned = build_model(arch)
    source = dict(model.features.named_children())
    target = dict(pruned.features.named_children())
    kept_in = torch.arange(model.features[0].in_channels)
    with torch.no_grad():
        for name, conv in source.items():
            if not isinstance(conv, nn.Conv2d):
                continue
            width = target[name].out_channels
            kept = conv.weight.abs().sum(dim=(1, 2, 3)).topk(width).indices.sort().values
            target[name].weight.copy_(conv.weight[kept][:, kept_in])
            norm, pruned_norm = source[str(int(name) + 1)], target[str(int(name) + 1)]
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(pruned_norm, key).copy_(getattr(norm, key)[kept])
            kept_in = kept
        pruned.head[-1].weight.copy_(model.head[-1].weight[:, kept_in])
        pruned.head[-1].bias.copy_(model.head[-1].bias)
    return pruned.eval()


def test_distill_fine_tunes_a_pruned_model_with_the_unpruned_teacher(teacher, digits):
    # given the teacher pruned to half its channels (8, 16) -> (4, 8), which costs accuracy
    pruned_arch = Architecture("cnn", (1, 8, 8), 10, (4, 8), kernel_size=3, dropout=0.0)
    pruned = _keep_strongest_channels(teacher, pruned_arch)
    teacher_accuracy = _accuracy(teacher, digits.val.x, digits.val.y)
    before = _accuracy(pruned, digits.val.x, digits.val.y)
    teacher_before = _snapshot(teacher)
    # when it is fine-tuned from the unpruned teacher, with features of different widths matched
    cfg = DistillConfig(alpha=0.5, feature_pairs=(("features.6", "features.6"),), epochs=10)
    result = distill(teacher, pruned, digits.train, digits.val, cfg, FAST, progress=False)
    # then it recovers accuracy and keeps its pruned architecture
    after = _accuracy(pruned, digits.val.x, digits.val.y)
    assert after == pytest.approx(result.best_val_accuracy), "the best weights should be restored"
    assert after > before, f"fine-tuning should recover accuracy: {before:.3f} -> {after:.3f}"
    assert after >= teacher_accuracy - 0.1, f"{after:.3f} should be near the teacher's {teacher_accuracy:.3f}"
    assert [m.out_channels for m in pruned.features if isinstance(m, nn.Conv2d)] == [4, 8], (
        "fine-tuning should not change the pruned widths"
    )
    assert _same_state(teacher, teacher_before), "the teacher should not change"
    assert _hooks_left(teacher) == [] and _hooks_left(pruned) == [], "no hook should remain"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_distill_on_cuda_with_amp_returns_both_models_to_the_cpu(teacher, digits):
    student = build_model(STUDENT_ARCH)
    cfg = DistillConfig(feature_pairs=(("features.6", "features.6"),), epochs=2)
    result = distill(teacher, student, digits.train, digits.val, cfg,
                     FAST.model_copy(update={"device": "cuda", "amp": True}), progress=False)
    assert result.device.startswith("cuda"), f"training should run on cuda, got {result.device}"
    for model in (teacher, student):
        assert all(p.device.type == "cpu" for p in model.parameters()), "both should be on the CPU after"


# ---------------------------------------------------------------------------------------------
# build_student
# ---------------------------------------------------------------------------------------------
def test_build_student_resolves_the_student_config_against_the_data():
    arch, model = build_student(ModelConfig(depth=2, width=4, kernel_size=5), "signal", (1, 40), 10)
    assert arch == Architecture("cnn", (1, 40), 10, (4, 8), kernel_size=5, dropout=0.1)
    assert isinstance(model, CNN), "signals get a CNN student"
    assert model(torch.zeros(2, 1, 40)).shape == (2, 10), "one logit per class"
    arch, model = build_student(ModelConfig(width=16), "tabular", (30,), 2)
    assert arch.family == "mlp" and arch.widths == (16, 16) and isinstance(model, MLP)

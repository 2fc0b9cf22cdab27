"""shrinkflow.quantize.qat: fake quantization, quantization-aware training and its ONNX export."""

from __future__ import annotations

import onnx
import pytest
import torch

from shrinkflow import quantize as q
from shrinkflow.config import QuantizeConfig
from shrinkflow.measure import classification_metrics
from shrinkflow.models import CNN
from shrinkflow.quantize.qat import fake_quantize_activation, fake_quantize_weight, strip_fake_quant
from shrinkflow.train import EpochLog, predict_logits
from tests.core.quantize.conftest import ARCH, TRAIN, predictions


def test_fake_quantize_weight_rounds_each_channel_to_255_levels_with_a_straight_through_gradient():
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    quantized = fake_quantize_weight(weight)
    for channel, values in zip(weight, quantized, strict=True):
        scale = channel.detach().abs().max() / 127
        codes = values.detach() / scale
        assert torch.allclose(codes, codes.round(), atol=1e-4), "values should sit on the int8 grid"
    quantized.sum().backward()
    assert torch.equal(weight.grad, torch.ones_like(weight)), "the gradient should pass straight through"


def test_fake_quantize_activation_clips_outside_the_range_and_passes_gradient_inside():
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 3.0], requires_grad=True)
    y = fake_quantize_activation(x, torch.tensor(0.0), torch.tensor(2.0))
    values = y.detach().tolist()
    assert values[:2] == [0, 0] and values[-1] == pytest.approx(2.0), f"clipped to [0, 2]: {values}"
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0], f"no gradient where clipped: {x.grad}"


def test_qat_train_config_uses_qat_epochs_and_a_smaller_learning_rate():
    cfg = q.qat_train_config(TRAIN, QuantizeConfig(qat_epochs=3))
    assert (cfg.epochs, cfg.lr, cfg.seed) == (3, TRAIN.lr / 10, TRAIN.seed), cfg


@pytest.fixture(scope="module")
def qat_run(trained, splits) -> tuple[torch.nn.Module, list[EpochLog], dict]:
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    logs: list[EpochLog] = []
    cfg = TRAIN.model_copy(update={"epochs": 3, "lr": 0.003})
    model = q.quantization_aware_training(trained, splits.train, splits.val, cfg,
                                          on_epoch_end=logs.append)
    return model, logs, before


def test_qat_trains_and_leaves_the_original_model_unchanged(qat_run, trained, splits):
    model, logs, before = qat_run
    losses = [log.train_loss for log in logs]
    assert losses[-1] < losses[0], f"the QAT training loss should fall: {losses}"
    predicted = predict_logits(model, splits.test.x).argmax(1)
    accuracy = classification_metrics(splits.test.y, predicted)["accuracy"]
    assert accuracy >= 0.85, f"the fake-quantized model should stay accurate, got {accuracy:.3f}"
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items()), (
        "QAT should train a copy, not the caller's model")


def test_strip_fake_quant_gives_the_plain_architecture_with_int8_grid_weights(qat_run, trained):
    plain = strip_fake_quant(qat_run[0])
    assert isinstance(plain, CNN) and not plain.training
    assert list(plain.state_dict()) == list(trained.state_dict()), "same keys as build_model's model"
    weight = plain.features[0].weight.detach()
    scale = weight.abs().flatten(1).amax(1).view(-1, 1, 1, 1) / 127
    codes = weight / scale
    assert torch.allclose(codes, codes.round(), atol=1e-3), "weights should sit on the int8 grid"


def test_qat_int8_export_agrees_with_the_qat_model(qat_run, calibration, splits, tmp_path):
    # given the QAT model exported as float32 ONNX (weights on the int8 grid)
    model = qat_run[0]
    float_path = q.export_qat_onnx(model, ARCH.input_shape, tmp_path / "qat.onnx")
    # when it is quantized with minmax calibration, as the stage and the fallback do
    path = q.to_int8_static(float_path, tmp_path / "qat-int8.onnx", calibration, "minmax")
    # then the int8 file predicts what the fake-quantized torch model predicts
    expected = predict_logits(model, splits.test.x).argmax(1)
    agreement = float((predictions(path, splits.test.x) == expected).mean())
    assert agreement >= 0.95, f"int8 export agrees with the QAT model on {agreement:.3f} < 0.95"
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(path)).graph.node}

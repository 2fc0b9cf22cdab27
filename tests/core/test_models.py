"""shrinkflow.models: resolving baseline.model against the data, building, saving and reloading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from shrinkflow.config import ModelConfig
from shrinkflow.models import CNN, MLP, Architecture, architecture_for, build_model, load_model


# ---------------------------------------------------------------------------------------------
# architecture_for
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "shape", "family"),
    [("image", (1, 8, 8), "cnn"), ("signal", (1, 40), "cnn"), ("tabular", (30,), "mlp")],
)
def test_architecture_for__auto_picks_cnn_for_images_and_signals_and_mlp_for_tables(kind, shape, family):
    arch = architecture_for(ModelConfig(family="auto"), kind, shape, 10)
    assert arch.family == family, f"auto should pick {family} for {kind} data, got {arch.family}"
    assert arch.input_shape == shape and arch.n_classes == 10, "shape and classes come from the data"


def test_architecture_for__mlp_widths_are_width_repeated_depth_times():
    arch = architecture_for(ModelConfig(family="mlp", depth=3, width=24), "tabular", (30,), 2)
    assert arch.widths == (24, 24, 24), f"an mlp should have depth layers of width units, got {arch.widths}"


def test_architecture_for__cnn_widths_grow_by_the_multiplier():
    cfg = ModelConfig(family="cnn", depth=3, width=8, width_multiplier=1.5, kernel_size=5, dropout=0.2)
    arch = architecture_for(cfg, "image", (1, 8, 8), 10)
    assert arch.widths == (8, 12, 18), f"cnn channels should grow 8 -> 12 -> 18, got {arch.widths}"
    assert arch.kernel_size == 5 and arch.dropout == 0.2, "kernel size and dropout come from the config"


def test_architecture_for__default_cnn_is_32_then_64_channels():
    arch = architecture_for(ModelConfig(width=32), "image", (1, 8, 8), 10)
    assert arch.widths == (32, 64), f"width 32, doubled: 32 -> 64 channels, got {arch.widths}"


def test_architecture_for__explicit_mlp_on_images_is_allowed():
    arch = architecture_for(ModelConfig(family="mlp"), "image", (1, 8, 8), 10)
    model = build_model(arch)
    assert isinstance(model, MLP), "family mlp should build an MLP even for images"
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10), "an MLP should flatten image inputs"


def test_architecture_for__cnn_on_tabular_data_raises_naming_the_key():
    with pytest.raises(ValueError, match=r"baseline\.model\.family 'cnn'"):
        architecture_for(ModelConfig(family="cnn"), "tabular", (30,), 2)


# ---------------------------------------------------------------------------------------------
# forward shapes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("family", "input_shape", "cls"),
    [("mlp", (30,), MLP), ("cnn", (1, 40), CNN), ("cnn", (1, 8, 8), CNN), ("cnn", (3, 8, 8), CNN)],
    ids=["mlp-table", "cnn-1d-signal", "cnn-2d-image", "cnn-2d-3-channels"],
)
def test_forward_gives_one_logit_per_class_per_sample(family, input_shape, cls):
    model = build_model(Architecture(family, input_shape, 7, (4, 8))).eval()
    assert isinstance(model, cls), f"{family} should build a {cls.__name__}"
    out = model(torch.randn(5, *input_shape))
    assert out.shape == (5, 7), f"expected (5, 7) logits, got {tuple(out.shape)}"
    assert out.dtype == torch.float32, "logits should be float32"


def test_deep_cnn_still_fits_an_8x8_image():
    # given more blocks than an 8x8 image can be halved (pooling must stop at size 2)
    model = build_model(Architecture("cnn", (1, 8, 8), 10, (4, 4, 4, 4, 4))).eval()
    # then the forward pass works
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10), "a 5-block cnn should run on 8x8 inputs"
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 2, f"8 -> 4 -> 2 means two pooling layers, got {len(pools)}"


def test_cnn_uses_the_kernel_size_and_keeps_the_length():
    model = build_model(Architecture("cnn", (1, 40), 10, (6,), kernel_size=5))
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv1d))
    assert conv.kernel_size == (5,) and conv.out_channels == 6, "conv should follow the architecture"
    assert model.features[0](torch.zeros(1, 1, 40)).shape[-1] == 40, "odd kernels should keep the length"


def test_cnn__tabular_input_shape_is_rejected():
    with pytest.raises(ValueError, match="cnn needs"):
        build_model(Architecture("cnn", (30,), 2, (8,)))


def test_mlp_parameter_count_follows_the_widths():
    # 30 -> 16 (Linear 30*16+16, BatchNorm 2*16) -> 2 (Linear 16*2+2)
    model = build_model(Architecture("mlp", (30,), 2, (16,)))
    count = sum(p.numel() for p in model.parameters())
    assert count == 30 * 16 + 16 + 2 * 16 + 16 * 2 + 2, f"unexpected parameter count {count}"


def test_dropout_is_applied_before_the_classifier():
    model = build_model(Architecture("mlp", (4,), 2, (8,), dropout=0.3))
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in dropouts] == [0.3], "one dropout with the configured rate expected"


# ---------------------------------------------------------------------------------------------
# Architecture and reloading
# ---------------------------------------------------------------------------------------------
def test_architecture_round_trips_through_json():
    arch = Architecture("cnn", (1, 8, 8), 10, (12, 24), kernel_size=5, dropout=0.25)
    restored = Architecture.from_dict(json.loads(json.dumps(arch.to_dict())))
    assert restored == arch, f"a JSON round trip should rebuild the same architecture, got {restored}"
    assert isinstance(restored.widths, tuple) and isinstance(restored.input_shape, tuple), (
        "lists from JSON should become tuples again"
    )


@pytest.mark.parametrize(
    ("family", "input_shape"), [("mlp", (30,)), ("cnn", (1, 40)), ("cnn", (1, 8, 8))]
)
def test_load_model_from_a_weights_only_state_dict_gives_identical_outputs(
        tmp_path: Path, family, input_shape):
    # given a model whose BatchNorm statistics moved away from their initial values
    torch.manual_seed(0)
    arch = Architecture(family, input_shape, 5, (6, 6), dropout=0.5)
    model = build_model(arch)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, *input_shape) * 3 + 1)
    model.eval()
    # when its state_dict is saved and reloaded with weights_only=True into a fresh model
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    reloaded = load_model(arch, torch.load(path, weights_only=True))
    # then the reloaded model is in eval mode and gives exactly the same logits
    assert not reloaded.training, "load_model should return a model in eval mode"
    x = torch.randn(9, *input_shape)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x)), "the reloaded model should match bit for bit"


def test_load_model__state_dict_of_another_architecture_fails():
    state = build_model(Architecture("mlp", (30,), 2, (16,))).state_dict()
    with pytest.raises(RuntimeError):
        load_model(Architecture("mlp", (30,), 2, (8,)), state)

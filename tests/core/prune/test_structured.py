"""shrinkflow.prune.structured: channels removed with Torch-Pruning, and the widths read back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shrinkflow.config import StructuredPruneConfig
from shrinkflow.measure import compute, count_params
from shrinkflow.models import Architecture, load_model
from shrinkflow.prune import architecture_of, prune_structured
from tests.core.prune.conftest import (
    CNN_1D_ARCH,
    CNN_ARCH,
    MLP_ARCH,
    example_input,
    left_untouched,
    make_model,
)


@pytest.mark.parametrize("importance", ["l1", "l2", "group_norm"])
@pytest.mark.parametrize("arch", [CNN_ARCH, CNN_1D_ARCH], ids=["cnn-2d", "cnn-1d"])
def test_structured_layer_scope_removes_half_of_every_conv_and_keeps_the_output(arch, importance):
    # given a CNN with 8 and 16 channels
    model = make_model(arch)
    cfg = StructuredPruneConfig(importance=importance, scope="layer")
    # when half the channels are removed layer by layer
    with left_untouched(model):
        pruned = prune_structured(model, example_input(arch), cfg, ratio=0.5)
    # then every conv has half its channels, the BatchNorms follow, the classifier keeps 10 outputs
    assert architecture_of(pruned, arch).widths == (4, 8), "each conv should keep half its channels"
    convs = [m for m in pruned.features if isinstance(m, nn.modules.conv._ConvNd)]
    norms = [m for m in pruned.features if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert [n.num_features for n in norms] == [c.out_channels for c in convs], (
        "BatchNorm must follow its conv"
    )
    assert pruned.head[-1].out_features == 10, "the classifier's outputs are never pruned"
    assert pruned.head[-1].in_features == 8, "the classifier's inputs follow the last conv"
    x = torch.randn(5, *arch.input_shape)
    with torch.no_grad():
        assert pruned(x).shape == (5, 10), "the pruned model should give the same output shape"
    assert count_params(pruned)[0] < count_params(model)[0] / 2, "half the channels: under half the params"
    assert not pruned.training, "the pruned model is returned in eval mode"


def test_structured_keeps_batchnorm_statistics_of_the_channels_it_keeps():
    # given a CNN whose BatchNorms hold running statistics
    model = make_model(CNN_ARCH)
    # when half its channels are removed
    pruned = prune_structured(model, example_input(CNN_ARCH), StructuredPruneConfig(), ratio=0.5)
    # then each kept filter is unchanged and its BatchNorm entries moved with it
    conv, norm = model.features[0], model.features[1]
    pruned_conv, pruned_norm = pruned.features[0], pruned.features[1]
    for i, kept_filter in enumerate(pruned_conv.weight):
        # find which original channel this is: its filter is unchanged
        j = int(((conv.weight - kept_filter).flatten(1).abs().sum(1)).argmin())
        assert torch.equal(conv.weight[j], kept_filter), "kept filters should be copied unchanged"
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert getattr(pruned_norm, name)[i] == getattr(norm, name)[j], (
                f"BatchNorm {name} of kept channel {j} should move with it"
            )


def test_structured_l1_removes_the_channels_with_the_smallest_filter_norms():
    # given a CNN and l1 importance
    model = make_model(CNN_ARCH)
    cfg = StructuredPruneConfig(importance="l1")
    # when half the channels are removed
    pruned = prune_structured(model, example_input(CNN_ARCH), cfg, ratio=0.5)
    # then the first conv keeps the 4 filters with the largest L1 norms
    norms = model.features[0].weight.abs().flatten(1).sum(1)
    expected = norms.sort(descending=True).values[:4].sort().values
    kept = pruned.features[0].weight.abs().flatten(1).sum(1).sort().values
    assert torch.allclose(kept, expected), "l1 should keep the 4 filters with the largest L1 norms"


def test_structured_on_an_mlp_halves_hidden_layers_but_not_the_classifier():
    # given an MLP with hidden layers of 16 and 8 neurons
    model = make_model(MLP_ARCH)
    # when half the neurons are removed
    pruned = prune_structured(model, example_input(MLP_ARCH), StructuredPruneConfig(), ratio=0.5)
    # then each hidden layer has half its neurons and the classifier still gives one logit per class
    assert architecture_of(pruned, MLP_ARCH).widths == (8, 4), "each hidden layer should keep half"
    assert pruned.head[-1].out_features == 3, "the classifier keeps one output per class"
    with torch.no_grad():
        assert pruned(torch.randn(4, 30)).shape == (4, 3), "the pruned MLP still gives 3 logits"


@pytest.mark.parametrize("importance", ["l1", "group_norm"])
def test_structured_global_scope_removes_the_ratio_of_all_channels_together(importance):
    # given a CNN with 8 + 16 = 24 channels and one ranking across its layers
    model = make_model(CNN_ARCH)
    cfg = StructuredPruneConfig(scope="global", importance=importance)
    # when half of all channels are removed
    pruned = prune_structured(model, example_input(CNN_ARCH), cfg, ratio=0.5)
    # then about 12 channels remain, in no layer none, and the classifier keeps its outputs
    widths = architecture_of(pruned, CNN_ARCH).widths
    assert abs(sum(widths) - 12) <= 1, f"global 50% of 24 channels should keep ~12, kept {widths}"
    assert all(w >= 1 for w in widths), "no layer may disappear"
    assert pruned.head[-1].out_features == 10, "the classifier's outputs are never pruned"
    with torch.no_grad():
        assert pruned(torch.randn(2, 1, 8, 8)).shape == (2, 10), "the pruned model still runs"


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_structured_conv_and_linear_ratio_override_the_ratio_per_layer_type(scope):
    # given conv_ratio for convs, linear_ratio for hidden linears and ratio 0.5 for the rest
    # (layer scope: that ratio in each layer; global scope: of the type's channels together)
    cnn_cfg = StructuredPruneConfig(scope=scope, conv_ratio=0.25, linear_ratio=0.75)
    mlp_cfg = StructuredPruneConfig(scope=scope, conv_ratio=0.75, linear_ratio=0.25)
    # when a CNN and an MLP are pruned
    cnn = prune_structured(make_model(CNN_ARCH), example_input(CNN_ARCH), cnn_cfg, 0.5)
    mlp = prune_structured(make_model(MLP_ARCH), example_input(MLP_ARCH), mlp_cfg, 0.5)
    # then the override of each one's layer type decides its widths
    cnn_widths, mlp_widths = architecture_of(cnn, CNN_ARCH).widths, architecture_of(mlp, MLP_ARCH).widths
    if scope == "layer":
        assert cnn_widths == (6, 12), f"conv_ratio 0.25 should keep 6 of 8, 12 of 16, got {cnn_widths}"
        assert mlp_widths == (12, 6), f"linear_ratio 0.25 should keep 12 of 16, 6 of 8, got {mlp_widths}"
    else:
        assert abs(sum(cnn_widths) - 18) <= 1, f"conv_ratio 0.25 of 24 channels keeps ~18, got {cnn_widths}"
        assert abs(sum(mlp_widths) - 18) <= 1, f"linear_ratio 0.25 of 24 neurons keeps ~18, got {mlp_widths}"
    assert mlp.head[-1].out_features == 3, "linear_ratio never touches the classifier's outputs"


def test_structured_ratio_zero_returns_an_equal_copy():
    # given a CNN
    model = make_model(CNN_ARCH)
    # when it is pruned with ratio 0 and no override
    pruned = prune_structured(model, example_input(CNN_ARCH), StructuredPruneConfig(), ratio=0.0)
    # then a copy comes back that computes exactly the same
    assert pruned is not model, "a copy is returned, never the caller's model"
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x)), "ratio 0 should change nothing"


def test_structured_needs_a_linear_classifier_to_protect():
    # given a network without any Linear layer (nothing marks the class outputs)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()).eval()
    # when / then pruning it fails, naming the model type
    with pytest.raises(ValueError, match="Sequential has no Linear classifier"):
        prune_structured(model, torch.zeros(1, 1, 8, 8), StructuredPruneConfig(), ratio=0.5)


def test_structured_iterative_reaches_the_target_after_n_steps_with_finetuning_each_step():
    # given a fine-tuning callback that records the widths it sees
    seen: list[tuple[int, tuple[int, ...]]] = []

    def finetune(model: nn.Module, step: int) -> None:
        seen.append((step, architecture_of(model, CNN_ARCH).widths))

    # when half the channels are removed in 3 steps
    pruned = prune_structured(make_model(CNN_ARCH), example_input(CNN_ARCH), StructuredPruneConfig(),
                              ratio=0.5, steps=3, finetune=finetune)
    # then fine-tuning ran after every step, channels went gradually, and the target is reached
    assert [step for step, _ in seen] == [1, 2, 3], "fine-tuning should run once after every step"
    widths = [w for _, w in seen]
    assert widths[0][1] > widths[-1][1], "channels should be removed gradually"
    assert all(a >= b for a, b in zip(widths[0], widths[-1], strict=True)), "widths never grow back"
    assert architecture_of(pruned, CNN_ARCH).widths == (4, 8), "the last step reaches the target"


@pytest.mark.parametrize("arch", [Architecture("cnn", (1, 8, 8), 10, (32, 64)),
                                  Architecture("cnn", (1, 40), 10, (32, 64), kernel_size=5)],
                         ids=["cnn-2d", "cnn-1d"])
def test_structured_removing_half_the_channels_cuts_macs_by_over_half(arch):
    # given a moderately sized CNN (speed-ups themselves are measured by bench/run.py)
    model = make_model(arch)
    # when half its channels are removed
    pruned = prune_structured(model, example_input(arch), StructuredPruneConfig(), ratio=0.5)
    # then the multiply-accumulates fall by over half (each conv loses inputs and outputs)
    macs = sum(compute(model, arch.input_shape)[1].values())
    pruned_macs = sum(compute(pruned, arch.input_shape)[1].values())
    assert pruned_macs < 0.5 * macs, f"50% channels should cut MACs by over half: {macs} -> {pruned_macs}"


@pytest.mark.parametrize("arch", [CNN_ARCH, MLP_ARCH], ids=["cnn", "mlp"])
def test_architecture_of_round_trips_through_build_model_and_load_state_dict(arch):
    # given a pruned model and the architecture read from it
    pruned = prune_structured(make_model(arch), example_input(arch), StructuredPruneConfig(), ratio=0.5)
    described = architecture_of(pruned, arch)
    # when it is serialized, rebuilt and loaded with the pruned weights
    rebuilt = load_model(Architecture.from_dict(described.to_dict()), pruned.state_dict())
    # then the rebuilt model computes the same outputs
    x = torch.randn(4, *arch.input_shape)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned(x)), "the rebuilt model should match the pruned one exactly"
    assert described.input_shape == arch.input_shape and described.n_classes == arch.n_classes


def test_architecture_of_rejects_a_model_of_the_other_family():
    # given a CNN and an MLP architecture / when its widths are read / then it fails naming the family
    with pytest.raises(ValueError, match="needs a MLP"):
        architecture_of(make_model(CNN_ARCH), MLP_ARCH)

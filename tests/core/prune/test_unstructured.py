"""shrinkflow.prune.unstructured: single weights zeroed by ratio, threshold or histogram."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shrinkflow.config import UnstructuredPruneConfig
from shrinkflow.prune import histogram_threshold, prune_unstructured, schedule, weight_sparsity
from tests.core.prune.conftest import CNN_ARCH, left_untouched, make_model


def _conv_and_linear(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


@pytest.mark.parametrize("ratio", [0.5, 0.8, 0.9])
def test_unstructured_global_ratio_reaches_the_requested_sparsity(ratio):
    # given a CNN
    model = make_model(CNN_ARCH)
    # when `ratio` of all its weights are zeroed together
    with left_untouched(model):
        pruned, sparsity = prune_unstructured(model, UnstructuredPruneConfig(scope="global"), ratio)
    # then that fraction of the weights is zero, as reported
    assert sparsity == pytest.approx(ratio, abs=0.01), f"global sparsity should be {ratio}, got {sparsity}"
    assert weight_sparsity(pruned) == sparsity, "the reported sparsity is the model's"


@pytest.mark.parametrize("ratio", [0.5, 0.8])
def test_unstructured_layer_ratio_reaches_the_sparsity_in_every_layer(ratio):
    # given a CNN / when `ratio` of each layer's weights are zeroed
    pruned, sparsity = prune_unstructured(make_model(CNN_ARCH), UnstructuredPruneConfig(scope="layer"), ratio)
    # then every Conv/Linear weight is that sparse, and so are all of them together
    for name, layer in _conv_and_linear(pruned).items():
        layer_value = float((layer.weight == 0).float().mean())
        assert layer_value == pytest.approx(ratio, abs=0.01), (
            f"{name} should be {ratio} sparse, got {layer_value}"
        )
    assert sparsity == pytest.approx(ratio, abs=0.01)


def test_unstructured_zeroes_only_conv_and_linear_weights_and_leaves_plain_tensors():
    # given a CNN
    model = make_model(CNN_ARCH)
    # when 80% of its weights are zeroed
    pruned, _ = prune_unstructured(model, UnstructuredPruneConfig(), 0.8)
    # then no pruning mask or hook is left behind
    state = pruned.state_dict()
    assert not any("_orig" in k or "_mask" in k for k in state), (
        f"masks must be made permanent: {list(state)}"
    )
    assert all(not layer._forward_pre_hooks for layer in pruned.modules()), "no pruning hooks may remain"
    # and only the Conv and Linear weights changed (the classifier's included; biases, BatchNorm not)
    original = model.state_dict()
    changed = {key for key in original if not torch.equal(state[key], original[key])}
    assert changed == {"features.0.weight", "features.4.weight", "head.2.weight"}, (
        f"Conv and Linear weights are the ones pruned, changed: {sorted(changed)}"
    )
    kept = state["features.4.weight"] != 0
    assert torch.equal(state["features.4.weight"][kept], original["features.4.weight"][kept]), (
        "surviving weights keep their values"
    )


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_threshold_zeroes_exactly_the_weights_below_it(scope):
    # given a CNN and a threshold of 0.1
    model = make_model(CNN_ARCH)
    threshold = 0.1
    # when weights below it are zeroed
    pruned, _ = prune_unstructured(model, UnstructuredPruneConfig(method="threshold", scope=scope),
                                   threshold=threshold)
    # then exactly |w| < 0.1 is zero in every layer and the rest is unchanged
    originals = _conv_and_linear(model)
    for name, layer in _conv_and_linear(pruned).items():
        original = originals[name]
        below = original.weight.abs() < threshold
        assert torch.equal(layer.weight == 0, below), f"{name}: exactly |w| < {threshold} should be zero"
        assert torch.equal(layer.weight[~below], original.weight[~below]), f"{name}: the rest is unchanged"


def test_unstructured_threshold_from_the_config_is_used_by_default():
    # given the same threshold once in the config and once as an argument
    model = make_model(CNN_ARCH)
    # when the model is pruned with each
    by_cfg, _ = prune_unstructured(model, UnstructuredPruneConfig(method="threshold", threshold=0.05))
    by_arg, _ = prune_unstructured(model, UnstructuredPruneConfig(method="threshold"), threshold=0.05)
    # then the results are the same
    assert all(torch.equal(a, b) for a, b in zip(by_cfg.state_dict().values(),
                                                 by_arg.state_dict().values(), strict=True))


def test_histogram_threshold_lies_in_the_valley_of_a_bimodal_log_magnitude_histogram():
    # given 2,000 tiny weights around 1e-4 and 1,000 useful ones around 1e-1 (log-normal modes)
    rng = np.random.default_rng(0)
    tiny = 10 ** rng.normal(-4, 0.3, 2000)
    useful = 10 ** rng.normal(-1, 0.3, 1000)
    weights = torch.from_numpy(np.concatenate([tiny, -useful])).float()
    # when a threshold is chosen from their histogram
    threshold = histogram_threshold(weights)
    # then it falls between the two modes
    assert 10**-3.2 < threshold < 10**-1.8, f"the threshold should fall between the modes, got {threshold}"


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_histogram_threshold_is_inside_the_range_and_sparsity_in_0_1(scope):
    # given a CNN's (unimodal) weights
    model = make_model(CNN_ARCH)
    magnitudes = torch.cat([m.weight.detach().abs().flatten() for m in _conv_and_linear(model).values()])
    # when the histogram chooses the threshold
    threshold = histogram_threshold(magnitudes)
    _, sparsity = prune_unstructured(model, UnstructuredPruneConfig(method="histogram", scope=scope))
    # then it lies inside the weights' range and prunes some but not all of them
    assert magnitudes.min() < threshold < magnitudes.max(), "the threshold should lie within the weight range"
    assert 0.0 < sparsity < 1.0, f"the histogram threshold should prune some but not all, got {sparsity}"


def test_histogram_threshold_needs_two_distinct_magnitudes():
    # given weights of a single magnitude / when / then no threshold can split them
    with pytest.raises(ValueError, match="distinct"):
        histogram_threshold(torch.full((10,), 0.5))


def test_unstructured_iterative_reaches_the_target_and_holds_zeros_while_finetuning():
    # given a target of 0.8 in 3 steps and a fine-tuning callback that moves every weight
    steps, target = 3, 0.8
    planned = schedule(target, steps)
    seen: list[int] = []

    def finetune(model: nn.Module, step: int) -> None:
        # fine-tuning moves every trainable weight; pruned ones must stay zero in the forward pass
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
            model(torch.randn(2, 1, 8, 8))
        assert weight_sparsity(model) == pytest.approx(planned[step - 1], abs=0.01), (
            f"after step {step} the sparsity should follow the schedule {planned}"
        )
        seen.append(step)

    # when the CNN is pruned iteratively
    pruned, sparsity = prune_unstructured(make_model(CNN_ARCH), UnstructuredPruneConfig(), target,
                                          steps=steps, finetune=finetune)
    # then each step followed the schedule, was fine-tuned, and the target is reached with plain weights
    assert seen == [1, 2, 3], "fine-tuning should run once after every step"
    assert sparsity == pytest.approx(target, abs=0.01), f"the target {target} should be reached: {sparsity}"
    assert not any("_orig" in k for k in pruned.state_dict()), "masks are permanent at the end"


@pytest.mark.parametrize(("cfg", "ratio", "threshold", "message"), [
    (UnstructuredPruneConfig(method="histogram"), 0.5, None, r"ratio \(0\.5\) was given but .* 'histogram'"),
    (UnstructuredPruneConfig(method="ratio"), None, 0.1, r"threshold \(0\.1\) was given but .* 'ratio'"),
], ids=["ratio-with-histogram", "threshold-with-ratio"])
def test_unstructured_rejects_an_argument_its_method_does_not_read(cfg, ratio, threshold, message):
    # given a ratio or threshold that contradicts prune.unstructured.method
    # when / then pruning fails instead of silently ignoring it
    with pytest.raises(ValueError, match=message):
        prune_unstructured(make_model(CNN_ARCH), cfg, ratio, threshold=threshold)


@pytest.mark.parametrize(("method", "message"), [
    ("ratio", r"no ratio was given"),
    ("threshold", r"prune\.unstructured\.threshold is not set"),
])
def test_unstructured_needs_the_value_its_method_reads(method, message):
    # given method ratio without a ratio, or method threshold without a threshold anywhere
    # when / then pruning fails naming what is missing
    with pytest.raises(ValueError, match=message):
        prune_unstructured(make_model(CNN_ARCH), UnstructuredPruneConfig(method=method))

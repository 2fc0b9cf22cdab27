"""shrinkflow.prune: structured and unstructured pruning, sparse storage, schedules, penalties, search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from shrinkflow.config import (
    MeasureConfig,
    PruneConfig,
    StructuredPruneConfig,
    UnstructuredPruneConfig,
)
from shrinkflow.data import Split
from shrinkflow.export import export_onnx, onnx_predictor
from shrinkflow.measure import compute, count_params, file_size, latencies, torch_predictor, torch_threads
from shrinkflow.models import Architecture, build_model, load_model
from shrinkflow.sparse import dense_state_dict, densify_onnx, sparse_state_dict, sparsify_onnx
from shrinkflow.train import label_loss
from shrinkflow.prune import (
    architecture_of,
    check_ratio,
    group_lasso_penalty,
    histogram_threshold,
    iterative,
    l1_penalty,
    layer_sparsity,
    make_finetune,
    prune_structured,
    prune_unstructured,
    schedule,
    search_ratio,
    sparsity_penalty,
    structured_importance,
    weight_sparsity,
)

CNN_ARCH = Architecture("cnn", (1, 8, 8), 10, (8, 16))
CNN_1D_ARCH = Architecture("cnn", (1, 40), 10, (8, 16), kernel_size=5)
MLP_ARCH = Architecture("mlp", (30,), 3, (16, 8))


def _model(arch: Architecture, seed: int = 0) -> nn.Module:
    """A model with non-trivial BatchNorm statistics (as after training), in eval mode."""
    torch.manual_seed(seed)
    model = build_model(arch)
    model.train()
    with torch.no_grad():
        model(torch.randn(64, *arch.input_shape) * 2 + 0.5)
    return model.eval()


def _example(arch: Architecture) -> torch.Tensor:
    return torch.zeros(1, *arch.input_shape)


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys(), "the caller's model should keep its parameters"
    for key, value in before.items():
        assert torch.equal(after[key], value), f"the caller's model should be untouched, {key} changed"


# ---------------------------------------------------------------------------------------------
# structured
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("importance", ["l1", "l2", "group_norm"])
@pytest.mark.parametrize("arch", [CNN_ARCH, CNN_1D_ARCH], ids=["cnn-2d", "cnn-1d"])
def test_structured_layer_scope_removes_half_of_every_conv_and_keeps_the_output(arch, importance):
    # given a CNN with 8 and 16 channels
    model = _model(arch)
    before = _state_copy(model)
    cfg = StructuredPruneConfig(importance=importance, scope="layer")
    # when half the channels are removed layer by layer
    pruned = prune_structured(model, _example(arch), cfg, ratio=0.5)
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
    _assert_unchanged(model, before)


def test_structured_keeps_batchnorm_statistics_of_the_channels_it_keeps():
    model = _model(CNN_ARCH)
    pruned = prune_structured(model, _example(CNN_ARCH), StructuredPruneConfig(), ratio=0.5)
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
    model = _model(CNN_ARCH)
    cfg = StructuredPruneConfig(importance="l1")
    pruned = prune_structured(model, _example(CNN_ARCH), cfg, ratio=0.5)
    norms = model.features[0].weight.abs().flatten(1).sum(1)
    expected = norms.sort(descending=True).values[:4].sort().values
    kept = pruned.features[0].weight.abs().flatten(1).sum(1).sort().values
    assert torch.allclose(kept, expected), "l1 should keep the 4 filters with the largest L1 norms"


def test_structured_on_an_mlp_halves_hidden_layers_but_not_the_classifier():
    model = _model(MLP_ARCH)
    pruned = prune_structured(model, _example(MLP_ARCH), StructuredPruneConfig(), ratio=0.5)
    assert architecture_of(pruned, MLP_ARCH).widths == (8, 4), "each hidden layer should keep half"
    assert pruned.head[-1].out_features == 3, "the classifier keeps one output per class"
    with torch.no_grad():
        assert pruned(torch.randn(4, 30)).shape == (4, 3), "the pruned MLP still gives 3 logits"


def test_structured_global_scope_removes_the_ratio_of_all_channels_together():
    model = _model(CNN_ARCH)
    for importance in ("l1", "group_norm"):
        cfg = StructuredPruneConfig(scope="global", importance=importance)
        pruned = prune_structured(model, _example(CNN_ARCH), cfg, ratio=0.5)
        widths = architecture_of(pruned, CNN_ARCH).widths
        assert abs(sum(widths) - 12) <= 1, f"global 50% of 24 channels should keep ~12, kept {widths}"
        assert all(w >= 1 for w in widths), "no layer may disappear"
        assert pruned.head[-1].out_features == 10, "the classifier's outputs are never pruned"
        with torch.no_grad():
            assert pruned(torch.randn(2, 1, 8, 8)).shape == (2, 10), "the pruned model still runs"


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_structured_conv_and_linear_ratio_override_the_ratio_per_layer_type(scope):
    # conv_ratio applies to convs, linear_ratio to hidden linears; `ratio` to the rest. Layer
    # scope: that ratio in each layer; global scope: that ratio of the type's channels together
    cnn = prune_structured(_model(CNN_ARCH), _example(CNN_ARCH),
                           StructuredPruneConfig(scope=scope, conv_ratio=0.25, linear_ratio=0.75), 0.5)
    mlp = prune_structured(_model(MLP_ARCH), _example(MLP_ARCH),
                           StructuredPruneConfig(scope=scope, conv_ratio=0.75, linear_ratio=0.25), 0.5)
    cnn_widths, mlp_widths = architecture_of(cnn, CNN_ARCH).widths, architecture_of(mlp, MLP_ARCH).widths
    if scope == "layer":
        assert cnn_widths == (6, 12), f"conv_ratio 0.25 should keep 6 of 8, 12 of 16, got {cnn_widths}"
        assert mlp_widths == (12, 6), f"linear_ratio 0.25 should keep 12 of 16, 6 of 8, got {mlp_widths}"
    else:
        assert abs(sum(cnn_widths) - 18) <= 1, f"conv_ratio 0.25 of 24 channels keeps ~18, got {cnn_widths}"
        assert abs(sum(mlp_widths) - 18) <= 1, f"linear_ratio 0.25 of 24 neurons keeps ~18, got {mlp_widths}"
    assert mlp.head[-1].out_features == 3, "linear_ratio never touches the classifier's outputs"


def test_structured_ratio_zero_returns_an_equal_copy():
    model = _model(CNN_ARCH)
    pruned = prune_structured(model, _example(CNN_ARCH), StructuredPruneConfig(), ratio=0.0)
    assert pruned is not model, "a copy is returned, never the caller's model"
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x)), "ratio 0 should change nothing"


@pytest.mark.parametrize("arch", [CNN_ARCH, MLP_ARCH], ids=["cnn", "mlp"])
def test_architecture_of_round_trips_through_build_model_and_load_state_dict(arch):
    # given a pruned model and the architecture read from it
    pruned = prune_structured(_model(arch), _example(arch), StructuredPruneConfig(), ratio=0.5)
    described = architecture_of(pruned, arch)
    # when it is serialized, rebuilt and loaded with the pruned weights
    rebuilt = load_model(Architecture.from_dict(described.to_dict()), pruned.state_dict())
    # then the rebuilt model computes the same outputs
    x = torch.randn(4, *arch.input_shape)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned(x)), "the rebuilt model should match the pruned one exactly"
    assert described.input_shape == arch.input_shape and described.n_classes == arch.n_classes


def test_architecture_of_rejects_a_model_of_the_other_family():
    with pytest.raises(ValueError, match="needs a MLP"):
        architecture_of(_model(CNN_ARCH), MLP_ARCH)


def test_structured_iterative_reaches_the_target_after_n_steps_with_finetuning_each_step():
    seen: list[tuple[int, tuple[int, ...]]] = []

    def finetune(model: nn.Module, step: int) -> None:
        seen.append((step, architecture_of(model, CNN_ARCH).widths))

    pruned = prune_structured(_model(CNN_ARCH), _example(CNN_ARCH), StructuredPruneConfig(),
                              ratio=0.5, steps=3, finetune=finetune)
    assert [step for step, _ in seen] == [1, 2, 3], "fine-tuning should run once after every step"
    widths = [w for _, w in seen]
    assert widths[0][1] > widths[-1][1], "channels should be removed gradually"
    assert all(a >= b for a, b in zip(widths[0], widths[-1])), "widths never grow back"
    assert architecture_of(pruned, CNN_ARCH).widths == (4, 8), "the last step reaches the target"


def test_structured_speedup__50_percent_channels_cut_macs_and_report_latency():
    # a moderately sized CNN; the latency ratio is reported, not asserted (machines differ)
    for arch in (Architecture("cnn", (1, 8, 8), 10, (32, 64)),
                 Architecture("cnn", (1, 40), 10, (32, 64), kernel_size=5)):
        model = _model(arch)
        pruned = prune_structured(model, _example(arch), StructuredPruneConfig(), ratio=0.5)
        macs = sum(compute(model, arch.input_shape)[1].values())
        pruned_macs = sum(compute(pruned, arch.input_shape)[1].values())
        assert pruned_macs < 0.5 * macs, f"50% channels should cut MACs by over half: {macs} -> {pruned_macs}"
        x = np.random.default_rng(0).standard_normal((256, *arch.input_shape)).astype(np.float32)
        cfg = MeasureConfig(warmup=20, repeats=200, throughput_repeats=5)
        with torch_threads(1):
            timed = latencies({"base": lambda: torch_predictor(model),
                               "small": lambda: torch_predictor(pruned)}, x, cfg)
            base, small = timed["base"], timed["small"]
        print(f"\n{arch.input_shape} widths {arch.widths}: MACs {macs} -> {pruned_macs} "
              f"({macs / pruned_macs:.2f}x), torch p50 batch-1 latency "
              f"{base['latency_ms_p50_b1']:.4f} -> {small['latency_ms_p50_b1']:.4f} ms "
              f"({base['latency_ms_p50_b1'] / small['latency_ms_p50_b1']:.2f}x), throughput b256 "
              f"{small['throughput_sps_b256'] / base['throughput_sps_b256']:.2f}x")


# ---------------------------------------------------------------------------------------------
# unstructured
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.5, 0.8, 0.9])
def test_unstructured_global_ratio_reaches_the_requested_sparsity(ratio):
    model = _model(CNN_ARCH)
    before = _state_copy(model)
    pruned, sparsity = prune_unstructured(model, UnstructuredPruneConfig(scope="global"), ratio)
    assert sparsity == pytest.approx(ratio, abs=0.01), f"global sparsity should be {ratio}, got {sparsity}"
    assert weight_sparsity(pruned) == sparsity, "the reported sparsity is the model's"
    _assert_unchanged(model, before)


@pytest.mark.parametrize("ratio", [0.5, 0.8])
def test_unstructured_layer_ratio_reaches_the_sparsity_in_every_layer(ratio):
    pruned, sparsity = prune_unstructured(_model(CNN_ARCH), UnstructuredPruneConfig(scope="layer"), ratio)
    for name, layer_value in layer_sparsity(pruned).items():
        assert layer_value == pytest.approx(ratio, abs=0.01), (
            f"{name} should be {ratio} sparse, got {layer_value}"
        )
    assert sparsity == pytest.approx(ratio, abs=0.01)


def test_unstructured_zeroes_only_conv_and_linear_weights_and_leaves_plain_tensors():
    model = _model(CNN_ARCH)
    pruned, _ = prune_unstructured(model, UnstructuredPruneConfig(), 0.8)
    state = pruned.state_dict()
    assert not any("_orig" in k or "_mask" in k for k in state), (
        f"masks must be made permanent: {list(state)}"
    )
    assert all(not layer._forward_pre_hooks for layer in pruned.modules()), "no pruning hooks may remain"
    original = model.state_dict()
    for key in original:
        if not key.endswith("weight") or key.startswith("features.1") or key.startswith("features.5"):
            assert torch.equal(state[key], original[key]), f"{key} (bias/BatchNorm) should be untouched"
    assert set(layer_sparsity(pruned)) == {"features.0", "features.4", "head.2"}, (
        "Conv and Linear layers (the classifier included) are the ones pruned"
    )
    kept = state["features.4.weight"] != 0
    assert torch.equal(state["features.4.weight"][kept], original["features.4.weight"][kept]), (
        "surviving weights keep their values"
    )


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_threshold_zeroes_exactly_the_weights_below_it(scope):
    model = _model(CNN_ARCH)
    threshold = 0.1
    pruned, _ = prune_unstructured(model, UnstructuredPruneConfig(method="threshold", scope=scope),
                                   threshold=threshold)
    for (name, layer), (_, original) in zip(
        ((n, m) for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)),
        ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)),
    ):
        below = original.weight.abs() < threshold
        assert torch.equal(layer.weight == 0, below), f"{name}: exactly |w| < {threshold} should be zero"
        assert torch.equal(layer.weight[~below], original.weight[~below]), f"{name}: the rest is unchanged"


def test_unstructured_threshold_from_the_config_is_used_by_default():
    model = _model(CNN_ARCH)
    by_cfg, _ = prune_unstructured(model, UnstructuredPruneConfig(method="threshold", threshold=0.05))
    by_arg, _ = prune_unstructured(model, UnstructuredPruneConfig(method="threshold"), threshold=0.05)
    assert all(torch.equal(a, b) for a, b in zip(by_cfg.state_dict().values(), by_arg.state_dict().values()))


def test_histogram_threshold_lies_in_the_valley_of_a_bimodal_log_magnitude_histogram():
    # 2,000 tiny weights around 1e-4 and 1,000 useful ones around 1e-1 (log-normal modes)
    rng = np.random.default_rng(0)
    tiny = 10 ** rng.normal(-4, 0.3, 2000)
    useful = 10 ** rng.normal(-1, 0.3, 1000)
    weights = torch.from_numpy(np.concatenate([tiny, -useful])).float()
    threshold = histogram_threshold(weights)
    assert 10**-3.2 < threshold < 10**-1.8, f"the threshold should fall between the modes, got {threshold}"


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_histogram_threshold_is_inside_the_range_and_sparsity_in_0_1(scope):
    model = _model(CNN_ARCH)
    magnitudes = torch.cat([m.weight.detach().abs().flatten() for m in model.modules()
                            if isinstance(m, nn.Conv2d | nn.Linear)])
    threshold = histogram_threshold(magnitudes)
    assert magnitudes.min() < threshold < magnitudes.max(), "the threshold should lie within the weight range"
    _, sparsity = prune_unstructured(model, UnstructuredPruneConfig(method="histogram", scope=scope))
    assert 0.0 < sparsity < 1.0, f"the histogram threshold should prune some but not all, got {sparsity}"


def test_histogram_threshold_needs_two_distinct_magnitudes():
    with pytest.raises(ValueError, match="distinct"):
        histogram_threshold(torch.full((10,), 0.5))


def test_unstructured_iterative_reaches_the_target_and_holds_zeros_while_finetuning():
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

    pruned, sparsity = prune_unstructured(_model(CNN_ARCH), UnstructuredPruneConfig(), target,
                                          steps=steps, finetune=finetune)
    assert seen == [1, 2, 3], "fine-tuning should run once after every step"
    assert sparsity == pytest.approx(target, abs=0.01), f"the target {target} should be reached: {sparsity}"
    assert not any("_orig" in k for k in pruned.state_dict()), "masks are permanent at the end"


def test_schedule_is_cubic_increasing_and_ends_at_the_target():
    ratios = schedule(0.8, 4)
    assert ratios[-1] == 0.8, "the last step reaches the target exactly"
    assert all(a < b for a, b in zip(ratios, ratios[1:])), "the ratio grows every step"
    steps_taken = np.diff([0.0, *ratios])
    assert all(a > b for a, b in zip(steps_taken, steps_taken[1:])), "cubic: big steps first, small last"
    assert ratios[0] == pytest.approx(0.8 * (1 - 0.75**3)), "r_1 = target * (1 - (1 - 1/n)^3)"
    assert schedule(0.5, 1) == [0.5], "one step is one-shot pruning"


@pytest.mark.parametrize("kind", ["structured", "unstructured"])
def test_iterative_with_real_finetuning_through_fit(separable, cpu_train_cfg, kind):
    # given a 2-class problem, a small MLP and a config with 2 steps of 1 epoch with a penalty
    train_split, val_split = separable
    arch = Architecture("mlp", (4,), 2, (16, 16))
    model = _model(arch)
    cfg = PruneConfig(steps=2, finetune_epochs=1, penalty="l1" if kind == "unstructured" else "group_lasso",
                      penalty_weight=1e-4)
    logged: list[int] = []
    finetune = make_finetune(train_split, val_split, cpu_train_cfg, cfg,
                             on_epoch_end=lambda step, log: logged.append(step))
    # when it is pruned iteratively
    pruned, achieved = iterative(model, cfg, kind, 0.5, example_input=_example(arch), finetune=finetune)
    # then each step was fine-tuned for one epoch and the model still learns the problem
    assert logged == [1, 2], f"one epoch after each of the 2 steps, got steps {logged}"
    if kind == "unstructured":
        assert achieved == pytest.approx(0.5, abs=0.01), f"sparsity should be 0.5, got {achieved}"
    else:
        assert architecture_of(pruned, arch).widths == (8, 8), "half the neurons of each layer removed"
        assert 0.4 < achieved < 0.8, f"about half or more of the params removed, got {achieved}"
    accuracy = float((torch_predictor(pruned)(val_split.x).argmax(1) == val_split.y).mean())
    assert accuracy >= 0.9, f"the fine-tuned pruned model should still separate the blobs, got {accuracy}"


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
    finetune(_model(Architecture("mlp", (4,), 2, (8,))), 1)
    # then the loss saw every training row once
    assert sum(calls) == len(train_split), f"{sum(calls)} rows seen, expected {len(train_split)}"


def test_make_finetune_is_none_without_finetune_epochs(separable, cpu_train_cfg):
    train_split, val_split = separable
    assert make_finetune(train_split, val_split, cpu_train_cfg, PruneConfig(finetune_epochs=0)) is None


# ---------------------------------------------------------------------------------------------
# sparse storage
# ---------------------------------------------------------------------------------------------
def test_sparse_state_dict_file_is_smaller_and_restores_exactly_with_weights_only(tmp_path):
    # given a CNN with 80% of its weights zeroed
    arch = Architecture("cnn", (1, 8, 8), 10, (16, 32))
    pruned, _ = prune_unstructured(_model(arch), UnstructuredPruneConfig(), 0.8)
    dense = pruned.state_dict()
    # when it is saved dense and sparse
    torch.save(dense, tmp_path / "dense.pt")
    torch.save(sparse_state_dict(dense), tmp_path / "sparse.pt")
    # then the sparse file is much smaller
    ratio = file_size(tmp_path / "sparse.pt") / file_size(tmp_path / "dense.pt")
    assert ratio < 0.6, f"at 80% sparsity the file should shrink below 60%, got {ratio:.2f}"
    # and loads with weights_only=True, restores every tensor exactly and rebuilds the model
    restored = dense_state_dict(torch.load(tmp_path / "sparse.pt", weights_only=True))
    assert restored.keys() == dense.keys(), "every key should come back"
    for key, value in dense.items():
        assert restored[key].dtype == value.dtype and torch.equal(restored[key], value), f"{key} differs"
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(load_model(arch, restored)(x), pruned(x)), "the reloaded model should match"


def test_sparse_state_dict_leaves_dense_and_integer_tensors_alone():
    dense_weight = torch.randn(64, 64)
    state = {"w": dense_weight, "n": torch.tensor(5), "tiny": torch.zeros(4)}
    sparse = sparse_state_dict(state)
    assert sparse.keys() == state.keys(), "dense, integer and tiny tensors are kept as they are"
    assert sparse["w"] is dense_weight


def test_dense_state_dict_rejects_an_incomplete_sparse_entry():
    sparse = sparse_state_dict({"w": torch.zeros(64, 64).index_fill_(0, torch.tensor([3]), 1.0)})
    del sparse["w@mask"]
    with pytest.raises(ValueError, match="'w'"):
        dense_state_dict(sparse)


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    """For 80% and 90% sparsity: (dense ONNX path, sparse ONNX path) of a small CNN."""
    arch = Architecture("cnn", (1, 8, 8), 10, (32, 64))
    folder = tmp_path_factory.mktemp("sparse-onnx")
    pairs = {}
    for ratio in (0.8, 0.9):
        pruned, _ = prune_unstructured(_model(arch), UnstructuredPruneConfig(), ratio)
        dense = export_onnx(pruned, arch.input_shape, folder / f"dense-{ratio}.onnx")
        pairs[ratio] = (dense, sparsify_onnx(dense, folder / f"sparse-{ratio}.onnx"))
    return arch, pairs


@pytest.mark.parametrize("ratio", [0.8, 0.9])
def test_sparsify_onnx_shrinks_the_file_and_onnx_runtime_gives_the_same_logits(onnx_pair, ratio):
    import onnx

    arch, pairs = onnx_pair
    dense, sparse = pairs[ratio]
    assert len(onnx.load(str(sparse)).graph.sparse_initializer) >= 2, "conv weights should be stored sparse"
    size_ratio = file_size(sparse) / file_size(dense)
    print(f"\nONNX {arch.widths} at {ratio:.0%} sparsity: {file_size(dense)} -> {file_size(sparse)} bytes "
          f"({size_ratio:.2f})")
    assert size_ratio < 0.6, f"the sparse ONNX file should be much smaller, got {size_ratio:.2f}"
    x = np.random.default_rng(1).standard_normal((7, *arch.input_shape)).astype(np.float32)
    np.testing.assert_array_equal(onnx_predictor(sparse)(x), onnx_predictor(dense)(x),
                                  err_msg="ONNX Runtime should give identical logits for the sparse file")


def test_sparsify_onnx_with_int64_indices_passes_the_onnx_checker(onnx_pair, tmp_path):
    import onnx

    arch, pairs = onnx_pair
    dense, _ = pairs[0.9]
    strict = sparsify_onnx(dense, tmp_path / "strict.onnx", compact_indices=False)
    onnx.checker.check_model(onnx.load(str(strict)))
    assert file_size(strict) < file_size(dense), "int64 indices still shrink the file at 90% sparsity"
    x = np.random.default_rng(2).standard_normal((3, *arch.input_shape)).astype(np.float32)
    np.testing.assert_array_equal(onnx_predictor(strict)(x), onnx_predictor(dense)(x))


def test_densify_onnx_restores_the_dense_initializers_exactly(onnx_pair, tmp_path):
    import onnx
    from onnx import numpy_helper

    _, pairs = onnx_pair
    dense, sparse = pairs[0.8]
    restored = onnx.load(str(densify_onnx(sparse, tmp_path / "restored.onnx")))
    assert not restored.graph.sparse_initializer, "every sparse initializer should be dense again"
    original = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(dense)).graph.initializer}
    back = {i.name: numpy_helper.to_array(i) for i in restored.graph.initializer}
    assert original.keys() == back.keys()
    for name, array in original.items():
        np.testing.assert_array_equal(back[name], array, err_msg=f"{name} changed")


def test_int8_weights_of_a_pruned_model_stay_sparse_and_agree(onnx_pair, tmp_path):
    # given the 80%-sparse CNN, densified, stored as int8 weights, then sparsified again
    from shrinkflow.quantize import to_int8_weights

    arch, pairs = onnx_pair
    dense, sparse = pairs[0.8]
    int8 = to_int8_weights(densify_onnx(sparse, tmp_path / "d.onnx"), tmp_path / "int8.onnx")
    int8_sparse = sparsify_onnx(int8, tmp_path / "int8-sparse.onnx")
    # then the file is smaller than both the fp32 sparse and the int8 dense files
    assert file_size(int8_sparse) < 0.6 * file_size(sparse), "int8 values: a quarter of the bytes"
    assert file_size(int8_sparse) < file_size(int8), "the int8 zeros should be stored sparse too"
    # and ONNX Runtime picks the same classes as the float model
    x = np.random.default_rng(3).standard_normal((64, *arch.input_shape)).astype(np.float32)
    agreement = (onnx_predictor(int8_sparse)(x).argmax(1) == onnx_predictor(dense)(x).argmax(1)).mean()
    assert agreement >= 0.95, f"int8 sparse agrees with fp32 on {agreement:.2f} of the rows"


# ---------------------------------------------------------------------------------------------
# penalties
# ---------------------------------------------------------------------------------------------
def _tiny_module() -> nn.Module:
    module = nn.Sequential(nn.Conv1d(1, 2, 2, bias=True), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        module[0].weight.copy_(torch.tensor([[[1.0, -2.0]], [[0.0, 0.0]]]))  # one zero channel
        module[0].bias.fill_(100.0)  # biases are not penalized
        module[2].weight.copy_(torch.tensor([[3.0, -4.0], [0.5, 0.0]]))
    return module


def test_l1_penalty_equals_the_hand_computed_sum_of_absolute_weights():
    module, dummy = _tiny_module(), torch.zeros(1)
    value = l1_penalty(0.1)(module, dummy, dummy, dummy)
    assert value.item() == pytest.approx(0.1 * (1 + 2 + 0 + 0 + 3 + 4 + 0.5 + 0)), "0.1 * sum |w|"


def test_group_lasso_penalty_equals_the_sum_of_row_norms():
    module, dummy = _tiny_module(), torch.zeros(1)
    value = group_lasso_penalty(2.0)(module, dummy, dummy, dummy)
    expected = 2.0 * (5**0.5 + 0.0 + 5.0 + 0.5)
    assert value.item() == pytest.approx(expected), "2 * (|(1,-2)| + |0| + |(3,-4)| + |(0.5,0)|)"


@pytest.mark.parametrize("kind", ["l1", "group_lasso"])
def test_penalties_are_non_negative_and_differentiable_even_at_zero_rows(kind):
    module, dummy = _tiny_module(), torch.zeros(1)
    value = sparsity_penalty(kind, 1e-3)(module, dummy, dummy, dummy)
    assert value.item() >= 0, "a penalty is never negative"
    value.backward()
    for name, p in module.named_parameters():
        if name.endswith("weight"):
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name} needs a finite gradient"
    assert torch.equal(module[0].weight.grad[1], torch.zeros(1, 2)), "a zero row gets a zero subgradient"


def test_sparsity_penalty_none_means_no_extra_loss():
    assert sparsity_penalty("none", 1e-4) is None


# ---------------------------------------------------------------------------------------------
# accuracy-aware search
# ---------------------------------------------------------------------------------------------
class _Fake(nn.Module):
    """Predicts class 0 (the truth) for inputs below `correct`, class 1 above: accuracy correct/100."""

    def __init__(self, correct: int) -> None:
        super().__init__()
        self.correct = correct

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wrong = (x[:, 0] >= self.correct).long()
        return nn.functional.one_hot(wrong, 2).float()


EVALUATION = Split(np.arange(100, dtype=np.float32)[:, None], np.zeros(100, dtype=np.int64))
DROP_PP = {0.3: 0, 0.5: 1, 0.7: 3, 0.8: 10, 0.9: 30}  # accuracy falls with the ratio


def test_search_ratio_keeps_the_highest_ratio_within_the_drop_and_records_the_tries():
    tried: list[float] = []

    def prune_at(ratio: float) -> nn.Module:
        tried.append(ratio)
        return _Fake(100 - DROP_PP[ratio])

    result = search_ratio(_Fake(100), prune_at, EVALUATION, max_drop_pp=2.0, ratios=[0.9, 0.3, 0.7, 0.5, 0.8])
    assert result.ratio == 0.5, f"0.5 loses 1 pp (<= 2), 0.7 loses 3: expected 0.5, got {result.ratio}"
    assert isinstance(result.model, _Fake) and result.model.correct == 99, "the accepted model is returned"
    assert result.teacher_accuracy == 1.0
    assert tried == [0.3, 0.5, 0.7], "ratios are tried ascending and the search stops at the first failure"
    assert result.records() == [
        {"ratio": 0.3, "accuracy": 1.0, "drop_pp": 0.0, "accepted": True},
        {"ratio": 0.5, "accuracy": 0.99, "drop_pp": pytest.approx(1.0), "accepted": True},
        {"ratio": 0.7, "accuracy": 0.97, "drop_pp": pytest.approx(3.0), "accepted": False},
    ], "every try should be recorded with its accuracy, drop and verdict"


def test_search_ratio_exhaustive_tries_every_ratio_and_accepts_a_drop_equal_to_the_limit():
    result = search_ratio(_Fake(100), lambda r: _Fake(100 - DROP_PP[r]), EVALUATION, max_drop_pp=3.0,
                          ratios=(0.3, 0.5, 0.7, 0.8, 0.9), stop_at_first_failure=False)
    assert [t.ratio for t in result.tries] == [0.3, 0.5, 0.7, 0.8, 0.9], "all ratios tried"
    assert [t.accepted for t in result.tries] == [True, True, True, False, False]
    assert result.ratio == 0.7, "a drop of exactly 3 pp is within a 3 pp limit"


def test_search_ratio_returns_none_when_no_ratio_is_acceptable():
    result = search_ratio(_Fake(100), lambda r: _Fake(50), EVALUATION, max_drop_pp=1.0, ratios=(0.3, 0.5))
    assert result.ratio is None and result.model is None, "nothing acceptable: no ratio, no model"
    assert len(result.tries) == 1 and not result.tries[0].accepted


def test_search_ratio_works_with_real_unstructured_pruning(separable, cpu_train_cfg):
    from shrinkflow.train import fit

    train_split, val_split = separable
    teacher = _model(Architecture("mlp", (4,), 2, (16,)))
    fit(teacher, train_split, val_split, cpu_train_cfg, progress=False)
    cfg = UnstructuredPruneConfig()
    result = search_ratio(teacher, lambda r: prune_unstructured(teacher, cfg, r)[0], val_split,
                          max_drop_pp=1.0, ratios=(0.3, 0.5))
    assert result.ratio is not None and all(t.accepted for t in result.tries[:-1])
    assert weight_sparsity(result.model) == pytest.approx(result.ratio, abs=0.01)


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [1.5, -0.1, 1.0])
def test_bad_ratios_fail_naming_the_key_and_the_value(ratio):
    model = _model(CNN_ARCH)
    with pytest.raises(ValueError, match=rf"prune\.structured\.ratios: {ratio} is not in \[0, 1\)"):
        prune_structured(model, _example(CNN_ARCH), StructuredPruneConfig(), ratio)
    with pytest.raises(ValueError, match=rf"prune\.unstructured\.ratios: {ratio} is not in \[0, 1\)"):
        prune_unstructured(model, UnstructuredPruneConfig(), ratio)
    with pytest.raises(ValueError, match=rf"prune\.search_ratios: {ratio}"):
        search_ratio(model, lambda r: model, EVALUATION, 1.0, [0.5, ratio])
    with pytest.raises(ValueError, match=rf"{ratio}"):
        check_ratio(ratio, "x")


def test_unknown_importance_fails_naming_the_value():
    with pytest.raises(ValidationError, match="l3"):
        StructuredPruneConfig(importance="l3")
    expected = r"prune\.structured\.importance: 'l3' is not one of l1, l2, group_norm"
    with pytest.raises(ValueError, match=expected):
        structured_importance("l3")
    cfg = StructuredPruneConfig.model_construct(importance="taylor", scope="layer",
                                                conv_ratio=None, linear_ratio=None)
    with pytest.raises(ValueError, match="'taylor'"):
        prune_structured(_model(CNN_ARCH), _example(CNN_ARCH), cfg, 0.5)


def test_other_bad_inputs_fail_naming_the_key():
    model = _model(CNN_ARCH)
    with pytest.raises(ValueError, match=r"prune\.penalty: 'l3'"):
        sparsity_penalty("l3", 1e-4)
    with pytest.raises(ValueError, match=r"prune\.penalty_weight: -1"):
        sparsity_penalty("l1", -1)
    with pytest.raises(ValueError, match=r"prune\.steps: 0"):
        prune_unstructured(model, UnstructuredPruneConfig(), 0.5, steps=0)
    with pytest.raises(ValueError, match=r"prune\.max_accuracy_drop_pp: 0"):
        search_ratio(model, lambda r: model, EVALUATION, 0, [0.5])
    with pytest.raises(ValueError, match=r"prune\.structured\.conv_ratio: 1\.2"):
        prune_structured(model, _example(CNN_ARCH),
                         StructuredPruneConfig.model_construct(importance="l1", scope="layer",
                                                               conv_ratio=1.2, linear_ratio=None), 0.5)
    with pytest.raises(ValueError, match=r"prune\.unstructured\.threshold is not set"):
        prune_unstructured(model, UnstructuredPruneConfig(method="threshold"))
    with pytest.raises(ValueError, match=r"no ratio was given"):
        prune_unstructured(model, UnstructuredPruneConfig(method="ratio"))
    with pytest.raises(ValueError, match=r"method is 'histogram'"):
        prune_unstructured(model, UnstructuredPruneConfig(method="histogram"), 0.5)

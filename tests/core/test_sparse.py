"""shrinkflow.sparse: zeroed weights stored compactly in state dicts and ONNX files, and restored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shrinkflow.config import UnstructuredPruneConfig
from shrinkflow.export import export_onnx, onnx_predictor
from shrinkflow.measure import file_size
from shrinkflow.models import Architecture, build_model, load_model
from shrinkflow.prune import prune_unstructured
from shrinkflow.sparse import dense_state_dict, densify_onnx, sparse_state_dict, sparsify_onnx


def _pruned(arch: Architecture, ratio: float) -> nn.Module:
    """A CNN with `ratio` of its Conv/Linear weights zeroed by magnitude."""
    torch.manual_seed(0)
    return prune_unstructured(build_model(arch).eval(), UnstructuredPruneConfig(), ratio)[0]


# ---------------------------------------------------------------------------------------------
# state dicts
# ---------------------------------------------------------------------------------------------
def test_sparse_state_dict_file_is_smaller_and_restores_exactly_with_weights_only(tmp_path):
    # given a CNN with 80% of its weights zeroed
    arch = Architecture("cnn", (1, 8, 8), 10, (16, 32))
    pruned = _pruned(arch, 0.8)
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
    # given a dense weight, an integer counter and a tiny all-zero tensor
    dense_weight = torch.randn(64, 64)
    state = {"w": dense_weight, "n": torch.tensor(5), "tiny": torch.zeros(4)}
    # when the state dict is made sparse
    sparse = sparse_state_dict(state)
    # then none of them is worth storing sparse: they are kept as they are
    assert sparse.keys() == state.keys(), "dense, integer and tiny tensors are kept as they are"
    assert sparse["w"] is dense_weight


def test_dense_state_dict_rejects_an_incomplete_sparse_entry():
    # given a sparse entry whose mask is missing / when / then restoring fails naming the tensor
    sparse = sparse_state_dict({"w": torch.zeros(64, 64).index_fill_(0, torch.tensor([3]), 1.0)})
    del sparse["w@mask"]
    with pytest.raises(ValueError, match="'w'"):
        dense_state_dict(sparse)


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    """For 80% and 90% sparsity: (dense ONNX path, sparse ONNX path) of a small CNN."""
    arch = Architecture("cnn", (1, 8, 8), 10, (32, 64))
    folder = tmp_path_factory.mktemp("sparse-onnx")
    pairs = {}
    for ratio in (0.8, 0.9):
        dense = export_onnx(_pruned(arch, ratio), arch.input_shape, folder / f"dense-{ratio}.onnx")
        pairs[ratio] = (dense, sparsify_onnx(dense, folder / f"sparse-{ratio}.onnx"))
    return arch, pairs


@pytest.mark.parametrize("ratio", [0.8, 0.9])
def test_sparsify_onnx_shrinks_the_file_and_onnx_runtime_gives_the_same_logits(onnx_pair, ratio):
    import onnx

    # given the dense and sparse ONNX files of a pruned CNN
    arch, pairs = onnx_pair
    dense, sparse = pairs[ratio]
    # then the conv weights are stored sparse, the file is much smaller
    assert len(onnx.load(str(sparse)).graph.sparse_initializer) >= 2, "conv weights should be stored sparse"
    size_ratio = file_size(sparse) / file_size(dense)
    assert size_ratio < 0.6, f"the sparse ONNX file should be much smaller, got {size_ratio:.2f}"
    # and ONNX Runtime computes the same logits from both
    x = np.random.default_rng(1).standard_normal((7, *arch.input_shape)).astype(np.float32)
    np.testing.assert_array_equal(onnx_predictor(sparse)(x), onnx_predictor(dense)(x),
                                  err_msg="ONNX Runtime should give identical logits for the sparse file")


def test_sparsify_onnx_with_int64_indices_passes_the_onnx_checker(onnx_pair, tmp_path):
    import onnx

    # given the dense ONNX file of a 90%-sparse CNN
    arch, pairs = onnx_pair
    dense, _ = pairs[0.9]
    # when it is sparsified with the int64 indices the ONNX spec asks for
    strict = sparsify_onnx(dense, tmp_path / "strict.onnx", compact_indices=False)
    # then the checker accepts it, it is still smaller, and it computes the same logits
    onnx.checker.check_model(onnx.load(str(strict)))
    assert file_size(strict) < file_size(dense), "int64 indices still shrink the file at 90% sparsity"
    x = np.random.default_rng(2).standard_normal((3, *arch.input_shape)).astype(np.float32)
    np.testing.assert_array_equal(onnx_predictor(strict)(x), onnx_predictor(dense)(x))


def test_densify_onnx_restores_the_dense_initializers_exactly(onnx_pair, tmp_path):
    import onnx
    from onnx import numpy_helper

    # given a sparse ONNX file / when it is densified
    _, pairs = onnx_pair
    dense, sparse = pairs[0.8]
    restored = onnx.load(str(densify_onnx(sparse, tmp_path / "restored.onnx")))
    # then every initializer is dense again, exactly as in the original file
    assert not restored.graph.sparse_initializer, "every sparse initializer should be dense again"
    original = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(dense)).graph.initializer}
    back = {i.name: numpy_helper.to_array(i) for i in restored.graph.initializer}
    assert original.keys() == back.keys()
    for name, array in original.items():
        np.testing.assert_array_equal(back[name], array, err_msg=f"{name} changed")


def test_int8_weights_of_a_pruned_model_stay_sparse_and_agree(onnx_pair, tmp_path):
    from shrinkflow.quantize import to_int8_weights

    # given the 80%-sparse CNN, densified, stored as int8 weights, then sparsified again
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

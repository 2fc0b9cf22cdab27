"""The sparse file formats: zeroed weights stored compactly, in torch state dicts and ONNX files.

Zeros alone do not shrink a file. After unstructured pruning most weights are exact zeros, and
these functions store such tensors as their non-zero values plus positions, then restore them:

  sparse_state_dict / dense_state_dict   a state dict (for torch.save, read back with
                                         torch.load(weights_only=True)): values + a packed bitmask
  sparsify_onnx / densify_onnx           an ONNX file: `graph.sparse_initializer` (COO), which
                                         ONNX Runtime densifies when the session loads
  check_onnx                             onnx.checker on a model that may hold sparse weights

Only the files shrink: inference runs on dense tensors, at the same speed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the ONNX half needs no torch (the server and the ensemble stage use it)
    import onnx
    import torch

# suffixes of the three tensors a sparse weight is stored as in `sparse_state_dict`
VALUES, MASK, SHAPE = "@values", "@mask", "@shape"
# torch.save writes every tensor as its own zip record (~250 bytes); two extra records must pay off
_RECORD_OVERHEAD_BYTES = 512


# ---------------------------------------------------------------------------------------------
def sparse_state_dict(state: Mapping[str, torch.Tensor],
                      min_sparsity: float = 0.25) -> dict[str, torch.Tensor]:
    """`state` with each sufficiently sparse float tensor stored as values + a packed bitmask.

    A sparse tensor `key` becomes three tensors: `key@values` (the non-zeros, same dtype, in
    row-major order), `key@mask` (uint8, one bit per element, numpy packbits order) and
    `key@shape` (int64). That costs nnz * itemsize + n/8 bytes instead of n * itemsize: at 80%
    sparsity about 23% of fp32, less than CSR with int32 indices (40%), and it stays below dense
    for any sparsity over 1/32. Only tensors with sparsity >= `min_sparsity` whose saving beats
    the cost of the two extra records are converted. Everything is a plain tensor, so the result
    is saved with torch.save and read back with torch.load(weights_only=True); restore it with
    `dense_state_dict`.
    """
    import torch

    sparse: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if any(key.endswith(suffix) for suffix in (VALUES, MASK, SHAPE)):
            raise ValueError(f"state key {key!r} ends with a reserved suffix ({VALUES}, {MASK}, {SHAPE})")
        flat = tensor.detach().cpu().reshape(-1)
        if not tensor.is_floating_point() or flat.numel() == 0:
            sparse[key] = tensor
            continue
        keep = flat != 0
        nonzero = int(keep.sum())
        saving = (flat.numel() - nonzero) * flat.element_size() - math.ceil(flat.numel() / 8)
        if 1.0 - nonzero / flat.numel() < min_sparsity or saving <= _RECORD_OVERHEAD_BYTES:
            sparse[key] = tensor
            continue
        sparse[key + VALUES] = flat[keep]  # a fresh tensor: the dense storage is not saved
        sparse[key + MASK] = torch.from_numpy(np.packbits(keep.numpy()))
        sparse[key + SHAPE] = torch.tensor(tuple(tensor.shape), dtype=torch.int64)
    return sparse


def dense_state_dict(sparse: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo `sparse_state_dict`: every `key@values/@mask/@shape` triple back to a dense tensor."""
    import torch

    dense: dict[str, torch.Tensor] = {}
    for key, tensor in sparse.items():
        if key.endswith(MASK) or key.endswith(SHAPE):
            continue  # consumed with their @values
        if not key.endswith(VALUES):
            dense[key] = tensor
            continue
        base = key.removesuffix(VALUES)
        if base + MASK not in sparse or base + SHAPE not in sparse:
            raise ValueError(f"sparse state {base!r} has {VALUES} but lacks {MASK} or {SHAPE}")
        shape = tuple(int(d) for d in sparse[base + SHAPE])
        n = math.prod(shape)
        keep = np.unpackbits(sparse[base + MASK].numpy(), count=n).astype(bool)
        if int(keep.sum()) != tensor.numel():
            raise ValueError(f"sparse state {base!r}: the mask has {int(keep.sum())} ones but "
                             f"there are {tensor.numel()} values")
        restored = torch.zeros(n, dtype=tensor.dtype)
        restored[torch.from_numpy(keep)] = tensor
        dense[base] = restored.reshape(shape)
    orphans = [k for k in sparse if (k.endswith(MASK) or k.endswith(SHAPE))
               and k.rsplit("@", 1)[0] + VALUES not in sparse]
    if orphans:
        raise ValueError(f"sparse state has {orphans[0]!r} without its {VALUES}")
    return dense


def sparsify_onnx(src_path: str | Path, dst_path: str | Path, min_sparsity: float = 0.25,
                  compact_indices: bool = True) -> Path:
    """Copy an ONNX model, moving sparse weights to `graph.sparse_initializer`.

    Float and int8 initializers are considered (int8: weights quantized after pruning, whose
    zeros stay zero). Each with sparsity >= `min_sparsity` that gets smaller is stored as (values,
    linear indices) in COO form; ONNX Runtime densifies it when the session loads, so inference
    is unchanged (and no faster): only the file shrinks. `compact_indices` stores indices as int16
    (tensors of < 32768 elements) or int32: ONNX Runtime 1.31 reads them, but the ONNX spec and
    onnx.checker require int64. compact_indices=False keeps int64 (spec-compliant, a bigger file:
    12 instead of 8 or 6 bytes per non-zero). Returns `dst_path`.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src_path))
    graph = model.graph
    kept = []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if not (array.dtype.kind == "f" or array.dtype == np.int8) or array.size < 2:
            kept.append(init)
            continue
        flat = array.reshape(-1)
        indices = np.flatnonzero(flat)
        index_dtype = np.int64
        if compact_indices:
            index_dtype = np.int16 if flat.size <= np.iinfo(np.int16).max else np.int32
        sparse_bytes = indices.size * (flat.itemsize + np.dtype(index_dtype).itemsize)
        if 1.0 - indices.size / flat.size < min_sparsity or sparse_bytes >= array.nbytes:
            kept.append(init)
            continue
        values = numpy_helper.from_array(flat[indices], init.name)
        coo = numpy_helper.from_array(indices.astype(index_dtype), f"{init.name}_indices")
        graph.sparse_initializer.append(helper.make_sparse_tensor(values, coo, list(array.shape)))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(dst_path))
    return Path(dst_path)


def densify(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every sparse initializer written back as a dense one: what tools
    that only read `graph.initializer` (shape inference, the quantizer, the checker) need."""
    import onnx
    from onnx import numpy_helper

    dense = onnx.ModelProto()
    dense.CopyFrom(model)
    graph = dense.graph
    for sparse in graph.sparse_initializer:
        values = numpy_helper.to_array(sparse.values)
        array = np.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
        array[numpy_helper.to_array(sparse.indices).astype(np.int64).reshape(-1)] = values
        graph.initializer.append(
            numpy_helper.from_array(array.reshape(tuple(sparse.dims)), sparse.values.name))
    del graph.sparse_initializer[:]
    return dense


def densify_onnx(src_path: str | Path, dst_path: str | Path) -> Path:
    """`densify` from file to file. Returns `dst_path`."""
    import onnx

    onnx.save(densify(onnx.load(str(src_path))), str(dst_path))
    return Path(dst_path)


def check_onnx(model: onnx.ModelProto) -> None:
    """onnx.checker with shape inference. Sparse initializers are checked densified, on a copy:
    shape inference types them sparse_tensor, which Conv and Gemm reject, and the checker wants
    int64 indices where `sparsify_onnx` writes int16/int32 (ONNX Runtime reads both)."""
    import onnx

    onnx.checker.check_model(densify(model) if model.graph.sparse_initializer else model,
                             full_check=True)

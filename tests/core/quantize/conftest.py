"""Shared fixtures of the shrinkflow.quantize tests: one tiny CNN (8 and 16 channels) trained once
on scikit-learn's digits and exported; every test quantizes that file. Package-scoped, so the
training, the export and the int8 static variants are made once for all test modules.
Accuracy is computed with shrinkflow.measure, as everywhere else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from shrinkflow import quantize as q
from shrinkflow.config import TrainConfig
from shrinkflow.data import Split, Splits, normalize_splits, stratified_split
from shrinkflow.export import export_onnx, onnx_predictor
from shrinkflow.measure import classification_metrics
from shrinkflow.models import Architecture, build_model
from shrinkflow.quantize.calibrate import CALIBRATION_METHODS, Calibrated
from shrinkflow.quantize.graph import WEIGHTED_OPS
from shrinkflow.train import fit

ARCH = Architecture("cnn", (1, 8, 8), 10, (8, 16))
TRAIN = TrainConfig(epochs=5, batch_size=32, lr=0.01, weight_decay=0.0, patience=100,
                    device="cpu", amp=False, seed=0)
CALIBRATION_ROWS = 128


@pytest.fixture(scope="package")
def splits() -> Splits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.reshape(-1, 1, 8, 8).astype(np.float32)
    y = digits.target.astype(np.int64)
    normalized, _ = normalize_splits(stratified_split(x, y, 0.15, 0.2, seed=0), "image")
    return normalized


@pytest.fixture(scope="package")
def trained(splits: Splits) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ARCH)
    fit(model, splits.train, splits.val, TRAIN, progress=False)
    return model


@pytest.fixture(scope="package")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quantize")


@pytest.fixture(scope="package")
def fp32(trained: torch.nn.Module, workdir: Path) -> Path:
    return export_onnx(trained, ARCH.input_shape, workdir / "fp32.onnx")


@pytest.fixture(scope="package")
def calibration(splits: Splits) -> np.ndarray:
    return splits.train.x[:CALIBRATION_ROWS]


@pytest.fixture(scope="package")
def static_variants(fp32: Path, calibration: np.ndarray, workdir: Path) -> dict[str, Path]:
    """int8 static of the fp32 model, made once: QDQ with each calibration, and QOperator."""
    out = {method: q.to_int8_static(fp32, workdir / f"int8_static_{method}.onnx", calibration,
                                    method)
           for method in CALIBRATION_METHODS}
    out["qoperator"] = q.to_int8_static(fp32, workdir / "int8_static_qoperator.onnx", calibration,
                                        quant_format="qoperator")
    return out


@pytest.fixture(scope="package")
def sensitivity(fp32: Path, calibration: np.ndarray, tmp_path_factory
                ) -> list[tuple[str, float, float]]:
    """The ranking the fallback's exclude_sensitive step computes for the fp32 model (minmax,
    per channel: what it uses after a minmax initial attempt)."""
    work = Calibrated(fp32, calibration, 99.99, tmp_path_factory.mktemp("sensitivity"))
    return work.sensitivity("minmax", per_channel=True)


def predictions(path: Path, x: np.ndarray) -> np.ndarray:
    return onnx_predictor(path)(x).argmax(1)


def accuracy(path: Path, split: Split) -> float:
    return classification_metrics(split.y, predictions(path, split.x))["accuracy"]


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def float_weighted_nodes(path: Path) -> list[str]:
    """Weighted nodes still computing in float: their weight is a float initializer."""
    model = onnx.load(str(path))
    inits = initializers(model)
    return [node.name for node in model.graph.node if node.op_type in WEIGHTED_OPS
            and node.input[1] in inits and inits[node.input[1]].dtype == np.float32]


def assert_runs_like_fp32(path: Path, fp32: Path, x: np.ndarray) -> None:
    """`path` returns float32 logits for the float32 rows `x` that pick fp32's class on >= 95%."""
    # given the float model's predictions
    reference = predictions(fp32, x)
    # when the quantized file runs in ONNX Runtime with the same float32 input
    logits = onnx_predictor(path)(x)
    # then it returns float32 logits that pick the same class for at least 95% of the rows
    assert logits.dtype == np.float32 and logits.shape == (len(x), ARCH.n_classes), (
        f"{path.name}: expected float32 logits of shape {(len(x), ARCH.n_classes)}, "
        f"got {logits.dtype} {logits.shape}")
    agreement = float((logits.argmax(1) == reference).mean())
    assert agreement >= 0.95, (
        f"{path.name} agrees with fp32 on {agreement:.3f} of the rows, expected >= 0.95")

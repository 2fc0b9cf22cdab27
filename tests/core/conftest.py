"""Fixtures for the core package tests: tiny in-memory data and fast CPU settings.

Nothing here touches MLflow, Prefect, DVC or the network; every data set is a few hundred samples.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from shrinkflow.config import MeasureConfig, TrainConfig
from shrinkflow.data import Split


def _blobs(n: int = 300, features: int = 4, classes: int = 2, seed: int = 0,
           spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs: class k is centred at 3*e_k (linearly separable)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centres = 3.0 * np.eye(classes, features)
    x = centres[y] + spread * rng.standard_normal((n, features))
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture
def make_blobs() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """Factory of well-separated blobs: make_blobs(n, features, classes, seed, spread)."""
    return _blobs


@pytest.fixture
def separable() -> tuple[Split, Split]:
    """(train, val) of a linearly separable 2-class problem with 4 features."""
    x, y = _blobs(300)
    return Split(x[:200], y[:200]), Split(x[200:], y[200:])


@pytest.fixture
def cpu_train_cfg() -> TrainConfig:
    """Few epochs on the CPU, no early stopping unless a test asks for it."""
    return TrainConfig(epochs=6, batch_size=32, lr=0.01, weight_decay=0.0, patience=100,
                       device="cpu", amp=False, seed=0)


@pytest.fixture
def fast_measure_cfg() -> MeasureConfig:
    return MeasureConfig(threads=1, warmup=1, repeats=5, throughput_repeats=3)

"""shrinkflow.plots: training curves and confusion matrices written as PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shrinkflow.plots import confusion_matrix, training_curves
from shrinkflow.train import EpochLog

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history(epochs: int = 4) -> list[EpochLog]:
    return [
        EpochLog(epoch=e, train_loss=1.0 / e, val_loss=1.2 / e, val_accuracy=min(1.0, 0.5 + 0.1 * e),
                 lr=1e-3, seconds=0.1)
        for e in range(1, epochs + 1)
    ]


def _assert_png(path: Path) -> None:
    assert path.is_file(), f"{path} should be written"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), f"{path.name} should be a PNG (magic bytes), got {data[:8]!r}"
    assert len(data) > 1000, f"{path.name} should hold a real figure, got {len(data)} bytes"


def test_training_curves_writes_a_png_and_returns_its_path(tmp_path: Path):
    path = tmp_path / "curves.png"
    returned = training_curves(_history(), path, "baseline on digits")
    assert returned == path, "the function should return the path it wrote"
    _assert_png(path)


def test_training_curves_works_for_a_single_epoch(tmp_path: Path):
    path = training_curves(_history(1), tmp_path / "one.png", "one epoch")
    _assert_png(path)


@pytest.mark.parametrize("classes", [("0", "1"), tuple(str(d) for d in range(10))])
def test_confusion_matrix_writes_a_png_and_returns_its_path(tmp_path: Path, classes):
    n = len(classes)
    matrix = np.diag(np.arange(1, n + 1)) + np.ones((n, n), dtype=int)
    path = tmp_path / f"confusion_{n}.png"
    returned = confusion_matrix(matrix, classes, path, f"{n} classes")
    assert returned == path, "the function should return the path it wrote"
    _assert_png(path)


def test_confusion_matrix_handles_an_all_zero_matrix(tmp_path: Path):
    path = confusion_matrix(np.zeros((3, 3), dtype=int), ("a", "b", "c"), tmp_path / "zero.png", "empty")
    _assert_png(path)


def test_plots_do_not_leave_figures_open(tmp_path: Path):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    training_curves(_history(), tmp_path / "a.png", "a")
    confusion_matrix(np.eye(2, dtype=int), ("x", "y"), tmp_path / "b.png", "b")
    assert len(plt.get_fignums()) == before, "each figure should be closed after saving"


def test_pareto_plot_writes_a_png(tmp_path):
    from shrinkflow.plots import pareto

    rows = [{"candidate": "a", "val_accuracy": 0.99, "size_bytes": 80_000, "latency_ms_p50_b1": 0.09},
            {"candidate": "b", "val_accuracy": 0.98, "size_bytes": 3_000, "latency_ms_p50_b1": 0.005}]
    path = pareto(rows, ["a", "b"], "b", tmp_path / "pareto.png", "digits")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

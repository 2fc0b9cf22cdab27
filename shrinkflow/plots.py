"""Figures people would rather look at than read: training curves and confusion matrices.

Each function draws one figure into the path it is given (PNG) and returns that path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shrinkflow.train import EpochLog


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: Sequence[EpochLog], path: Path, title: str) -> Path:
    """Loss (train and validation) and validation accuracy per epoch; the best epoch marked."""
    plt = pyplot()
    epochs = [log.epoch for log in history]
    best = max(history, key=lambda log: (log.val_accuracy, -log.val_loss))
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [log.train_loss for log in history], label="train")
    loss_ax.plot(epochs, [log.val_loss for log in history], label="validation")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    loss_ax.legend()
    acc_ax.plot(epochs, [log.val_accuracy for log in history], color="tab:green")
    acc_ax.axvline(best.epoch, color="grey", linestyle="--", label=f"best epoch {best.epoch}")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    acc_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path


def confusion_matrix(matrix: np.ndarray, classes: Sequence[str], path: Path, title: str) -> Path:
    """Counts per (true, predicted) class; off-diagonal cells are the mistakes."""
    plt = pyplot()
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center",
                color="white" if count > threshold else "black", fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path


def pareto(rows: Sequence[dict], front: Sequence[str], chosen: str | None, path: Path,
           title: str) -> Path:
    """Validation accuracy (what the choice reads) against file size (log scale), marker area by
    batch-1 latency; front joined."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 6))
    latencies = np.array([row["latency_ms_p50_b1"] for row in rows])
    areas = 40 + 400 * latencies / max(latencies.max(), 1e-12)
    colors = ["tab:red" if row["candidate"] == chosen else
              "tab:blue" if row["candidate"] in front else "tab:gray" for row in rows]
    ax.scatter([row["size_bytes"] for row in rows], [100 * row["val_accuracy"] for row in rows],
               s=areas, c=colors, alpha=0.7, edgecolors="black", linewidths=0.5)
    for row in rows:
        if row["candidate"] not in front and row["candidate"] != chosen:
            continue  # label the front only: dozens of overlapping names help nobody
        ax.annotate(f"{row['candidate']}\n{row['latency_ms_p50_b1'] * 1000:.0f} µs",
                    (row["size_bytes"], 100 * row["val_accuracy"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    on_front = sorted((row for row in rows if row["candidate"] in front),
                      key=lambda row: row["size_bytes"])
    ax.plot([row["size_bytes"] for row in on_front], [100 * row["val_accuracy"] for row in on_front],
            color="tab:blue", linewidth=1, linestyle="--", label="Pareto front")
    ax.set_xscale("log")
    ax.set(xlabel="file size (bytes, log scale)", ylabel="validation accuracy (%)",
           title=f"{title}\nmarker area: batch-1 latency; blue: Pareto front; red: deployed")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return path

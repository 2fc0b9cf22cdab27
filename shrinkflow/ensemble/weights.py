"""Member weights of a weighted ensemble, fitted on validation labels.

The weighted ensemble predicts p = sum_i w_i p_i, the members' class probabilities averaged with
weights w_i >= 0 that sum to 1. The weights minimise the log-loss of p on the given (validation)
rows: a member that is more often right, and confidently so, earns more weight, and a member that
only repeats another's mistakes earns little.

The weights are a softmax over free parameters, so any parameters give valid weights and the
search needs no constraints; L-BFGS-B starts from equal weights and the result is deterministic.
It never returns weights with a higher log-loss than equal weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.special
from scipy.optimize import minimize

# probabilities are floored here (and in greedy selection) before the log: a member sure of a
# wrong class (p = 0) would otherwise make the loss infinite and its gradient undefined
LOSS_FLOOR = 1e-12


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of logits [N, K], in float64 (what `fit_weights` expects)."""
    return scipy.special.softmax(np.asarray(logits, dtype=np.float64), axis=-1)


def log_loss(probabilities: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-probability of the true classes `y` [N] under `probabilities` [N, K]."""
    true_class = probabilities[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.maximum(true_class, LOSS_FLOOR))))


def _true_class_matrix(probabilities: Sequence[np.ndarray], y: np.ndarray) -> np.ndarray:
    """[N, members]: each member's probability of each row's true class (all the loss reads)."""
    if not probabilities:
        raise ValueError("fit_weights needs at least one member's probabilities")
    shapes = {np.shape(p) for p in probabilities}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"every member's probabilities must be [N, K] of one shape, got {sorted(shapes)}")
    n, k = next(iter(shapes))
    y = np.asarray(y)
    if y.shape != (n,) or (n and (y.min() < 0 or y.max() >= k)):
        raise ValueError(f"labels must be [N={n}] classes in [0, {k}), got shape {y.shape}")
    if n == 0:
        raise ValueError("fit_weights needs at least one labeled row")
    rows = np.arange(n)
    return np.stack([np.asarray(p, dtype=np.float64)[rows, y] for p in probabilities], axis=1)


def _loss_and_gradient(theta: np.ndarray, true_class: np.ndarray) -> tuple[float, np.ndarray]:
    weights = scipy.special.softmax(theta)
    mixed = np.maximum(true_class @ weights, LOSS_FLOOR)
    loss = -np.mean(np.log(mixed))
    grad_weights = -(true_class / mixed[:, None]).mean(axis=0)
    # chain rule through the softmax: d w_j / d theta_i = w_j (delta_ij - w_i)
    grad_theta = weights * (grad_weights - weights @ grad_weights)
    return float(loss), grad_theta


def fit_weights(probabilities: Sequence[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Non-negative weights, summing to 1, that minimise the log-loss of the weighted average.

    Args:
        probabilities: one [N, K] array of class probabilities per member (see `softmax`), on
            the same N rows, in the members' order.
        y: [N] the rows' true classes (validation labels: the test split is never fitted to).

    Returns:
        [members] float64 weights in the members' order.
    """
    true_class = _true_class_matrix(probabilities, y)
    members = true_class.shape[1]
    equal = np.zeros(members)
    if members == 1:
        return np.ones(1)
    result = minimize(_loss_and_gradient, equal, args=(true_class,), jac=True, method="L-BFGS-B")
    fitted = scipy.special.softmax(result.x)
    # the line search only accepts decreases, but keep the promise explicit
    if _loss_and_gradient(result.x, true_class)[0] > _loss_and_gradient(equal, true_class)[0]:
        return np.full(members, 1.0 / members)
    return fitted

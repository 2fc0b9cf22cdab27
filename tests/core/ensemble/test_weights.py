"""shrinkflow.ensemble.weights: weights >= 0 summing to 1 that lower the validation log-loss."""

from __future__ import annotations

import numpy as np
import pytest

from shrinkflow.ensemble import fit_weights, log_loss, softmax


def noisy_member(y: np.ndarray, classes: int, skill: float, seed: int) -> np.ndarray:
    """Probabilities of a member whose logits favour the true class by `skill`, plus noise."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((len(y), classes)) + skill * np.eye(classes)[y]
    return softmax(logits)


@pytest.fixture
def labels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4, 400)


def test_fit_weights__a_clearly_better_member_gets_most_weight(labels):
    # given a good member and two weak ones
    members = [noisy_member(labels, 4, skill, seed) for seed, skill in enumerate((0.2, 3.0, 0.1))]
    # when the weights are fitted
    weights = fit_weights(members, labels)
    # then the good one dominates, all are >= 0 and they sum to 1
    assert weights.shape == (3,) and weights.argmax() == 1 and weights[1] > 0.8, weights
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0)


def test_fit_weights__log_loss_is_not_worse_than_equal_weights(labels):
    members = [noisy_member(labels, 4, skill, seed) for seed, skill in enumerate((1.0, 1.5, 0.5, 1.2))]
    weights = fit_weights(members, labels)
    fitted = log_loss(np.tensordot(weights, members, axes=1), labels)
    equal = log_loss(np.mean(members, axis=0), labels)
    assert fitted <= equal + 1e-12, (
        f"fitted log-loss {fitted:.4f} should not exceed equal weights' {equal:.4f}")


def test_fit_weights__is_deterministic_and_handles_one_member(labels):
    members = [noisy_member(labels, 4, 1.0, seed) for seed in range(3)]
    np.testing.assert_array_equal(fit_weights(members, labels), fit_weights(members, labels))
    np.testing.assert_array_equal(fit_weights(members[:1], labels), [1.0])


def test_fit_weights__identical_members_keep_equal_weights(labels):
    member = noisy_member(labels, 4, 1.0, 0)
    np.testing.assert_allclose(fit_weights([member, member], labels), [0.5, 0.5])


def test_fit_weights__a_member_certain_of_wrong_classes_gets_no_weight_and_finite_loss(labels):
    # given a member putting probability 0 on every true class
    wrong = np.eye(4)[(labels + 1) % 4]
    weights = fit_weights([noisy_member(labels, 4, 1.0, 0), wrong], labels)
    assert weights[1] < 1e-3 and np.isfinite(weights).all(), weights


@pytest.mark.parametrize("probabilities, y, message", [
    ([], np.zeros(3, int), "at least one member"),
    ([np.full((3, 2), 0.5), np.full((4, 2), 0.5)], np.zeros(3, int), "one shape"),
    ([np.full((3, 2), 0.5)], np.array([0, 1, 2]), "classes in"),
])
def test_fit_weights__rejects_mismatched_inputs(probabilities, y, message):
    with pytest.raises(ValueError, match=message):
        fit_weights(probabilities, y)

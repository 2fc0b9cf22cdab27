"""shrinkflow.ensemble.selection: greedy forward selection with replacement on validation log-loss."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from shrinkflow.ensemble import EnsembleError, Pick, log_loss, select_greedy, softmax

CLASSES = 3
N = 120


@pytest.fixture
def y() -> np.ndarray:
    return np.random.default_rng(0).integers(0, CLASSES, N)


def member(y: np.ndarray, p_true: np.ndarray | float) -> np.ndarray:
    """[N, K] probabilities giving each row's true class `p_true` and the rest the remainder."""
    p_true = np.broadcast_to(np.asarray(p_true, dtype=np.float64), y.shape)
    probabilities = np.repeat(((1 - p_true) / (CLASSES - 1))[:, None], CLASSES, axis=1)
    probabilities[np.arange(len(y)), y] = p_true
    return probabilities


def right_on(rows: slice, sure: float = 0.9, elsewhere: float = 0.15) -> np.ndarray:
    """p_true per row: `sure` on `rows`, `elsewhere` on the others (below 1/3: a wrong answer)."""
    p = np.full(N, elsewhere)
    p[rows] = sure
    return p


def row(name: str, size: int = 100, lineage: str | None = None, **extra) -> dict:
    return {"candidate": name, "lineage": lineage or name, "size_bytes": size, **extra}


def reference(probabilities: dict[str, np.ndarray], y: np.ndarray, sizes: dict[str, int],
              rounds: int) -> tuple[list[str], list[float]]:
    """Caruana's hill climb written plainly: average the whole list of added models each time."""
    added: list[str] = []
    best_loss = np.inf
    for _ in range(rounds):
        scored = sorted((log_loss(np.mean([probabilities[n] for n in [*added, name]], axis=0), y),
                         sizes[name], name) for name in probabilities)
        loss, _, name = scored[0]
        if added and not loss < best_loss - 1e-9:
            break
        added.append(name)
        best_loss = loss
    names = list(dict.fromkeys(added))
    return names, [added.count(name) / len(added) for name in names]


def test_select_greedy__adds_a_weaker_model_that_errs_elsewhere_over_a_stronger_one_that_errs_alike(y):
    # given: `best` is wrong on the last 30 rows; `alike` is nearly as good and wrong on the same
    # rows; `elsewhere` is weaker (wrong on the first 50) but right where `best` is wrong
    probabilities = {"best": member(y, right_on(slice(0, 90))),
                     "alike": member(y, right_on(slice(0, 88))),
                     "elsewhere": member(y, right_on(slice(50, N)))}
    rows = [row(name) for name in probabilities]
    assert log_loss(probabilities["elsewhere"], y) > log_loss(probabilities["alike"], y)
    # when members are selected greedily
    chosen = select_greedy(rows, probabilities, y, max_total_bytes=None)
    # then the complementary one joins the best, and their mix beats the best alone
    assert chosen.names == ["best", "elsewhere"], chosen.reason
    mixed = np.tensordot(chosen.weights, [probabilities[n] for n in chosen.names], axes=1)
    assert log_loss(mixed, y) < log_loss(probabilities["best"], y), (
        "the selected ensemble should have a lower validation log-loss than its best member")
    assert log_loss(mixed, y) == pytest.approx(chosen.log_losses[-1])
    assert isinstance(chosen, Pick) and "greedy" in chosen.reason and "one per lineage" in chosen.reason


def test_select_greedy__adding_a_model_again_raises_its_weight(y):
    # given: a strong model, wrong on the last 30 rows, and a weak one, right on those only
    probabilities = {"strong": member(y, right_on(slice(0, 90), sure=0.95, elsewhere=0.1)),
                     "weak": member(y, right_on(slice(90, N), sure=0.9, elsewhere=0.3))}
    # when selected with replacement over many rounds
    chosen = select_greedy([row(name) for name in probabilities], probabilities, y, None, rounds=20)
    # then the strong one was added more than once and weighs more; weights are shares of additions
    weights = dict(zip(chosen.names, chosen.weights, strict=True))
    assert set(weights) == {"strong", "weak"} and weights["strong"] > weights["weak"], weights
    additions = len(chosen.log_losses)
    assert additions > 2 and sum(chosen.weights) == pytest.approx(1.0)
    assert all(round(w * additions) == pytest.approx(w * additions) for w in chosen.weights)
    # and each addition lowered the validation log-loss
    assert all(b < a for a, b in zip(chosen.log_losses, chosen.log_losses[1:], strict=False))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_select_greedy__matches_a_plain_numpy_reference(y, seed):
    # given: random members of varied skill (softmax of noisy logits)
    rng = np.random.default_rng(seed)
    probabilities = {f"m{i}": softmax(rng.standard_normal((N, CLASSES)) * 2
                                      + rng.uniform(0.5, 3) * np.eye(CLASSES)[y])
                     for i in range(6)}
    sizes = {name: int(rng.integers(1, 4)) * 100 for name in probabilities}
    # when selected without a size bound, one lineage each
    chosen = select_greedy([row(n, sizes[n]) for n in probabilities], probabilities, y, None, rounds=12)
    # then names and weights are the reference's
    names, weights = reference(probabilities, y, sizes, rounds=12)
    assert len(names) >= 2, "the random members should make an ensemble worth having"
    assert chosen.names == names and chosen.weights == pytest.approx(weights), chosen.reason


def test_select_greedy__takes_at_most_one_candidate_per_lineage(y):
    # given: `model-int8`, a variant of `model` (a made-up one: right where `model` is wrong),
    # would be its best complement; `other` is a poorer one
    probabilities = {"model": member(y, right_on(slice(0, 90))),
                     "model-int8": member(y, right_on(slice(90, N), elsewhere=0.45)),
                     "other": member(y, right_on(slice(90, N), sure=0.8, elsewhere=0.4))}
    rows = [row("model"), row("model-int8", 50, lineage="model"), row("other")]
    unrelated = [row("model"), row("model-int8", 50), row("other")]
    assert select_greedy(unrelated, probabilities, y, None).names == ["model", "model-int8"]
    # when the variant is known as one
    chosen = select_greedy(rows, probabilities, y, None)
    # then only one of `model`'s lineage is in
    assert chosen.names == ["model", "other"], chosen.reason


def test_select_greedy__keeps_the_members_files_within_the_size_budget(y):
    # given: the best complement of `best` is too big to ship beside it; a smaller, poorer one fits
    probabilities = {"best": member(y, right_on(slice(0, 90))),
                     "big": member(y, right_on(slice(90, N), elsewhere=0.45)),
                     "small": member(y, right_on(slice(90, N), sure=0.8, elsewhere=0.4))}
    rows = [row("best", 500), row("big", 600), row("small", 200)]
    unbounded = select_greedy(rows, probabilities, y, None)
    assert unbounded.names == ["best", "big"], "without a bound the big complement should be chosen"
    # when the files may take 1,000 bytes together
    chosen = select_greedy(rows, probabilities, y, max_total_bytes=1_000)
    # then the big one is not eligible
    assert chosen.names == ["best", "small"], chosen.reason
    assert "700 bytes of max_total_bytes=1000" in chosen.reason


def test_select_greedy__a_first_member_must_leave_room_for_a_second(y):
    # given: the best candidate fits the budget alone but leaves no room for any other
    probabilities = {"best": member(y, 0.9),
                     "a": member(y, right_on(slice(0, 80))),
                     "b": member(y, right_on(slice(60, N)))}
    rows = [row("best", 950), row("a", 100), row("b", 100)]
    chosen = select_greedy(rows, probabilities, y, max_total_bytes=1_000)
    # then the ensemble is made of two that fit together
    assert sorted(chosen.names) == ["a", "b"], chosen.reason


def test_select_greedy__no_pair_that_fits_gives_no_ensemble_and_says_why(y):
    probabilities = {"a": member(y, right_on(slice(0, 80))), "b": member(y, right_on(slice(60, N))),
                     "a-int8": member(y, right_on(slice(0, 80)))}
    rows = [row("a", 300), row("a-int8", 80, lineage="a"), row("b", 250)]
    chosen = select_greedy(rows, probabilities, y, max_total_bytes=300)
    assert chosen.names == [] and chosen.weights == [], chosen.reason
    assert "max_total_bytes=300" in chosen.reason and "a-int8 (80 bytes) and b (250 bytes)" in chosen.reason


def test_select_greedy__no_addition_that_lowers_the_log_loss_gives_no_ensemble_and_says_why(y):
    # given: one model better than another on every row
    probabilities = {"good": member(y, 0.95), "poor": member(y, 0.5)}
    chosen = select_greedy([row(n) for n in probabilities], probabilities, y, None)
    assert chosen.names == [] and chosen.weights == [], chosen.reason
    assert "lowers the log-loss of good alone" in chosen.reason and "poor" in chosen.reason


def test_select_greedy__one_lineage_gives_no_ensemble_and_says_why(y):
    probabilities = {"m": member(y, 0.8), "m-int8": member(y, right_on(slice(0, 60)))}
    chosen = select_greedy([row("m"), row("m-int8", lineage="m")], probabilities, y, None)
    assert chosen.names == [] and "2 lineages" in chosen.reason


def test_select_greedy__equal_log_losses_prefer_the_smaller_file_then_the_name(y):
    # given: `twin-*` predict alike; `first` is the best alone
    twin = member(y, right_on(slice(50, N)))
    probabilities = {"first": member(y, right_on(slice(0, 90))), "twin-b": twin, "twin-a": twin,
                     "twin-big": twin}
    rows = [row("first"), row("twin-b", 50), row("twin-a", 50), row("twin-big", 70)]
    assert select_greedy(rows, probabilities, y, None).names == ["first", "twin-a"]


def test_select_greedy__reads_validation_only(y):
    # the function takes no test data: validation probabilities and labels only
    assert not any("test" in name for name in inspect.signature(select_greedy).parameters)
    # and test (or validation accuracy) figures in the rows play no part
    probabilities = {"best": member(y, right_on(slice(0, 90))),
                     "elsewhere": member(y, right_on(slice(50, N))),
                     "alike": member(y, right_on(slice(0, 88)))}
    plain = [row(name) for name in probabilities]
    misleading = [row(name, accuracy=1.0 if name == "alike" else 0.1,
                      val_accuracy=1.0 if name == "alike" else 0.1) for name in probabilities]
    assert select_greedy(plain, probabilities, y, None) == select_greedy(misleading, probabilities, y, None)


def test_select_greedy__rounds_bound_the_additions(y):
    probabilities = {"strong": member(y, right_on(slice(0, 90), sure=0.95, elsewhere=0.1)),
                     "weak": member(y, right_on(slice(90, N), sure=0.9, elsewhere=0.3))}
    chosen = select_greedy([row(n) for n in probabilities], probabilities, y, None, rounds=2)
    assert chosen.names == ["strong", "weak"] and chosen.weights == [0.5, 0.5]
    assert "2 additions of at most greedy_rounds=2" in chosen.reason


def test_select_greedy__rejects_fewer_than_two_rounds_and_missing_probabilities(y):
    probabilities = {"a": member(y, 0.9), "b": member(y, 0.8)}
    with pytest.raises(EnsembleError, match="greedy_rounds=1"):
        select_greedy([row("a"), row("b")], probabilities, y, None, rounds=1)
    with pytest.raises(ValueError, match=r"\['c'\]"):
        select_greedy([row("a"), row("b"), row("c")], probabilities, y, None)
    with pytest.raises(ValueError, match="labels"):
        select_greedy([row("a"), row("b")], probabilities, y[:-1], None)

"""Greedy forward selection of ensemble members, with replacement, on validation log-loss.

Caruana, Niculescu-Mizil, Crew and Ksikes, "Ensemble Selection from Libraries of Models" (ICML
2004). The ensemble starts empty; each round adds the candidate whose addition gives the lowest
log-loss of the averaged probabilities on validation. With replacement: a candidate already in
may be added again, which raises its weight. The result is the distinct members, in the order
they were first added, and their weights: the times each was added over the number of additions
(a member added 3 times of 5 weighs 0.6). It stops after `rounds` additions, or sooner, at the
first round in which no addition lowers the log-loss (by more than 1e-9 nats): Caruana runs a
fixed number of rounds and keeps the best prefix; stopping there gives that prefix directly.

Why log-loss and not accuracy: accuracy on a validation split moves one row at a time and ties
often, so the single most accurate models win and a weaker model that is right where they are
wrong is never tried. Log-loss credits such a complementary model as soon as it raises the
probability of the true class on the rows the others miss, and it is what the averaged
probabilities (the `average` and `weighted` heads) are judged by.

The start is the empty ensemble (its first round takes the candidate with the lowest log-loss on
its own). Caruana's "sorted initialisation" (the best few models to start with) guards a library
of thousands of models against overfitting the selection split; here the library is tens of
candidates, at most one per lineage, and the rounds are few, so the simpler start is kept. One
consequence: the second addition makes an equal mix of two, so a complement worth only a small
weight beside a much better model is not taken (`selection: top_k`, whose `weighted` fits free
weights, is the alternative).

Constraints, as `shrinkflow.ensemble.members.pick_members` has them:
  - at most one candidate per lineage (a model and its quantized variants make the same
    mistakes): a candidate whose lineage is in already, through another candidate, is not
    eligible;
  - the distinct members' files together within `max_total_bytes`: a new member that would break
    it is not eligible (adding a member again costs nothing: its file is in already), and nor is
    a first member that leaves no room for a second of another lineage (an ensemble needs two);
  - at least 2 distinct members, else no ensemble, and a sentence saying why.
Equal log-losses are broken reproducibly: the smaller file, then the name.

The choice reads validation only: the probabilities and labels given are the validation split's,
and of each candidate's row only `candidate`, `lineage` and `size_bytes` are read (never a test
figure), so the ensemble's test accuracy, reported later, is not a figure it was picked on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from shrinkflow.ensemble.members import MIN_MEMBERS, EnsembleError, Pick, Row
from shrinkflow.ensemble.weights import LOSS_FLOOR

MIN_GAIN = 1e-9  # nats: a smaller decrease of the log-loss is rounding, not an improvement


@dataclass(frozen=True)
class Selection(Pick):
    """A `Pick` with the greedy weights: `weights[i]` is the share of the additions that added
    `names[i]` (they sum to 1; [] when there is no ensemble), and `log_losses[r]` the validation
    log-loss of the ensemble after addition r + 1 (the first is its first member's alone)."""

    weights: list[float]
    log_losses: list[float]


def _true_class(probabilities: Mapping[str, np.ndarray], names: Sequence[str],
                y: np.ndarray) -> np.ndarray:
    """[N, candidates]: each candidate's probability of each row's true class (all log-loss reads)."""
    missing = [name for name in names if name not in probabilities]
    if missing:
        raise ValueError(f"no validation probabilities for candidates {missing}")
    shapes = {np.shape(probabilities[name]) for name in names}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"every candidate's probabilities must be [N, K] of one shape, got "
                         f"{sorted(shapes)}")
    n, k = next(iter(shapes))
    y = np.asarray(y)
    if n == 0 or y.shape != (n,) or y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must be [N={n}] classes in [0, {k}) with N > 0, got shape {y.shape}")
    rows = np.arange(n)
    return np.stack([np.asarray(probabilities[name], dtype=np.float64)[rows, y] for name in names],
                    axis=1)


def _smallest_pair(rows: Sequence[Row]) -> str:
    """The two smallest files of different lineages, as words."""
    smallest: dict[str, Row] = {}
    for row in sorted(rows, key=lambda row: (row["size_bytes"], row["candidate"])):
        smallest.setdefault(row["lineage"], row)
    first, second = list(smallest.values())[:2]
    return (f"{first['candidate']} ({first['size_bytes']} bytes) and {second['candidate']} "
            f"({second['size_bytes']} bytes)")


def select_greedy(rows: Sequence[Row], probabilities: Mapping[str, np.ndarray], y: np.ndarray,
                  max_total_bytes: int | None, rounds: int = 20) -> Selection:
    """Choose the ensemble's members and weights by greedy forward selection with replacement.

    Args:
        rows: one mapping per candidate with at least `candidate` (name), `lineage` (the
            un-quantized model it comes from) and `size_bytes`; nothing else is read.
        probabilities: candidate name -> its [N, K] class probabilities on the validation rows.
        y: [N] the validation rows' true classes.
        max_total_bytes: the distinct members' files together stay within this size (None: no
            bound). params.yaml: `ensemble.max_size_fraction` of the baseline's ONNX file.
        rounds: at most this many additions (>= 2). params.yaml: `ensemble.greedy_rounds`.

    Returns:
        A `Selection`: the distinct members in the order first added, their weights (times
        added / additions) and a sentence saying how they were chosen; with fewer than 2
        distinct members, no names and no weights, and the sentence says why.

    Raises:
        EnsembleError: `rounds` < 2.
        ValueError: a candidate without probabilities, probabilities of different shapes, or
            labels that do not fit them.
    """
    if rounds < MIN_MEMBERS:
        raise EnsembleError(f"greedy selection needs at least {MIN_MEMBERS} rounds to add "
                            f"{MIN_MEMBERS} members, got ensemble.greedy_rounds={rounds}")
    lineages = sorted({row["lineage"] for row in rows})
    if len(lineages) < MIN_MEMBERS:
        return Selection([], f"an ensemble needs candidates of at least {MIN_MEMBERS} lineages "
                             f"(variants of one model make the same mistakes), found "
                             f"{len(lineages)}: {lineages}", [], [])
    # candidates in tie-break order: np.argmin takes the first of equal losses
    rows = sorted(rows, key=lambda row: (row["size_bytes"], row["candidate"]))
    names = [row["candidate"] for row in rows]
    lineage = [row["lineage"] for row in rows]
    size = np.array([row["size_bytes"] for row in rows], dtype=np.int64)
    true_class = _true_class(probabilities, names, y)

    def fits(j: int, counts: np.ndarray) -> bool:
        if counts[j]:
            return True  # added again: its file is in already
        inside = np.flatnonzero(counts)
        if any(lineage[i] == lineage[j] for i in inside):
            return False  # another variant of its model is in
        if max_total_bytes is None:
            return True
        total = size[inside].sum() + size[j]
        if total > max_total_bytes:
            return False
        # a first member must leave room for a second of another lineage
        return bool(len(inside)) or any(lineage[k] != lineage[j] and total + size[k] <= max_total_bytes
                                        for k in range(len(rows)))

    counts = np.zeros(len(rows), dtype=np.int64)
    summed = np.zeros(len(true_class))  # sum over the additions of their true-class probability
    added: list[int] = []  # distinct members, in the order first added
    losses: list[float] = []
    best_rejected: tuple[str, float] | None = None
    for _ in range(rounds):
        eligible = [j for j in range(len(rows)) if fits(j, counts)]
        if not eligible:
            break
        mixed = (summed[:, None] + true_class[:, eligible]) / (counts.sum() + 1)
        loss = -np.log(np.maximum(mixed, LOSS_FLOOR)).mean(axis=0)
        best = int(np.argmin(loss))
        if losses and not loss[best] < losses[-1] - MIN_GAIN:
            others = [i for i, j in enumerate(eligible) if not counts[j]]
            if others:
                i = min(others, key=lambda i: loss[i])
                best_rejected = (names[eligible[i]], float(loss[i]))
            break
        j = eligible[best]
        if not counts[j]:
            added.append(j)
        counts[j] += 1
        summed += true_class[:, j]
        losses.append(float(loss[best]))

    if not added:
        return Selection([], f"no two candidates of different lineages fit together within "
                             f"max_total_bytes={max_total_bytes} (the smallest: "
                             f"{_smallest_pair(rows)})", [], losses)
    if len(added) < MIN_MEMBERS:
        first = names[added[0]]
        tried = (f"; the best addition, {best_rejected[0]}, gives {best_rejected[1]:.4f}"
                 if best_rejected else "")
        return Selection([], f"greedy selection on validation log-loss: no candidate of another "
                             f"lineage lowers the log-loss of {first} alone ({losses[0]:.4f}) "
                             f"when added to it{tried}", [], losses)
    additions = int(counts.sum())
    total_bytes = int(size[added].sum())
    stopped = "" if additions == rounds else ", then no addition lowered it"
    bound = "" if max_total_bytes is None else f" of max_total_bytes={max_total_bytes}"
    return Selection(
        [names[j] for j in added],
        f"greedy forward selection with replacement on validation log-loss (Caruana et al. "
        f"2004): {additions} additions of at most greedy_rounds={rounds}{stopped}; log-loss "
        f"{losses[0]:.4f} for {names[added[0]]} alone, {losses[-1]:.4f} for the {len(added)} "
        f"members, one per lineage, {total_bytes} bytes{bound}",
        [float(counts[j] / additions) for j in added], losses)

"""Which candidates an ensemble is made of: the best on validation, one per lineage, within a size.

An ensemble is worth its cost only when its members make different mistakes. Variants of one
model (its fp16, int8 and sparse files share a `lineage`) make nearly the same ones, so at most one
of each lineage is taken: the one with the best validation accuracy. The members' files are all
shipped and all run for every prediction, so their total size is bounded too.

The choice reads validation accuracy only (as `shrinkflow.gate` does): the ensemble's test
accuracy, reported later, is not a figure it was picked on.

This is `ensemble.selection: top_k` (and the names of `ensemble.members`); the default, greedy
selection on validation log-loss under the same constraints, is `shrinkflow.ensemble.selection`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shrinkflow.errors import UserError

Row = Mapping[str, Any]  # one candidate: candidate, lineage, val_accuracy, size_bytes, ...
MIN_MEMBERS = 2


class EnsembleError(UserError, ValueError):
    """An ensemble setting does not fit the candidates (an unknown name, too few members)."""


@dataclass(frozen=True)
class Pick:
    """The chosen candidates' names, in order of choice ([] when no ensemble can be made), and a
    sentence saying how they were chosen or why there are none, for the caller to log."""

    names: list[str]
    reason: str


def _rank(row: Row) -> tuple[float, int, str]:
    # better validation accuracy first; then the smaller file, then the name (reproducible)
    return (-row["val_accuracy"], row["size_bytes"], row["candidate"])


def _explicit(rows: Sequence[Row], names: Sequence[str]) -> Pick:
    available = [row["candidate"] for row in rows]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise EnsembleError(f"ensemble members {unknown} are not candidates; available: "
                            f"{sorted(available)}")
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise EnsembleError(f"ensemble members {repeated} are listed more than once")
    if len(names) < MIN_MEMBERS:
        raise EnsembleError(f"an ensemble needs at least {MIN_MEMBERS} members, got {list(names)}; "
                            f"available: {sorted(available)}")
    return Pick(list(names), f"the {len(names)} members named in the configuration")


def _why_too_few(rows: Sequence[Row], chosen: list[Row], max_total_bytes: int | None) -> str:
    lineages = sorted({row["lineage"] for row in rows})
    if len(lineages) < MIN_MEMBERS:
        return (f"an ensemble needs candidates of at least {MIN_MEMBERS} lineages (variants of one "
                f"model make the same mistakes), found {len(lineages)}: {lineages}")
    if not chosen:
        smallest = min(rows, key=lambda row: row["size_bytes"])
        return (f"no candidate fits max_total_bytes={max_total_bytes} (the smallest, "
                f"{smallest['candidate']}, has {smallest['size_bytes']} bytes)")
    first = chosen[0]
    return (f"the best candidate {first['candidate']} ({first['size_bytes']} bytes) leaves no room "
            f"within max_total_bytes={max_total_bytes} for a member of another lineage")


def pick_members(rows: Sequence[Row], top_k: int, max_total_bytes: int | None,
                 explicit: Sequence[str] = ()) -> Pick:
    """Choose the ensemble's members among the candidate `rows`.

    Args:
        rows: one mapping per candidate with at least `candidate` (name), `lineage` (the
            un-quantized model it comes from), `val_accuracy` and `size_bytes`.
        top_k: at most this many members (>= 2).
        max_total_bytes: the members' files together stay within this size (None: no bound).
        explicit: names to take exactly, in this order; `top_k` and the size bound do not apply.

    Returns:
        A `Pick`. Without `explicit`: greedy by validation accuracy (ties: the smaller file,
        then the name), skipping a candidate whose lineage is already in or whose file would
        exceed the size bound, until `top_k`. Fewer than 2 possible: no names, and the reason.

    Raises:
        EnsembleError: `explicit` names an unknown candidate (the message lists the available
            ones), repeats one or names fewer than 2; `top_k` < 2.
    """
    if explicit:
        return _explicit(rows, explicit)
    if top_k < MIN_MEMBERS:
        raise EnsembleError(f"an ensemble needs at least {MIN_MEMBERS} members, got top_k={top_k}")
    chosen: list[Row] = []
    total = 0
    for row in sorted(rows, key=_rank):
        if len(chosen) == top_k:
            break
        if any(member["lineage"] == row["lineage"] for member in chosen):
            continue  # a better variant of the same model is already in
        if max_total_bytes is not None and total + row["size_bytes"] > max_total_bytes:
            continue
        chosen.append(row)
        total += row["size_bytes"]
    if len(chosen) < MIN_MEMBERS:
        return Pick([], _why_too_few(rows, chosen, max_total_bytes))
    bound = "" if max_total_bytes is None else f" of max_total_bytes={max_total_bytes}"
    return Pick([row["candidate"] for row in chosen],
                f"the best {len(chosen)} of top_k={top_k} by validation accuracy, one per lineage, "
                f"{total} bytes{bound}")

"""shrinkflow.leaks: row identifiers refused, lone predictors of the label found."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shrinkflow.leaks import identifier_reason, identifiers, lone_accuracies

ROWS = 200


@pytest.mark.parametrize(("name", "values", "says"), [
    ("Unnamed: 0", np.arange(ROWS), "no name"),  # pandas' to_csv index
    ("", np.arange(1, ROWS + 1), "no name"),  # R's write.csv row names, as the csv module reads them
    ("n", np.random.default_rng(0).permutation(ROWS) + 7, "consecutively from 7 to 206"),
    ("id", np.random.default_rng(1).choice(10**6, ROWS, replace=False), "name says so"),
    ("customer_id", [f"c{i:05d}" for i in range(ROWS)], "name says so"),
    ("name", [f"person {i}" for i in range(ROWS)], "text values are all distinct"),
    ("serial", np.arange(ROWS, dtype=np.float64), "consecutively from 0 to 199"),
])
def test_a_row_identifier_is_named_with_the_reason(name, values, says):
    # given a column that numbers or names the rows
    reason = identifier_reason(name, pd.Series(values))
    # then it is found, and the reason says how
    assert reason is not None and says in reason, reason


@pytest.mark.parametrize(("name", "values"), [
    ("age", np.random.default_rng(2).integers(18, 90, ROWS)),  # integers with repeats
    ("n", np.random.default_rng(3).choice(10**6, ROWS, replace=False)),  # distinct, not a run
    ("id", np.arange(ROWS) % 50),  # an identifier's name, values that repeat
    ("colour", np.random.default_rng(4).choice(["red", "green"], ROWS)),
    ("weight", np.random.default_rng(5).normal(70, 10, ROWS)),  # distinct floats
    ("count", [*range(ROWS - 1), None]),  # a run with a gap: not every row is numbered
])
def test_a_legitimate_feature_is_not_an_identifier(name, values):
    assert identifier_reason(name, pd.Series(values)) is None


def test_an_allowed_identifier_is_not_listed():
    # given a table with two row-number columns, one allowed by the user
    frame = pd.DataFrame({"Unnamed: 0": range(ROWS), "rank": range(ROWS), "x": [1.0] * ROWS})
    # then only the other is listed, in column order
    assert list(identifiers(frame, ["Unnamed: 0", "rank", "x"])) == ["Unnamed: 0", "rank"]
    assert list(identifiers(frame, ["Unnamed: 0", "rank", "x"], allowed=["rank"])) == ["Unnamed: 0"]


def _noisy_table(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Three classes that every feature predicts a little, and `after` that gives the label away."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 600)
    frame = pd.DataFrame({f"x{i}": labels + rng.normal(0, 1.0, len(labels)) for i in range(4)})
    frame["after"] = np.array(["paid", "refused", "pending"])[labels]
    frame.loc[::10, "x0"] = np.nan  # missing values are read too
    return frame, labels


def test_a_column_that_gives_the_label_away_is_flagged_and_the_others_are_not():
    # given a table where one text column is known only after the label
    frame, labels = _noisy_table()
    rows = np.arange(len(labels))
    found = lone_accuracies(frame, labels, list(frame.columns), rows[:400], rows[400:])
    # then that column alone reaches what all columns reach, and only it is flagged
    assert list(found.flagged()) == ["after"], found
    assert "prepare.csv.drop" in found.describe("after")
    # and without it, no single column comes near all the others together
    honest = frame.drop(columns="after")
    found = lone_accuracies(honest, labels, list(honest.columns), rows[:400], rows[400:])
    assert found.flagged() == {}, found
    assert found.all_columns > found.majority + 0.1


def test_a_number_column_with_a_stray_text_cell_is_left_to_the_dtype_check():
    values = pd.Series([*np.random.default_rng(6).normal(size=ROWS - 1), "abc"], dtype=object)
    assert identifier_reason("depth", values) is None

"""Feature columns that would make a model's accuracy a lie: row identifiers and lone predictors.

A table exported with its row names (R's `write.csv`, pandas' `to_csv` with its index) starts with
a column that numbers the rows. When the rows are sorted by class, that number predicts the label
perfectly on every split, and the served model would ask callers for a row number. Such a column
is refused before anything is trained (`identifier_reason`), unless the user says it is a real
feature (`prepare.csv.allow_identifier`).

A feature that predicts the label on its own nearly as well as all of them together
(`lone_accuracies`) is often known only after the label (a leak) but may be legitimate: the run
warns and the user decides.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# names that say "row identifier" when every value is distinct (compared in lower case)
_IDENTIFIER_NAME = re.compile(
    r"(id|idx|index|key|uuid|guid|rownames?|row|rows|row_?(id|ids|index|num|number|name|names))"
    r"|.*[_ .-]id"
)
_UNNAMED = re.compile(r"Unnamed: \d+")  # how pandas names a column with an empty header cell
SAMPLE_ROWS = 10_000  # rows of each split the lone-predictor models see at most
LONE_MARGIN = 0.01  # a column alone within this of all columns together is worth a warning...
BEATS_MAJORITY_BY = 0.05  # ...when it also beats the majority class by at least this much


def identifier_reason(name: str, values: pd.Series) -> str | None:
    """Why column `name` looks like a row identifier rather than a feature, or None.

    An unnamed column (an empty header cell: row names or an index written by the exporter);
    integers that are all distinct and form one consecutive run, in any order (row numbers); text
    that is all distinct (names, keys: no category would ever repeat); or a name such as id, index,
    row or rownames whose values are all distinct.
    """
    if not name.strip() or _UNNAMED.fullmatch(name):
        return "it has no name in the header (an exported row name or index)"
    present = values.dropna()
    if len(present) < 2 or not present.is_unique:
        return None
    if _IDENTIFIER_NAME.fullmatch(name.strip().lower()):
        return f"its name says so and its {len(present)} values are all distinct"
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.isna().all():
        return f"its {len(present)} text values are all distinct"
    if numbers.isna().any():  # numbers with some text: a broken column, which validation names
        return None
    if (numbers % 1 == 0).all() and numbers.max() - numbers.min() + 1 == len(numbers) == len(values):
        return (f"its integer values are all distinct and run consecutively from "
                f"{int(numbers.min())} to {int(numbers.max())} (row numbers)")
    return None


def identifiers(frame: pd.DataFrame, columns: Sequence[str],
                allowed: Sequence[str] = ()) -> dict[str, str]:
    """{column: reason} for each of `columns` that looks like a row identifier, in their order;
    the `allowed` ones are never listed."""
    reasons = {column: identifier_reason(str(column), frame[column])
               for column in columns if column not in set(allowed)}
    return {column: reason for column, reason in reasons.items() if reason}


@dataclass(frozen=True)
class LonePredictors:
    """Validation accuracy of a small tree on each feature alone, of the better of a boosted and a
    linear model on all of them, and of always answering the majority class."""

    alone: dict[str, float]  # column -> accuracy with that column only
    all_columns: float
    majority: float

    @property
    def threshold(self) -> float:
        """A column alone at or above this accuracy is worth a warning."""
        return max(self.all_columns - LONE_MARGIN, self.majority + BEATS_MAJORITY_BY)

    def flagged(self) -> dict[str, float]:
        return {column: score for column, score in self.alone.items() if score >= self.threshold}

    def describe(self, column: str) -> str:
        return (f"column '{column}' alone predicts the label with validation accuracy "
                f"{self.alone[column]:.4f}, all columns together {self.all_columns:.4f} and the "
                f"majority class {self.majority:.4f}: if its value is known only after the label, "
                f"drop it (prepare.csv.drop)")


def _sample(rows: np.ndarray, seed: int) -> np.ndarray:
    if len(rows) <= SAMPLE_ROWS:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, SAMPLE_ROWS, replace=False))


def _numeric_codes(train: pd.Series, other: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A column as numbers a tree can split: numbers as they are, text as the code of its category
    among the training split's (unseen: -1); missing as a value below all others, so that being
    missing can predict too."""
    numbers = pd.to_numeric(train, errors="coerce")
    if numbers.notna().sum() == train.notna().sum():  # numeric (or empty)
        floor = float(np.nanmin(numbers)) - 1.0 if numbers.notna().any() else 0.0
        return (numbers.fillna(floor).to_numpy(np.float64),
                pd.to_numeric(other, errors="coerce").fillna(floor).to_numpy(np.float64))
    categories = pd.Index(train.dropna().astype(str).unique())
    return _category_codes(train, categories), _category_codes(other, categories)


def _category_codes(series: pd.Series, categories: pd.Index) -> np.ndarray:
    codes = categories.get_indexer(series.astype(str))
    return np.where(series.isna(), -2, codes).astype(np.float64)


def lone_accuracies(frame: pd.DataFrame, labels: np.ndarray, columns: Sequence[str],
                    train_rows: np.ndarray, val_rows: np.ndarray, seed: int = 0) -> LonePredictors:
    """Fit on `train_rows` of `frame`, score on `val_rows` (at most SAMPLE_ROWS of each): one
    decision tree per column of `columns` (as many leaves as twice the classes, so a column can
    sort every class out) and the better of a boosted model and a linear one on all of them."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    train, val = _sample(train_rows, seed), _sample(val_rows, seed + 1)
    y_train, y_val = labels[train], labels[val]
    leaves = max(2, 2 * len(np.unique(labels)))
    coded = {column: _numeric_codes(frame[column].iloc[train], frame[column].iloc[val])
             for column in columns}
    alone = {}
    for column, (x_train, x_val) in coded.items():
        tree = DecisionTreeClassifier(max_leaf_nodes=leaves, random_state=seed)
        tree.fit(x_train.reshape(-1, 1), y_train)
        alone[column] = float((tree.predict(x_val.reshape(-1, 1)) == y_val).mean())
    x_train = np.column_stack([x for x, _ in coded.values()])
    x_val = np.column_stack([x for _, x in coded.values()])
    # the better of two kinds of model: boosted trees read categories and thresholds, a linear
    # model adds up many weak columns with fewer rows
    references = (HistGradientBoostingClassifier(max_iter=25, learning_rate=0.2, random_state=seed),
                  make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)))
    all_columns = max(float((model.fit(x_train, y_train).predict(x_val) == y_val).mean())
                      for model in references)
    majority_class = np.bincount(y_train).argmax()
    return LonePredictors(alone, all_columns, float((y_val == majority_class).mean()))

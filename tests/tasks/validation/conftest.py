"""Shared inputs of the tasks.services.validation tests.

Running suites through Great Expectations is what costs time (a fraction of a second per call,
whatever the table, as the suites do not grow with its columns), so each digits run is made once
per session and read by every test it informs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shrinkflow.config import PrepareConfig, ValidationRules
from shrinkflow.data import (
    DatasetSpec,
    Splits,
    builtin_table,
    normalize_splits,
    stratified_split,
    table_to_arrays,
)
from tasks.services.validation import DataValidationError, Failure, ValidationReport, validate_raw

RULES = ValidationRules()


def tiny_table(labels: list, target: str = "label") -> tuple[pd.DataFrame, DatasetSpec]:
    """A small csv-like table: two numeric features and the given labels."""
    n = len(labels)
    frame = pd.DataFrame({"a": np.linspace(0.0, 1.0, n), "b": np.arange(n, dtype=np.float64)})
    frame[target] = labels
    classes = tuple(sorted({str(v) for v in labels if v is not None}))
    spec = DatasetSpec("tiny", "tabular", (2,), ("a", "b"), target, classes, classes)
    return frame, spec


def split_table(frame: pd.DataFrame, spec: DatasetSpec) -> Splits:
    """Normalized train/val/test splits of a table, as the prepare stage makes them."""
    x, y = table_to_arrays(frame, spec)
    splits, _ = normalize_splits(stratified_split(x, y, 0.15, 0.2, seed=0), spec.kind)
    return splits


def rejected(validate: Callable[..., ValidationReport], *args) -> DataValidationError:
    with pytest.raises(DataValidationError) as caught:
        validate(*args)
    return caught.value


def failures_in(error: DataValidationError, column: str | None) -> tuple[Failure, ...]:
    """The failures of one column (None: the table-level ones), in the order reported."""
    return tuple(failure for failure in error.report.failures if failure.column == column)


@pytest.fixture(scope="session")
def digits() -> tuple[pd.DataFrame, DatasetSpec]:
    """The raw digits table (1797 x 65); tests copy it before breaking it."""
    return builtin_table(PrepareConfig())


@pytest.fixture(scope="session")
def digits_splits(digits) -> Splits:
    return split_table(*digits)


@pytest.fixture(scope="session")
def valid_digits(digits, tmp_path_factory) -> tuple[ValidationReport, Path]:
    """The report of the untouched digits table, and the Data Docs folder it was written to
    (alone in its parent folder)."""
    frame, spec = digits
    docs = tmp_path_factory.mktemp("valid_digits") / "docs"
    return validate_raw(frame, spec, RULES, docs), docs


@pytest.fixture(scope="session")
def broken_digits(digits, tmp_path_factory) -> tuple[DataValidationError, Path]:
    """The rejection of digits broken in a different column each way (so one run shows them all),
    and its Data Docs folder:

      px_0_0, px_7_7  dropped
      px_0_3          NaN at rows 3, 5, 7
      px_1_1          +inf at row 4
      px_2_2          the string 'abc' at row 0
      px_5_5          -inf at row 2
      label           10 at row 9 (digits has classes 0..9)
    """
    frame, spec = digits
    broken = frame.drop(columns=["px_7_7", "px_0_0"])
    broken.loc[[3, 5, 7], "px_0_3"] = np.nan
    broken.loc[4, "px_1_1"] = np.inf
    broken["px_2_2"] = broken["px_2_2"].astype(object)
    broken.loc[0, "px_2_2"] = "abc"
    broken.loc[2, "px_5_5"] = -np.inf
    broken.loc[9, "label"] = 10
    docs = tmp_path_factory.mktemp("broken_digits") / "docs"
    return rejected(validate_raw, broken, spec, RULES, docs), docs

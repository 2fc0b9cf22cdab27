"""tasks.validation: Great Expectations gates on the raw table and the processed splits.

Each broken input must be rejected with a DataValidationError whose message names the expectation,
the column and what was observed, and the Data Docs must be written first (kept on failure).
"""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pandas as pd
import pytest

from shrinkflow.config import PrepareConfig, ValidationRules
from shrinkflow.data import (
    DatasetSpec,
    Split,
    Splits,
    builtin_table,
    normalize_splits,
    stratified_split,
    table_to_arrays,
)
from tasks.validation import (
    DataValidationError,
    Failure,
    ValidationReport,
    validate_processed,
    validate_raw,
)

RULES = ValidationRules()


@pytest.fixture(scope="module")
def digits() -> tuple[pd.DataFrame, DatasetSpec]:
    """The raw digits table (1797 x 65); tests copy it before breaking it."""
    return builtin_table(PrepareConfig())


@pytest.fixture(scope="module")
def digits_splits(digits) -> Splits:
    """Normalized train/val/test splits of digits, as the prepare stage makes them."""
    frame, spec = digits
    x, y = table_to_arrays(frame, spec)
    splits, _ = normalize_splits(stratified_split(x, y, 0.15, 0.2, seed=0), spec.kind)
    return splits


def _tiny(labels: list, target: str = "label") -> tuple[pd.DataFrame, DatasetSpec]:
    """A small csv-like table: two numeric features and the given labels."""
    n = len(labels)
    frame = pd.DataFrame({"a": np.linspace(0.0, 1.0, n), "b": np.arange(n, dtype=np.float64)})
    frame[target] = labels
    classes = tuple(sorted({str(v) for v in labels if v is not None}))
    spec = DatasetSpec("tiny", "tabular", (2,), ("a", "b"), target, classes, classes)
    return frame, spec


def _rejected(validate, *args) -> DataValidationError:
    with pytest.raises(DataValidationError) as caught:
        validate(*args)
    return caught.value


# ---------------------------------------------------------------------------------------------
# raw table: valid input
# ---------------------------------------------------------------------------------------------
def test_validate_raw__valid_digits_table_passes_and_writes_data_docs(digits, tmp_path):
    # given the untouched digits table
    frame, spec = digits
    docs = tmp_path / "docs"
    # when it is validated
    report = validate_raw(frame, spec, RULES, docs)
    # then it passes every expectation and the Data Docs site is written under docs_dir only
    assert report.success and report.failures == (), f"digits should pass: {report.failures}"
    assert report.name == "raw:digits"
    # row count + 65 columns exist + 64 x (not null, numeric, in range) + label (not null, in set)
    assert report.evaluated == 1 + 65 + 64 * 3 + 2, f"unexpected suite size {report.evaluated}"
    assert report.warnings == (), "digits is balanced: no warning expected"
    assert report.docs_index == str(docs / "index.html") and (docs / "index.html").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["docs"], "nothing may be written outside docs"
    assert "raw-digits" in (docs / "index.html").read_text(), "the index should link the report"


def test_validation_report__to_dict_is_json_and_round_trips(tmp_path):
    # given the reports of a passing validation (with a warning) and of a failing one
    frame, spec = _tiny(["a"] * 54 + ["b"] * 6)
    passed = validate_raw(frame, spec, RULES, tmp_path)
    failed = _rejected(validate_raw, frame.head(10), spec, RULES, tmp_path).report
    for report in (passed, failed):
        # when each is converted to a dict and through JSON
        data = json.loads(json.dumps(report.to_dict()))
        # then nothing is lost
        assert ValidationReport.from_dict(data) == report
    assert failed.to_dict()["failures"] == [{
        "expectation": "expect_table_row_count_to_be_between", "column": None,
        "observed": "row count 10, expected at least 50"}]


# ---------------------------------------------------------------------------------------------
# raw table: broken inputs
# ---------------------------------------------------------------------------------------------
def test_validate_raw__nan_is_rejected_naming_column(digits, tmp_path):
    # given digits with three NaN pixels in one column
    frame, spec = digits
    broken = frame.copy()
    broken.loc[[3, 5, 7], "px_0_3"] = np.nan
    # when it is validated
    error = _rejected(validate_raw, broken, spec, RULES, tmp_path)
    # then exactly the null expectation of that column fails, with the count and the rows
    assert error.report.failures == (
        Failure("expect_column_values_to_not_be_null", "px_0_3",
                "3 of 1797 values are null (e.g. rows 3, 5, 7)"),
    )
    message = str(error)
    assert message.startswith("raw data 'digits' failed 1 of 260 expectations:\n"), message
    assert ("  - column 'px_0_3': expect_column_values_to_not_be_null: 3 of 1797 values are null"
            in message), message
    assert message.endswith(f"Data Docs: {tmp_path / 'index.html'}"), message


def test_validate_raw__data_docs_index_exists_after_a_failure(digits, tmp_path):
    # given digits with a NaN pixel
    frame, spec = digits
    broken = frame.copy()
    broken.loc[0, "px_4_4"] = np.nan
    docs = tmp_path / "reports" / "data_docs"
    # when it is rejected
    error = _rejected(validate_raw, broken, spec, RULES, docs)
    # then the failing report was still written and is linked from the error
    assert (docs / "index.html").is_file(), "Data Docs must be kept on failure"
    assert error.report.docs_index == str(docs / "index.html")
    assert not error.report.success
    pages = list((docs / "validations").rglob("*.html"))
    assert len(pages) == 1 and "px_4_4" in pages[0].read_text(), "the failure should be rendered"


def test_validate_raw__inf_is_rejected_naming_column_and_range(digits, tmp_path):
    # given digits with +inf in one pixel
    frame, spec = digits
    broken = frame.copy()
    broken.loc[4, "px_1_1"] = np.inf
    # when it is validated
    error = _rejected(validate_raw, broken, spec, RULES, tmp_path)
    # then the range expectation of that column fails, quoting the value and the range
    (failure,) = error.report.failures
    assert failure.expectation == "expect_column_values_to_be_between"
    assert failure.column == "px_1_1"
    assert failure.observed == "1 of 1797 values outside [0, 16] (e.g. inf at row 4)"
    assert "column 'px_1_1': expect_column_values_to_be_between: 1 of 1797" in str(error)


def test_validate_raw__out_of_range_uses_max_abs_value_without_a_known_range(tmp_path):
    # given a csv table (no known value range) with a value beyond max_abs_value
    frame, spec = _tiny(["x", "y"] * 30)
    frame.loc[2, "b"] = 5e6
    # when it is validated
    error = _rejected(validate_raw, frame, spec, RULES, tmp_path)
    # then the bound is +/- max_abs_value
    (failure,) = error.report.failures
    assert (failure.column, failure.observed) == (
        "b", "1 of 60 values outside [-1e+06, 1e+06] (e.g. 5e+06 at row 2)")


def test_validate_raw__missing_feature_column_is_reported_by_name(digits, tmp_path):
    # given digits without two of its pixel columns
    frame, spec = digits
    broken = frame.drop(columns=["px_7_7", "px_0_0"])
    # when it is validated
    error = _rejected(validate_raw, broken, spec, RULES, tmp_path)
    # then each missing column is its own failure, and GX did not choke on them
    assert error.report.failures == (
        Failure("expect_column_to_exist", "px_0_0", "column missing"),
        Failure("expect_column_to_exist", "px_7_7", "column missing"),
    )
    assert "column 'px_7_7': expect_column_to_exist: column missing" in str(error)
    assert "failed 2 of 254 expectations" in str(error), "no value checks for missing columns"


def test_validate_raw__string_in_feature_column_is_rejected_naming_dtype(digits, tmp_path):
    # given digits with the string "abc" in one pixel column
    frame, spec = digits
    broken = frame.copy()
    broken["px_2_2"] = broken["px_2_2"].astype(object)
    broken.loc[0, "px_2_2"] = "abc"
    # when it is validated
    error = _rejected(validate_raw, broken, spec, RULES, tmp_path)
    # then the dtype expectation fails naming the dtype (the range check is skipped, not crashed)
    assert error.report.failures == (
        Failure("expect_column_values_to_be_in_type_list", "px_2_2",
                "dtype object, expected a number"),
    )
    assert "column 'px_2_2': expect_column_values_to_be_in_type_list: dtype object" in str(error)


def test_validate_raw__label_out_of_range_is_rejected(digits, tmp_path):
    # given digits with the label 10 (digits has classes 0..9)
    frame, spec = digits
    broken = frame.copy()
    broken.loc[9, "label"] = 10
    # when it is validated
    error = _rejected(validate_raw, broken, spec, RULES, tmp_path)
    # then the label-set expectation fails, quoting the label
    assert error.report.failures == (
        Failure("expect_column_values_to_be_in_set", "label",
                "1 of 1797 values not in {0..9} (e.g. 10 at row 9)"),
    )
    assert "column 'label': expect_column_values_to_be_in_set: 1 of 1797 values" in str(error)


def test_validate_raw__too_few_rows_is_rejected(digits, tmp_path):
    # given the first 12 rows of digits and the default min_rows of 50
    frame, spec = digits
    # when they are validated
    error = _rejected(validate_raw, frame.head(12), spec, RULES, tmp_path)
    # then the table-level row count expectation fails, with the observed count
    assert error.report.failures == (
        Failure("expect_table_row_count_to_be_between", None, "row count 12, expected at least 50"),
    )
    assert ("  - table: expect_table_row_count_to_be_between: row count 12, expected at least 50"
            in str(error))


def test_validate_raw__csv_labels_only_need_to_be_present(tmp_path):
    # given csv tables whose classes come from the data: string labels, then one missing label
    frame, spec = _tiny(["cat", "dog"] * 30)
    broken = frame.copy()
    broken.loc[5, "label"] = None
    # when they are validated
    report = validate_raw(frame, spec, RULES, tmp_path)
    error = _rejected(validate_raw, broken, spec, RULES, tmp_path)
    # then any label value is accepted, a null one is not
    assert report.success and report.name == "raw:tiny"
    assert error.report.failures == (
        Failure("expect_column_values_to_not_be_null", "label",
                "1 of 60 values are null (e.g. rows 5)"),
    )


def test_validate_raw__imbalanced_table_warns_but_passes(tmp_path):
    # given a table with 54 rows of class "a" and 6 of class "b", and a warn ratio of 5
    frame, spec = _tiny(["a"] * 54 + ["b"] * 6)
    # when it is validated
    report = validate_raw(frame, spec, RULES, tmp_path)
    # then it passes with a warning naming both classes and their counts
    assert report.success
    (warning,) = report.warnings
    assert "'a' has 54 rows" in warning and "'b' has 6" in warning and "9.0 > 5" in warning


def test_validate_raw__several_failures_are_all_listed_in_order(digits, tmp_path):
    # given digits with a NaN, an inf and a bad label at once
    frame, spec = digits
    broken = frame.copy()
    broken.loc[1, "px_3_3"] = np.nan
    broken.loc[2, "px_5_5"] = -np.inf
    broken.loc[3, "label"] = -1
    # when it is validated
    error = _rejected(validate_raw, broken, spec, RULES, tmp_path)
    # then every failure is listed, in the order of the suite (columns in table order)
    lines = str(error).splitlines()
    assert lines[0] == "raw data 'digits' failed 3 of 260 expectations:"
    assert [re.match(r"  - column '([^']+)'", line)[1] for line in lines[1:4]] == [
        "px_3_3", "px_5_5", "label"]
    assert lines[4].startswith("Data Docs: ")


def test_data_validation_error__pickles_with_its_report(tmp_path):
    # given a validation error (Prefect may serialize task exceptions)
    frame, spec = _tiny(["a", "b"] * 5)
    error = _rejected(validate_raw, frame, spec, RULES, tmp_path)
    # when it is pickled and restored
    restored = pickle.loads(pickle.dumps(error))
    # then the report and the message survive
    assert restored.report == error.report and str(restored) == str(error)
    assert isinstance(restored, ValueError)


# ---------------------------------------------------------------------------------------------
# processed splits
# ---------------------------------------------------------------------------------------------
def test_validate_processed__valid_splits_pass(digits, digits_splits, tmp_path):
    # given the normalized splits of digits
    _, spec = digits
    # when they are validated
    report = validate_processed(digits_splits, spec, RULES, tmp_path)
    # then they pass and the report is written
    assert report.success, f"digits splits should pass: {report.failures}"
    assert report.name == "processed:digits" and report.evaluated == 17
    assert (tmp_path / "index.html").is_file()


def test_validate_processed__nan_in_a_split_is_rejected_naming_split(
    digits, digits_splits, tmp_path
):
    # given a validation split with NaN and inf in two samples
    _, spec = digits
    x = digits_splits.val.x.copy()
    x[3, 0, 0, 0] = np.nan
    x[5, 0, 1, 1] = np.inf
    broken = Splits(digits_splits.train, Split(x, digits_splits.val.y), digits_splits.test)
    # when the splits are validated
    error = _rejected(validate_processed, broken, spec, RULES, tmp_path)
    # then the failure names the split and the samples
    n_val = len(digits_splits.val)
    assert error.report.failures == (
        Failure("expect_column_values_to_be_in_set", "x_nonfinite",
                f"split 'val': 2 of {n_val} samples contain NaN/inf (e.g. val[3], val[5])"),
    )
    assert str(error).startswith("processed data 'digits' failed 1 of 17 expectations:\n")


def test_validate_processed__wrong_sample_shape_is_rejected_naming_split(
    digits, digits_splits, tmp_path
):
    # given a training split flattened to (N, 64) instead of (N, 1, 8, 8)
    _, spec = digits
    train = digits_splits.train
    flat = Split(train.x.reshape(len(train), -1), train.y)
    broken = Splits(flat, digits_splits.val, digits_splits.test)
    # when the splits are validated
    error = _rejected(validate_processed, broken, spec, RULES, tmp_path)
    # then the shape failure names the split, the shape found and the shape expected
    n = len(train)
    assert error.report.failures == (
        Failure("expect_column_values_to_be_in_set", "x_shape",
                f"split 'train': {n} of {n} samples have shape (64,), expected (1, 8, 8)"),
    )


def test_validate_processed__labels_and_class_coverage_are_checked(
    digits, digits_splits, tmp_path
):
    # given a test split with label 10 and a training split without any sample of class 3
    _, spec = digits
    train, test = digits_splits.train, digits_splits.test
    keep = train.y != 3
    y_test = test.y.copy()
    y_test[0] = 10
    broken = Splits(Split(train.x[keep], train.y[keep]), digits_splits.val, Split(test.x, y_test))
    # when the splits are validated
    error = _rejected(validate_processed, broken, spec, RULES, tmp_path)
    # then both are reported, each naming its split
    n_test = len(test)
    assert error.report.failures == (
        Failure("expect_column_values_to_be_between", "y",
                f"split 'test': 1 of {n_test} values outside [0, 9] (e.g. 10 at test[0])"),
        Failure("expect_column_distinct_values_to_contain_set", "y",
                "split 'train': values {3} never occur"),
    )


def test_validate_processed__empty_training_split_is_rejected(digits, digits_splits, tmp_path):
    # given an empty training split
    _, spec = digits
    empty = Split(digits_splits.train.x[:0], digits_splits.train.y[:0])
    broken = Splits(empty, digits_splits.val, digits_splits.test)
    # when the splits are validated
    error = _rejected(validate_processed, broken, spec, RULES, tmp_path)
    # then the missing training rows are reported
    assert Failure("expect_column_distinct_values_to_contain_set", "split",
                   "no rows in split(s) train") in error.report.failures


def test_validate_raw_and_processed__share_docs_dir_keeping_both_reports(
    digits, digits_splits, tmp_path
):
    # given one Data Docs folder for both stages, validated twice (a rerun)
    frame, spec = digits
    for _ in range(2):
        validate_raw(frame, spec, RULES, tmp_path)
        validate_processed(digits_splits, spec, RULES, tmp_path)
    # then the index links the latest raw and processed reports, one page each
    pages = sorted(p.name for p in (tmp_path / "validations").rglob("*.html"))
    assert pages == ["processed-digits-processed-digits.html", "raw-digits-raw-digits.html"]
    index = (tmp_path / "index.html").read_text()
    assert "raw-digits" in index and "processed-digits" in index

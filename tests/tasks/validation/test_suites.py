"""tasks.services.validation.suites: which expectations guard raw tables and processed splits.

Each broken input must be rejected with a DataValidationError whose failures name the
expectation, the column and what was observed; valid inputs pass, class imbalance only warns.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from shrinkflow.data import Split, Splits
from tasks.services.validation import Failure, validate_processed, validate_raw
from tasks.services.validation.suites import imbalance_warnings, sample_summary
from tests.tasks.validation.conftest import (
    RULES,
    failures_in,
    rejected,
    split_table,
    tiny_table,
)


# ---------------------------------------------------------------------------------------------
# raw table: valid input
# ---------------------------------------------------------------------------------------------
def test_validate_raw__valid_digits_table_passes_every_expectation(valid_digits):
    # given the report of the untouched digits table
    report, _ = valid_digits
    # then it passes every expectation of the suite
    assert report.success and report.failures == (), f"digits should pass: {report.failures}"
    assert report.name == "raw:digits" and report.failed == 0
    # table: row count, columns, label (not null, in set); columns: dtype; values: not null, range
    assert report.evaluated == 4 + 1 + 2, f"unexpected suite size {report.evaluated}"
    assert report.warnings == (), "digits is balanced: no warning expected"


def test_validate_raw__suite_size_does_not_grow_with_the_number_of_features(tmp_path):
    # given a csv-like table of 2 features and one of 300
    frame, spec = tiny_table(["x", "y"] * 30)
    wide = pd.DataFrame(np.ones((60, 300)), columns=[f"f{i}" for i in range(300)])
    wide["label"] = frame["label"]
    wide_spec = replace(spec, input_shape=(300,), feature_columns=tuple(wide.columns[:-1]))
    # when both are validated
    reports = [validate_raw(frame, spec, RULES, tmp_path / "narrow"),
               validate_raw(wide, wide_spec, RULES, tmp_path / "wide")]
    # then both evaluate the same 6 expectations (a csv label has no label set)
    assert [report.evaluated for report in reports] == [6, 6]


def test_validate_raw__csv_labels_only_need_to_be_present(tmp_path):
    # given csv tables whose classes come from the data: string labels, then one missing label
    frame, spec = tiny_table(["cat", "dog"] * 30)
    broken = frame.copy()
    broken.loc[5, "label"] = None
    # when they are validated
    report = validate_raw(frame, spec, RULES, tmp_path)
    error = rejected(validate_raw, broken, spec, RULES, tmp_path)
    # then any label value is accepted, a null one is not
    assert report.success and report.name == "raw:tiny"
    assert error.report.failures == (
        Failure("expect_column_values_to_not_be_null", "label",
                "1 of 60 values are null (e.g. rows 5)"),
    )


def test_validate_raw__imbalanced_table_warns_but_passes(tmp_path):
    # given a table with 54 rows of class "a" and 6 of class "b", and a warn ratio of 5
    frame, spec = tiny_table(["a"] * 54 + ["b"] * 6)
    # when it is validated
    report = validate_raw(frame, spec, RULES, tmp_path)
    # then it passes with a warning naming both classes and their counts
    assert report.success
    (warning,) = report.warnings
    assert "'a' has 54 rows" in warning and "'b' has 6" in warning and "9.0 > 5" in warning


@pytest.mark.parametrize("labels, expected", [
    (["a"] * 50 + ["b"] * 10, ()),  # ratio 5: at the limit, not over it
    (["a"] * 60, ()),  # a single class: nothing to compare
], ids=["at_the_ratio", "one_class"])
def test_imbalance_warnings__only_over_the_ratio_between_two_classes(labels, expected):
    # given tables at the warn ratio or with one class only
    frame, spec = tiny_table(labels)
    # when / then no warning is given
    assert imbalance_warnings(frame, spec, RULES) == expected


def test_imbalance_warnings__a_class_without_rows_counts_as_zero():
    # given a spec with classes a, b, c and a table without any c
    frame, spec = tiny_table(["a", "b"] * 30)
    spec = replace(spec, classes=("a", "b", "c"), labels=("a", "b", "c"))
    # when / then the missing class is the smallest one, with an infinite ratio
    (warning,) = imbalance_warnings(frame, spec, RULES)
    assert "smallest class 'c' has 0" in warning and "ratio inf" in warning


# ---------------------------------------------------------------------------------------------
# raw table: broken inputs (digits broken in one column per way, validated once)
# ---------------------------------------------------------------------------------------------
def test_validate_raw__nan_is_rejected_naming_column(broken_digits):
    # given digits with three NaN pixels in px_0_3 (and other columns broken otherwise)
    error, _ = broken_digits
    # then exactly the null expectation of that column fails, with the count and the rows
    assert failures_in(error, "px_0_3") == (
        Failure("expect_column_values_to_not_be_null", "px_0_3",
                "3 of 1797 values are null (e.g. rows 3, 5, 7)"),
    )
    assert ("  - column 'px_0_3': expect_column_values_to_not_be_null: 3 of 1797 values are null"
            in str(error)), str(error)


@pytest.mark.parametrize("column, value", [("px_1_1", "inf at row 4"),
                                           ("px_5_5", "-inf at row 2")])
def test_validate_raw__inf_is_rejected_naming_column_and_range(broken_digits, column, value):
    # given digits with +inf in px_1_1 and -inf in px_5_5
    error, _ = broken_digits
    # then the range expectation of that column fails, quoting the value and the range
    assert failures_in(error, column) == (
        Failure("expect_column_values_to_be_between", column,
                f"1 of 1797 values outside [0, 16] (e.g. {value})"),
    )
    assert f"column '{column}': expect_column_values_to_be_between: 1 of 1797" in str(error)


def test_validate_raw__missing_feature_columns_are_reported_by_name(broken_digits):
    # given digits without px_0_0 and px_7_7
    error, _ = broken_digits
    # then each missing column is its own failure, and GX did not choke on them
    for column in ("px_0_0", "px_7_7"):
        assert failures_in(error, column) == (
            Failure("expect_table_columns_to_match_set", column, "column missing"),)
    assert "column 'px_7_7': expect_table_columns_to_match_set: column missing" in str(error)
    # and: missing or text columns change no suite: the same 7 expectations are evaluated
    assert error.report.evaluated == 7


def test_validate_raw__string_in_feature_column_is_rejected_naming_dtype(broken_digits):
    # given digits with the string "abc" in px_2_2
    error, _ = broken_digits
    # then the dtype expectation fails naming the dtype (the range check is skipped, not crashed)
    assert failures_in(error, "px_2_2") == (
        Failure("expect_column_values_to_be_in_set", "px_2_2", "dtype object, expected a number"),
    )
    assert "column 'px_2_2': expect_column_values_to_be_in_set: dtype object" in str(error)


def test_validate_raw__label_out_of_range_is_rejected(broken_digits):
    # given digits with the label 10 (digits has classes 0..9)
    error, _ = broken_digits
    # then the label-set expectation fails, quoting the label
    assert failures_in(error, "label") == (
        Failure("expect_column_values_to_be_in_set", "label",
                "1 of 1797 values not in {0..9} (e.g. 10 at row 9)"),
    )
    assert "column 'label': expect_column_values_to_be_in_set: 1 of 1797 values" in str(error)


def test_validate_raw__several_failures_are_all_listed_in_order(broken_digits):
    # given digits broken in seven ways at once
    error, _ = broken_digits
    # then the failed expectations are counted (columns, dtype, nulls, range, label set) and every
    # offending column is listed, in table order (a missing column in its place), the label last
    lines = str(error).splitlines()
    assert lines[0] == "raw data 'digits' failed 5 of 7 expectations:"
    assert [re.match(r"  - column '([^']+)'", line)[1] for line in lines[1:8]] == [
        "px_0_0", "px_0_3", "px_1_1", "px_2_2", "px_5_5", "px_7_7", "label"]
    assert lines[8].startswith("Data Docs: ") and len(lines) == 9


def test_validate_raw__too_few_rows_is_rejected(tmp_path):
    # given 12 rows and the default min_rows of 50
    frame, spec = tiny_table(["x", "y"] * 6)
    # when they are validated
    error = rejected(validate_raw, frame, spec, RULES, tmp_path)
    # then the table-level row count expectation fails, with the observed count
    assert error.report.failures == (
        Failure("expect_table_row_count_to_be_between", None, "row count 12, expected at least 50"),
    )
    assert ("  - table: expect_table_row_count_to_be_between: row count 12, expected at least 50"
            in str(error))


def test_validate_raw__out_of_range_uses_max_abs_value_without_a_known_range(tmp_path):
    # given a csv table (no known value range) with a value beyond max_abs_value
    frame, spec = tiny_table(["x", "y"] * 30)
    frame.loc[2, "b"] = 5e6
    # when it is validated
    error = rejected(validate_raw, frame, spec, RULES, tmp_path)
    # then the bound is +/- max_abs_value
    (failure,) = error.report.failures
    assert (failure.column, failure.observed) == (
        "b", "1 of 60 values outside [-1e+06, 1e+06] (e.g. 5e+06 at row 2)")


def test_validate_raw__counts_every_offending_value_of_a_column(tmp_path):
    # given a csv table with 25 NaN in column a and 22 values beyond max_abs_value in column b,
    # more than the 20 values GX quotes
    frame, spec = tiny_table(["x", "y"] * 30)
    frame.loc[5:29, "a"] = np.nan
    frame.loc[30:51, "b"] = 2e6
    # when it is validated
    error = rejected(validate_raw, frame, spec, RULES, tmp_path)
    # then each column's failure counts all of its values
    assert error.report.failures == (
        Failure("expect_column_values_to_not_be_null", "a",
                "25 of 60 values are null (e.g. rows 5, 6, 7)"),
        Failure("expect_column_values_to_be_between", "b",
                "22 of 60 values outside [-1e+06, 1e+06] (e.g. 2e+06 at row 30, 2e+06 at row 31, "
                "2e+06 at row 32)"),
    )


def test_validate_raw__text_column_with_nulls_fails_both_checks(tmp_path):
    # given a csv table whose column b holds text and two empty cells
    frame, spec = tiny_table(["x", "y"] * 30)
    frame["b"] = frame["b"].astype(object)
    frame.loc[3, "b"] = "abc"
    frame.loc[[7, 8], "b"] = None
    # when it is validated
    error = rejected(validate_raw, frame, spec, RULES, tmp_path)
    # then its dtype and its nulls are reported, the range is not checked on text
    assert failures_in(error, "b") == (
        Failure("expect_column_values_to_be_in_set", "b", "dtype object, expected a number"),
        Failure("expect_column_values_to_not_be_null", "b",
                "2 of 60 values are null (e.g. rows 7, 8)"),
    )


def test_validate_raw__unlabeled_pool_gets_the_feature_checks_only(tmp_path):
    # given an unlabeled pool (no target column) with a NaN feature
    frame, spec = tiny_table(["x", "y"] * 30)
    pool = frame.drop(columns="label")
    pool.loc[1, "a"] = np.nan
    # when it is validated as unlabeled
    error = rejected(validate_raw, pool, spec, RULES, tmp_path, False)
    # then the missing target is no failure, the NaN is, under the pool's own name
    assert error.report.name == "unlabeled:tiny"
    assert error.report.failures == (
        Failure("expect_column_values_to_not_be_null", "a", "1 of 60 values are null (e.g. rows 1)"),
    )
    assert error.report.evaluated == 2 + 1 + 2, "row count, columns; dtype; not null, range"


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


@pytest.fixture(scope="module")
def broken_splits(digits, digits_splits, tmp_path_factory):
    """Digits splits broken in each split at once, their rejection, and what was kept of train:

      train  flattened to (N, 64) instead of (N, 1, 8, 8), without any sample of class 3
      val    NaN and inf in samples 3 and 5
      test   label 10 in sample 0
    """
    _, spec = digits
    train, val, test = digits_splits.train, digits_splits.val, digits_splits.test
    keep = train.y != 3
    flat = Split(train.x[keep].reshape(int(keep.sum()), -1), train.y[keep])
    x_val = val.x.copy()
    x_val[3, 0, 0, 0] = np.nan
    x_val[5, 0, 1, 1] = np.inf
    y_test = test.y.copy()
    y_test[0] = 10
    broken = Splits(flat, Split(x_val, val.y), Split(test.x, y_test))
    docs = tmp_path_factory.mktemp("broken_splits")
    return rejected(validate_processed, broken, spec, RULES, docs), broken


def test_validate_processed__nan_in_a_split_is_rejected_naming_split(broken_splits):
    # given a validation split with NaN and inf in two samples
    error, splits = broken_splits
    # then the failure names the split and the samples
    assert failures_in(error, "x_nonfinite") == (
        Failure("expect_column_values_to_be_in_set", "x_nonfinite",
                f"split 'val': 2 of {len(splits.val)} samples contain NaN/inf "
                "(e.g. val[3], val[5])"),
    )
    assert str(error).startswith("processed data 'digits' failed 4 of 17 expectations:\n")


def test_validate_processed__wrong_sample_shape_is_rejected_naming_split(broken_splits):
    # given a training split flattened to (N, 64) instead of (N, 1, 8, 8)
    error, splits = broken_splits
    # then the shape failure names the split, the shape found and the shape expected
    n = len(splits.train)
    assert failures_in(error, "x_shape") == (
        Failure("expect_column_values_to_be_in_set", "x_shape",
                f"split 'train': {n} of {n} samples have shape (64,), expected (1, 8, 8)"),
    )


def test_validate_processed__labels_and_class_coverage_are_checked(broken_splits):
    # given a test split with label 10 and a training split without any sample of class 3
    error, splits = broken_splits
    # then both are reported, each naming its split
    assert failures_in(error, "y") == (
        Failure("expect_column_values_to_be_between", "y",
                f"split 'test': 1 of {len(splits.test)} values outside [0, 9] "
                "(e.g. 10 at test[0])"),
        Failure("expect_column_distinct_values_to_contain_set", "y",
                "split 'train': values {3} never occur"),
    )


def test_validate_processed__empty_training_split_is_rejected(tmp_path):
    # given a small table's splits with an empty training split
    frame, spec = tiny_table(["x", "y"] * 30)
    splits = split_table(frame, spec)
    empty = Split(splits.train.x[:0], splits.train.y[:0])
    # when the splits are validated
    error = rejected(validate_processed, Splits(empty, splits.val, splits.test), spec, RULES,
                     tmp_path)
    # then the missing training rows are reported
    assert Failure("expect_column_distinct_values_to_contain_set", "split",
                   "no rows in split(s) train") in error.report.failures


def test_sample_summary__one_row_per_sample_and_mismatched_lengths_show_as_gaps():
    # given a training split with one more label than samples and a 2-D label array in val
    x = np.array([[1.0, -2.0], [np.inf, 0.5]], np.float32)
    splits = Splits(Split(x, np.array([0, 1, 1])), Split(x, np.zeros((2, 2))),
                    Split(x[:0], np.array([], np.int64)))
    # when the splits are summarized
    summary = sample_summary(splits)
    # then each sample is a row named after its split, the gap has no x and 2-D labels are null
    assert list(summary.index) == ["train[0]", "train[1]", "train[2]", "val[0]", "val[1]"]
    assert summary["x_shape"].tolist() == ["(2,)", "(2,)", "no x", "(2,)", "(2,)"]
    assert summary["x_nonfinite"].tolist()[:2] == [0, 1]
    assert summary["x_absmax"].tolist()[:2] == [2.0, 0.5], "non-finite values are left out"
    assert summary["y"].isna().tolist() == [False, False, False, True, True]

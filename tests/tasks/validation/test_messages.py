"""tasks.services.validation.messages: Great Expectations results in words, reports and their errors.

No suite is run here: results are given as GX hands them over (an expectation config, a result
dict, exception info), so each wording is pinned down on its own.
"""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from tasks.services.validation import DataValidationError, Failure, ValidationReport
from tasks.services.validation.messages import failures_of

NULLS = Failure("expect_column_values_to_not_be_null", "px_0_3",
                "3 of 1797 values are null (e.g. rows 3, 5, 7)")
TOO_FEW = Failure("expect_table_row_count_to_be_between", None,
                  "row count 10, expected at least 50")


def _report(*failures: Failure, failed: int | None = None,
            docs_index: str | None = "/docs/index.html") -> ValidationReport:
    """A report of 7 expectations, `failed` of them (one per failure unless told) failed."""
    return ValidationReport(name="raw:digits", success=not failures, evaluated=7,
                            failed=len(failures) if failed is None else failed,
                            failures=failures, warnings=("class imbalance in 'label'",),
                            docs_index=docs_index)


def _result(kind: str, result: dict | None = None, exception_info: dict | None = None,
            **kwargs) -> SimpleNamespace:
    """A failed expectation's result, shaped as GX returns it."""
    return SimpleNamespace(expectation_config=SimpleNamespace(type=kind, kwargs=kwargs),
                           result=result, exception_info=exception_info)


# ---------------------------------------------------------------------------------------------
# reports and errors
# ---------------------------------------------------------------------------------------------
def test_failure__describes_its_column_or_the_table():
    assert NULLS.describe() == ("column 'px_0_3': expect_column_values_to_not_be_null: "
                                "3 of 1797 values are null (e.g. rows 3, 5, 7)")
    assert TOO_FEW.describe() == ("table: expect_table_row_count_to_be_between: "
                                  "row count 10, expected at least 50")


def test_data_validation_error__message_lists_every_failure_and_the_data_docs():
    # given a report with two failures and its Data Docs
    report = _report(TOO_FEW, NULLS)
    # when it is raised
    message = str(DataValidationError(report))
    # then the message says how many of how many failed, one line each, then where the docs are
    assert message.splitlines() == [
        "raw data 'digits' failed 2 of 7 expectations:",
        f"  - {TOO_FEW.describe()}",
        f"  - {NULLS.describe()}",
        "Data Docs: /docs/index.html",
    ]


def test_data_validation_error__counts_failed_expectations_and_lists_each_offending_column():
    # given one failed expectation with an offending value in two columns
    other = Failure(NULLS.expectation, "px_0_4", "1 of 1797 values are null (e.g. rows 8)")
    # when it is raised
    lines = str(DataValidationError(_report(NULLS, other, failed=1))).splitlines()
    # then the header counts the expectation once, and each column has its line
    assert lines[:3] == ["raw data 'digits' failed 1 of 7 expectations:",
                         f"  - {NULLS.describe()}", f"  - {other.describe()}"]


def test_data_validation_error__without_data_docs_names_none():
    message = str(DataValidationError(_report(NULLS, docs_index=None)))
    assert "Data Docs" not in message and message.endswith(NULLS.describe())


def test_validation_report__to_dict_is_json_and_round_trips():
    # given a passing report with a warning and a failing one
    for report in (_report(), _report(TOO_FEW)):
        # when each is converted to a dict and through JSON
        data = json.loads(json.dumps(report.to_dict()))
        # then nothing is lost
        assert ValidationReport.from_dict(data) == report
    assert _report(TOO_FEW).to_dict()["failures"] == [{
        "expectation": "expect_table_row_count_to_be_between", "column": None,
        "observed": "row count 10, expected at least 50", "noun": "column"}]


def test_data_validation_error__pickles_with_its_report():
    # given a validation error (Prefect may serialize task exceptions)
    error = DataValidationError(_report(NULLS))
    # when it is pickled and restored
    restored = pickle.loads(pickle.dumps(error))
    # then the report and the message survive
    assert restored.report == error.report and str(restored) == str(error)
    assert isinstance(restored, ValueError)


# ---------------------------------------------------------------------------------------------
# one failed result in words
# ---------------------------------------------------------------------------------------------
SPLIT_VAL = {"column": {"name": "split"}, "operator": "==", "parameter": "val"}
FRAME = pd.DataFrame({"px": [1.0, 2.0]})


@pytest.mark.parametrize("result, expected", [
    (_result("expect_table_row_count_to_be_between", {"observed_value": 12}, min_value=50),
     "row count 12, expected at least 50"),
    (_result("expect_column_values_to_not_be_null",
             {"unexpected_count": 4, "element_count": 60,
              "partial_unexpected_index_list": [3, 5, 7, 9]}, column="a"),
     "4 of 60 values are null (e.g. rows 3, 5, 7)"),
    (_result("expect_column_values_to_be_between",
             {"unexpected_count": 2, "element_count": 60,
              "partial_unexpected_list": [np.inf, -np.inf],
              "partial_unexpected_index_list": [4, 7]},
             column="a", min_value=0, max_value=16.0),
     "2 of 60 values outside [0, 16] (e.g. inf at row 4, -inf at row 7)"),
    (_result("expect_column_values_to_be_between",
             {"unexpected_count": 1, "element_count": 60, "partial_unexpected_list": [5e6]},
             column="a", max_value=1e6),
     "1 of 60 values outside <= 1e+06 (e.g. 5e+06)"),
    (_result("expect_column_values_to_be_in_set",
             {"unexpected_count": 1, "element_count": 60, "partial_unexpected_list": ["x"],
              "partial_unexpected_index_list": [{"index": 2}]},
             column="label", value_set=["a", "b"]),
     "1 of 60 values not in {'a', 'b'} (e.g. 'x' at row 2)"),
    (_result("expect_column_distinct_values_to_contain_set", {"observed_value": [0, 1, 2]},
             column="y", value_set=list(range(10))),
     "values {3..9} never occur"),
    (_result("expect_column_distinct_values_to_contain_set", {"partial_missing_list": ["train"]},
             column="split", value_set=["train"]),
     "no rows in split(s) train"),
    (_result("expect_column_values_to_be_in_set",
             {"unexpected_count": 2, "element_count": 270,
              "partial_unexpected_index_list": ["val[3]", "val[5]"]},
             column="x_nonfinite", value_set=[0], row_condition=SPLIT_VAL),
     "split 'val': 2 of 270 samples contain NaN/inf (e.g. val[3], val[5])"),
    (_result("expect_column_values_to_be_in_set",
             {"unexpected_count": 2, "element_count": 2, "partial_unexpected_list": ["(64,)"] * 2},
             column="x_shape", value_set=["(1, 8, 8)"], row_condition=SPLIT_VAL),
     "split 'val': 2 of 2 samples have shape (64,), expected (1, 8, 8)"),
    (_result("expect_column_values_to_be_between",
             {"unexpected_count": 1, "element_count": 9, "partial_unexpected_list": [2e6],
              "partial_unexpected_index_list": ["val[0]"]},
             column="x_absmax", max_value=1e6, row_condition=SPLIT_VAL),
     "split 'val': 1 of 9 samples have |x| > 1e+06 (e.g. 2e+06 at val[0])"),
    (_result("expect_column_mean_to_be_between", {"observed_value": 7.5}, column="a"),
     "observed 7.5"),
], ids=["row_count", "nulls", "range", "upper_bound", "label_set", "missing_classes",
        "empty_split", "nonfinite", "sample_shape", "sample_absmax", "other"])
def test_failures_of__says_what_was_observed(result, expected):
    # when a failed result is put in words
    failures = failures_of(result, FRAME)
    # then it is one failure, the expectation and column kept, the observation as expected
    assert failures == (Failure(result.expectation_config.type,
                                result.expectation_config.kwargs.get("column"), expected),)


def test_failures_of__names_each_missing_column():
    # given a failed column-set expectation missing two columns
    result = _result("expect_table_columns_to_match_set",
                     {"observed_value": ["px_0_1", "label"],
                      "details": {"mismatched": {"missing": ["px_0_0", "px_7_7"]}}},
                     column_set=["px_0_0", "px_0_1", "px_7_7", "label"], exact_match=False)
    # when / then each missing column is a failure of its own, in the order GX lists them
    assert failures_of(result, FRAME) == (
        Failure("expect_table_columns_to_match_set", "px_0_0", "column missing"),
        Failure("expect_table_columns_to_match_set", "px_7_7", "column missing"),
    )


# the reshaped views of a raw table with columns a and b of 30 rows: one row per column, and one
# row per value
COLUMNS = pd.DataFrame({"feature": ["a", "b"], "dtype": ["float64", "object"]})
CELLS = pd.DataFrame({"feature": ["a"] * 30 + ["b"] * 30, "row": [*range(30), *range(30)]})


def _located(kind: str, column: str, where: list[dict], **kwargs) -> SimpleNamespace:
    """A failed result on a reshaped view, as GX returns it with result format COMPLETE and the
    view's locating columns: only the first 20 offending values in the partial lists."""
    locators = [key for key in ("feature", "row") if key in where[0]]
    return _result(kind, {
        "element_count": 60, "unexpected_count": len(where),
        "partial_unexpected_list": [entry[column] for entry in where[:20]],
        "partial_unexpected_index_list": where[:20],
        "unexpected_list": [entry[column] for entry in where],
        "unexpected_index_list": where, "unexpected_index_column_names": locators,
    }, column=column, **kwargs)


def test_failures_of__a_reshaped_view_is_told_per_original_column_with_complete_counts():
    # given 25 nulls in column a (more than GX's 20 partial ones) and 2 in column b
    rows = {"a": range(2, 27), "b": [0, 9]}
    where = [{"value": None, "feature": feature, "row": row}
             for feature, found in rows.items() for row in found]
    # when the failed null expectation of the per-value view is put in words
    failures = failures_of(_located("expect_column_values_to_not_be_null", "value", where), CELLS)
    # then each column is a failure of its own, with its full count of its own rows
    assert failures == (
        Failure("expect_column_values_to_not_be_null", "a",
                "25 of 30 values are null (e.g. rows 2, 3, 4)"),
        Failure("expect_column_values_to_not_be_null", "b",
                "2 of 30 values are null (e.g. rows 0, 9)"),
    )


def test_failures_of__a_range_failure_of_a_reshaped_view_quotes_values_and_rows():
    # given an inf in row 4 of column b
    where = [{"value": np.inf, "feature": "b", "row": 4}]
    result = _located("expect_column_values_to_be_between", "value", where,
                      min_value=0, max_value=16)
    # when / then the failure names the column, the value and its row
    assert failures_of(result, CELLS) == (
        Failure("expect_column_values_to_be_between", "b",
                "1 of 30 values outside [0, 16] (e.g. inf at row 4)"),)


def test_failures_of__a_dtype_failure_of_the_column_view_names_the_dtype():
    # given the dtype check of the per-column view, failed by column b (object)
    where = [{"dtype": "object", "feature": "b"}]
    result = _located("expect_column_values_to_be_in_set", "dtype", where,
                      value_set=["float64", "int64"])
    # when / then the failure names the column and its dtype
    assert failures_of(result, COLUMNS) == (
        Failure("expect_column_values_to_be_in_set", "b", "dtype object, expected a number"),)


@pytest.mark.parametrize("info", [
    {"raised_exception": True, "exception_message": "boom"},
    {"metric-id": {"raised_exception": True, "exception_message": "boom"}},
], ids=["flat", "per_metric"])
def test_failures_of__an_expectation_that_raised_says_it_could_not_be_evaluated(info):
    result = _result("expect_column_values_to_not_be_null", None, info, column="a")
    assert failures_of(result, FRAME) == (
        Failure("expect_column_values_to_not_be_null", "a", "could not be evaluated: boom"),)

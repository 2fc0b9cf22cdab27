"""tasks.validation.messages: Great Expectations results in words, reports and their errors.

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

from tasks.validation import DataValidationError, Failure, ValidationReport
from tasks.validation.messages import failure_of

NULLS = Failure("expect_column_values_to_not_be_null", "px_0_3",
                "3 of 1797 values are null (e.g. rows 3, 5, 7)")
TOO_FEW = Failure("expect_table_row_count_to_be_between", None,
                  "row count 10, expected at least 50")


def _report(*failures: Failure, docs_index: str | None = "/docs/index.html") -> ValidationReport:
    return ValidationReport(name="raw:digits", success=not failures, evaluated=260,
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
        "raw data 'digits' failed 2 of 260 expectations:",
        f"  - {TOO_FEW.describe()}",
        f"  - {NULLS.describe()}",
        "Data Docs: /docs/index.html",
    ]


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
        "observed": "row count 10, expected at least 50"}]


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
FRAME = pd.DataFrame({"px": pd.Series(["abc", 1.0], dtype=object)})


@pytest.mark.parametrize("result, expected", [
    (_result("expect_column_to_exist", {}, column="px_0_0"), "column missing"),
    (_result("expect_table_row_count_to_be_between", {"observed_value": 12}, min_value=50),
     "row count 12, expected at least 50"),
    (_result("expect_column_values_to_be_in_type_list", {"observed_value": "object_"},
             column="px", type_list=["float64"]),
     "dtype object, expected a number"),
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
], ids=["missing_column", "row_count", "dtype", "nulls", "range", "upper_bound", "label_set",
        "missing_classes", "empty_split", "nonfinite", "sample_shape", "sample_absmax", "other"])
def test_failure_of__says_what_was_observed(result, expected):
    # when a failed result is put in words
    failure = failure_of(result, FRAME)
    # then the expectation and column are kept and the observation reads as expected
    assert failure == Failure(result.expectation_config.type,
                              result.expectation_config.kwargs.get("column"), expected)


@pytest.mark.parametrize("info", [
    {"raised_exception": True, "exception_message": "boom"},
    {"metric-id": {"raised_exception": True, "exception_message": "boom"}},
], ids=["flat", "per_metric"])
def test_failure_of__an_expectation_that_raised_says_it_could_not_be_evaluated(info):
    result = _result("expect_column_values_to_not_be_null", None, info, column="a")
    assert failure_of(result, FRAME).observed == "could not be evaluated: boom"

"""Great Expectations results in words: what failed, in which column, and what was observed.

Nothing here imports GX: a result is read through the attributes every GX validation result has
(`expectation_config.type`, `.kwargs`, `result`, `exception_info`), so the wording can be checked
without running a suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from shrinkflow.errors import UserError

_EXAMPLES = 3  # offending values / rows quoted in a failure


@dataclass(frozen=True)
class Failure:
    """One failed expectation, in words."""

    expectation: str  # e.g. "expect_column_values_to_not_be_null"
    column: str | None  # None for table-level expectations
    observed: str  # what was observed, e.g. "3 of 1797 values are null (e.g. rows 3, 5, 7)"
    noun: str = "column"  # what `column` names: a column, or an image folder's "file" or "folder"

    def describe(self) -> str:
        where = f"{self.noun} '{self.column}'" if self.column is not None else "table"
        return f"{where}: {self.expectation}: {self.observed}"

    def to_dict(self) -> dict:
        return {"expectation": self.expectation, "column": self.column, "observed": self.observed,
                "noun": self.noun}


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of one validation run."""

    name: str  # "<stage>:<dataset>", e.g. "raw:digits" or "processed:digits"
    success: bool
    evaluated: int  # number of expectations evaluated
    failed: int  # number of expectations failed
    failures: tuple[Failure, ...]  # one per failed expectation and offending column
    warnings: tuple[str, ...]  # e.g. class imbalance; never a reason to fail
    docs_index: str | None  # the Data Docs index.html that was written, if any

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "success": self.success,
            "evaluated": self.evaluated,
            "failed": self.failed,
            "failures": [failure.to_dict() for failure in self.failures],
            "warnings": list(self.warnings),
            "docs_index": self.docs_index,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ValidationReport:
        return cls(
            name=data["name"],
            success=bool(data["success"]),
            evaluated=int(data["evaluated"]),
            failed=int(data["failed"]),
            failures=tuple(Failure(**item) for item in data["failures"]),
            warnings=tuple(data["warnings"]),
            docs_index=data.get("docs_index"),
        )


class DataValidationError(UserError, ValueError):
    """The data failed at least one expectation; `report` holds the details and the Docs path."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__(_error_message(report))

    def __reduce__(self):  # keep the report when pickled (Prefect may serialize task exceptions)
        return (type(self), (self.report,))


def _error_message(report: ValidationReport) -> str:
    stage, _, dataset = report.name.partition(":")
    failed, evaluated = report.failed, report.evaluated
    lines = [f"{stage} data '{dataset}' failed {failed} of {evaluated} expectations:"]
    lines += [f"  - {failure.describe()}" for failure in report.failures]
    if report.docs_index:
        lines.append(f"Data Docs: {report.docs_index}")
    return "\n".join(lines)


def failures_of(result: Any, frame: pd.DataFrame) -> tuple[Failure, ...]:
    """The failed GX expectation result `result`, on the validated `frame`, in words: one Failure
    per offending column.

    A missing-columns result names each missing column. A result on a reshaped frame, whose
    unexpected values GX located by the original table's column (and row) they come from
    (`gx.View.located_by`, e.g. "feature" and "row"), is told per column of the original table, in
    the frame's order, with that column's count of rows in the frame: GX lists every unexpected
    value then (result format COMPLETE), not only the first 20.
    """
    config = result.expectation_config
    kwargs = config.kwargs
    error = _exception_message(result.exception_info)
    if error is not None:
        return (Failure(config.type, kwargs.get("column"), f"could not be evaluated: {error}"),)
    found = dict(result.result or {})
    if config.type == "expect_table_columns_to_match_set":
        missing = found.get("details", {}).get("mismatched", {}).get("missing") or []
        return tuple(Failure(config.type, column, "column missing") for column in missing)
    located = found.get("unexpected_index_column_names")
    if located and "unexpected_index_list" in found:
        parts = _per_column(found, kwargs["column"], located, frame)
    else:
        parts = {kwargs.get("column"): found}
    split = _split_of(kwargs.get("row_condition"))
    in_split = f"split '{split}': " if split is not None else ""
    # a view of a table is located by its "feature" (a column); one of an image folder by the
    # "file" or "folder" it holds a row for
    noun = located[0] if located and located[0] in ("file", "folder") else "column"
    return tuple(
        Failure(config.type, column, in_split + _observed(config.type, kwargs, part, column),
                noun)
        for column, part in parts.items()
    )


def _per_column(
    result: dict, value_key: str, located: list[str], frame: pd.DataFrame
) -> dict[Any, dict]:
    """A result on a reshaped frame as results per column of the original table, {column: result},
    in the order GX lists the unexpected values: each with the column's unexpected values, the rows
    they are in (if `located` names a row too) and the column's count of rows in the frame."""
    column_key, *row_key = located
    totals = frame[column_key].value_counts()
    found: dict[Any, list[dict]] = {}
    for where in result["unexpected_index_list"]:
        found.setdefault(where[column_key], []).append(where)
    return {
        column: {
            "unexpected_count": len(entries),
            "element_count": int(totals[column]),
            "partial_unexpected_list": [where[value_key] for where in entries],
            "partial_unexpected_index_list": [where[key] for where in entries for key in row_key],
        }
        for column, entries in found.items()
    }


def _observed(kind: str, kwargs: dict, result: dict, located: Any = None) -> str:
    """What `result` observed; `located` is the table's column it is about, when the validated
    frame was a reshaped view of the table."""
    column = kwargs.get("column")
    if kind == "expect_table_row_count_to_be_between":
        expected = kwargs.get("min_value")
        return f"row count {result.get('observed_value')}, expected at least {expected}"
    if kind == "expect_column_distinct_values_to_contain_set":
        missing = result.get("partial_missing_list")  # GX 1.24 reports no observed_value here
        if missing is None:
            seen = {_plain(value) for value in result.get("observed_value") or []}
            missing = [value for value in kwargs["value_set"] if _plain(value) not in seen]
        if column == "split":
            return f"no rows in split(s) {', '.join(map(str, missing))}"
        return f"values {_values(missing)} never occur"

    count, total = result.get("unexpected_count", 0), result.get("element_count", 0)
    examples = _examples(result)
    # the per-column view of validate_raw
    if column == "dtype":
        return f"dtype {_distinct(result)}, expected a number"
    if column == "kind":
        return (f"{_distinct(result)}: a feature column holds numbers or text; fix those cells, "
                "or drop the column (prepare.csv.drop)")
    if column == "identifier":
        return (f"a row identifier, not a feature: {_distinct(result)}; drop it "
                f"(prepare.csv.drop: [{located!r}]), or keep it if it is a real feature "
                f"(prepare.csv.allow_identifier: [{located!r}])")
    if column == "alone_accuracy":
        return (f"alone predicts the label with validation accuracy {_distinct(result)}, "
                f"at or above {_num(kwargs.get('max_value'))}")
    # the views of an image folder
    if column == "error":
        return _distinct(result)
    if column == "images":
        return (f"holds {_distinct(result)} images; a class needs at least "
                f"{_num(kwargs.get('min_value'))} (prepare.images.min_per_class)")
    # the per-sample summary columns of validate_processed, in their own words
    if column == "x_shape":
        return (
            f"{count} of {total} samples have shape {_distinct(result)}, "
            f"expected {', '.join(map(str, kwargs['value_set']))}"
        )
    if column == "x_nonfinite":
        return f"{count} of {total} samples contain NaN/inf{_examples(result, rows_only=True)}"
    if column == "x_absmax":
        return (
            f"{count} of {total} samples have |x| > {_num(kwargs.get('max_value'))}{examples}"
        )
    if kind == "expect_column_values_to_not_be_null":
        return f"{count} of {total} values are null{_examples(result, rows_only=True)}"
    if kind == "expect_column_values_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        bounds = f"[{_num(low)}, {_num(high)}]" if low is not None else f"<= {_num(high)}"
        return f"{count} of {total} values outside {bounds}{examples}"
    if kind == "expect_column_values_to_be_in_set":
        return f"{count} of {total} values not in {_values(kwargs['value_set'])}{examples}"
    observed = result.get("observed_value")
    if observed is not None:
        return f"observed {observed}"
    return f"{count} of {total} values unexpected{examples}" if total else "failed"


def _distinct(result: dict) -> str:
    """The distinct unexpected values, e.g. '(64,) / (8, 8)'."""
    return " / ".join(sorted({str(value) for value in result.get("partial_unexpected_list") or []})) or "?"


def _examples(result: dict, rows_only: bool = False) -> str:
    """' (e.g. inf at row 4, -inf at row 7)': the first offending values and where they are;
    with `rows_only`, ' (e.g. rows 4, 7)' or ' (e.g. val[3], val[5])'."""
    values = list(result.get("partial_unexpected_list") or [])[:_EXAMPLES]
    rows = list(result.get("partial_unexpected_index_list") or [])[:_EXAMPLES]
    if rows_only and rows:
        if all(isinstance(r, (int, np.integer)) for r in rows):
            return f" (e.g. rows {', '.join(str(r) for r in rows)})"
        return f" (e.g. {', '.join(_row(r) for r in rows)})"
    if not values:
        return ""
    if len(rows) == len(values):
        listed = ", ".join(f"{_value(v)} at {_row(r)}" for v, r in zip(values, rows, strict=True))
    else:
        listed = ", ".join(_value(v) for v in values)
    return f" (e.g. {listed})"


def _row(index: Any) -> str:
    if isinstance(index, str):  # processed summaries are indexed '<split>[<i>]'
        return index
    if isinstance(index, dict):
        index = next(iter(index.values()), index)
    return f"row {index}"


def _value(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (float, np.floating)):
        return _num(value)
    return str(value)


def _num(value: Any) -> str:
    if isinstance(value, (int, np.integer)) or value is None:
        return str(value)
    return f"{float(value):g}"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _values(values: list) -> str:
    """[0, 1, ..., 9] reads as '{0..9}'; anything else is listed."""
    plain = [_plain(v) for v in values]
    if len(plain) > 3 and all(isinstance(v, int) for v in plain) and plain == list(
        range(plain[0], plain[0] + len(plain))
    ):
        return f"{{{plain[0]}..{plain[-1]}}}"
    return "{" + ", ".join(_value(v) for v in plain) + "}"


def _split_of(row_condition: Any) -> str | None:
    """The split a per-split expectation is conditioned on (split == 'val' -> 'val')."""
    if row_condition is None:
        return None
    if not isinstance(row_condition, dict):  # a Condition object rather than its serialized form
        row_condition = row_condition.dict() if hasattr(row_condition, "dict") else {}
    column = row_condition.get("column")
    name = column.get("name") if isinstance(column, dict) else column
    parameter = row_condition.get("parameter")
    is_equal = row_condition.get("operator") in ("==", "=")
    if name == "split" and is_equal and isinstance(parameter, str):
        return parameter
    return None


def _exception_message(info: Any) -> str | None:
    """GX records errors per metric ({metric_id: {...}}) or flat; return the first message."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "error")
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message") or "error")
    return None

"""Data-quality gates on raw and processed data, enforced with Great Expectations (GX).

Two gates guard the pipeline:

  validate_raw        the raw table (feature columns + target) before it is split: enough rows,
                      every expected column present, features numeric, non-null and within the
                      known value range (else +/- `max_abs_value`, so inf fails), labels non-null
                      and - for built-in sources - in the integer label set. Class imbalance is a
                      warning, not a failure.
  validate_processed  the train/val/test arrays after normalization: per-sample shape, no NaN/inf,
                      |x| <= `max_abs_value`, labels in [0, n_classes - 1], a non-empty training
                      split that holds every class.

Either one stops the pipeline *before* anything downstream (splitting, training, the registry) is
touched: it raises `DataValidationError`, whose message names every failed expectation, its column
and what was observed. The GX Data Docs site is written to `docs_dir` first, so the HTML report of a
failed run is kept for inspection and can be logged as an artifact.

Layering: the core package `shrinkflow/` knows nothing of GX; this adapter module is the only place
that imports it, lazily, because the import takes seconds. Both functions write only under
`docs_dir`: the Data Docs HTML plus the suites and results it renders (`docs_dir/_gx_store`, the
latest one per stage and data set); the GX context itself is ephemeral and built per call.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shrinkflow.config import ValidationRules
from shrinkflow.data import DatasetSpec, Splits

BUILTIN_SOURCES = frozenset({"digits", "mnist1d", "breast_cancer"})
SPLIT_NAMES = ("train", "val", "test")

# dtype names accepted for feature columns (numpy names and pandas nullable extension dtypes)
_NUMERIC_DTYPES = [
    *(f"{kind}{bits}" for kind in ("int", "uint") for bits in (8, 16, 32, 64)),
    "float16", "float32", "float64",
    *(f"{kind}{bits}Dtype" for kind in ("Int", "UInt") for bits in (8, 16, 32, 64)),
    "Float32Dtype", "Float64Dtype",
]
_EXAMPLES = 3  # offending values / rows quoted in a failure


# ---------------------------------------------------------------------------------------------
# Public types
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    """One failed expectation, in words."""

    expectation: str  # e.g. "expect_column_values_to_not_be_null"
    column: str | None  # None for table-level expectations
    observed: str  # what was observed, e.g. "3 of 1797 values are null (e.g. rows 3, 5, 7)"

    def describe(self) -> str:
        where = f"column '{self.column}'" if self.column is not None else "table"
        return f"{where}: {self.expectation}: {self.observed}"

    def to_dict(self) -> dict:
        return {"expectation": self.expectation, "column": self.column, "observed": self.observed}


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of one validation run."""

    name: str  # "<stage>:<dataset>", e.g. "raw:digits" or "processed:digits"
    success: bool
    evaluated: int  # number of expectations evaluated
    failures: tuple[Failure, ...]
    warnings: tuple[str, ...]  # e.g. class imbalance; never a reason to fail
    docs_index: str | None  # the Data Docs index.html that was written, if any

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "success": self.success,
            "evaluated": self.evaluated,
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
            failures=tuple(Failure(**item) for item in data["failures"]),
            warnings=tuple(data["warnings"]),
            docs_index=data.get("docs_index"),
        )


class DataValidationError(ValueError):
    """The data failed at least one expectation; `report` holds the details and the Docs path."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__(_error_message(report))

    def __reduce__(self):  # keep the report when pickled (Prefect may serialize task exceptions)
        return (type(self), (self.report,))


def _error_message(report: ValidationReport) -> str:
    stage, _, dataset = report.name.partition(":")
    failed, evaluated = len(report.failures), report.evaluated
    lines = [f"{stage} data '{dataset}' failed {failed} of {evaluated} expectations:"]
    lines += [f"  - {failure.describe()}" for failure in report.failures]
    if report.docs_index:
        lines.append(f"Data Docs: {report.docs_index}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Raw table
# ---------------------------------------------------------------------------------------------
def validate_raw(
    frame: pd.DataFrame, spec: DatasetSpec, rules: ValidationRules, docs_dir: Path,
    labeled: bool = True,
) -> ValidationReport:
    """Validate the raw table of `spec` and write Data Docs under `docs_dir`.

    `labeled=False` validates an unlabeled pool: the same feature checks, no target column.

    Raises:
        DataValidationError: after the Data Docs are written, if any expectation failed.
    """
    gxe = _import_gx().expectations
    lo, hi = spec.value_range or (-rules.max_abs_value, rules.max_abs_value)
    expected = [*spec.feature_columns, *([spec.target] if labeled else [])]
    present = set(frame.columns)

    suite: list = [gxe.ExpectTableRowCountToBeBetween(min_value=rules.min_rows)]
    # one expectation per expected column, so each missing column is its own, named failure;
    # per-column value checks are only added for columns that exist (GX would error on the others)
    suite += [gxe.ExpectColumnToExist(column=column) for column in expected]
    for column in spec.feature_columns:
        if column not in present:
            continue
        suite.append(gxe.ExpectColumnValuesToNotBeNull(column=column))
        suite.append(
            gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=_NUMERIC_DTYPES)
        )
        if _is_numeric(frame[column]):  # a non-numeric column is already reported by its dtype
            suite.append(
                gxe.ExpectColumnValuesToBeBetween(column=column, min_value=lo, max_value=hi)
            )
    if labeled and spec.target in present:
        suite.append(gxe.ExpectColumnValuesToNotBeNull(column=spec.target))
        if spec.name in BUILTIN_SOURCES:  # built-in tables store labels as 0..len(classes)-1
            labels = list(range(len(spec.classes)))
            suite.append(gxe.ExpectColumnValuesToBeInSet(column=spec.target, value_set=labels))

    if not labeled:
        return _run(f"unlabeled:{spec.name}", frame, suite, (), docs_dir)
    warnings = _imbalance_warnings(frame, spec, rules)
    return _run(f"raw:{spec.name}", frame, suite, warnings, docs_dir)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(
        series.dtype
    )


def _imbalance_warnings(
    frame: pd.DataFrame, spec: DatasetSpec, rules: ValidationRules
) -> tuple[str, ...]:
    """A warning when the largest class has more than `imbalance_warn_ratio` x the smallest's rows.

    Classes are named as in `spec.classes`; a class of the spec that has no rows counts as 0.
    """
    if spec.target not in frame.columns:
        return ()
    # labels are matched as text, as table_to_arrays does
    counts = frame[spec.target].dropna().map(str).value_counts()
    names = dict(zip(spec.labels, spec.classes))
    counts = counts.reindex(
        [*spec.labels, *(label for label in counts.index if label not in names)], fill_value=0
    )
    counts.index = [names.get(label, label) for label in counts.index]
    if len(counts) < 2:
        return ()
    n_max, n_min = int(counts.max()), int(counts.min())
    ratio = math.inf if n_min == 0 else n_max / n_min
    if ratio <= rules.imbalance_warn_ratio:
        return ()
    return (
        f"class imbalance in '{spec.target}': largest class '{counts.idxmax()}' has {n_max} "
        f"rows, smallest class '{counts.idxmin()}' has {n_min} (ratio {ratio:.1f} > "
        f"{rules.imbalance_warn_ratio:g})",
    )


# ---------------------------------------------------------------------------------------------
# Processed splits
# ---------------------------------------------------------------------------------------------
def validate_processed(
    splits: Splits, spec: DatasetSpec, rules: ValidationRules, docs_dir: Path
) -> ValidationReport:
    """Validate the train/val/test arrays and write Data Docs under `docs_dir`.

    The arrays are summarized into one row per sample (split, label, per-sample shape, count of
    non-finite values, largest |x|), so the suite stays 17 expectations whatever the number of
    features. Every per-sample check is conditioned on its split, so each failure names the split.

    Raises:
        DataValidationError: after the Data Docs are written, if any expectation failed.
    """
    gx = _import_gx()
    gxe, Column = gx.expectations, gx.expectations.row_conditions.Column
    frame = _sample_summary(splits)
    n_classes = len(spec.classes)
    shape = str(tuple(spec.input_shape))

    suite: list = [
        # train row count >= 1 (val/test may legitimately be tiny, but training needs data)
        gxe.ExpectColumnDistinctValuesToContainSet(column="split", value_set=["train"]),
    ]
    for name in SPLIT_NAMES:
        in_split = Column("split") == name
        suite += [
            gxe.ExpectColumnValuesToBeInSet(
                column="x_shape", value_set=[shape], row_condition=in_split
            ),
            gxe.ExpectColumnValuesToBeInSet(
                column="x_nonfinite", value_set=[0], row_condition=in_split
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="x_absmax", max_value=rules.max_abs_value, row_condition=in_split
            ),
            gxe.ExpectColumnValuesToNotBeNull(column="y", row_condition=in_split),
            gxe.ExpectColumnValuesToBeBetween(
                column="y", min_value=0, max_value=n_classes - 1, row_condition=in_split
            ),
        ]
    suite.append(
        gxe.ExpectColumnDistinctValuesToContainSet(
            column="y", value_set=list(range(n_classes)), row_condition=Column("split") == "train"
        )
    )
    return _run(f"processed:{spec.name}", frame, suite, (), docs_dir)


def _sample_summary(splits: Splits) -> pd.DataFrame:
    """One row per sample: split, y, x_shape, x_nonfinite, x_absmax; indexed '<split>[<i>]'."""
    parts = []
    for name in SPLIT_NAMES:
        split = getattr(splits, name)
        x, y = np.asarray(split.x), np.asarray(split.y)
        n_x = len(x) if x.ndim else 0
        try:
            flat = x.reshape(n_x, -1).astype(np.float64)
        except (TypeError, ValueError):  # not numeric at all: every sample counts as non-finite
            flat = np.full((n_x, 1), np.nan)
        finite = np.isfinite(flat)
        part = pd.DataFrame(
            {
                "x_shape": [str(tuple(x.shape[1:]))] * n_x,
                "x_nonfinite": (~finite).sum(axis=1).astype(np.int64),
                "x_absmax": np.abs(np.where(finite, flat, 0.0)).max(axis=1, initial=0.0),
            }
        )
        # x and y of different lengths: pad the shorter one so the gap shows as a failure
        part = part.reindex(range(max(n_x, len(y))))
        part["x_shape"] = part["x_shape"].fillna("no x")
        labels = y if y.ndim == 1 else np.full(len(y) if y.ndim else 0, np.nan)  # 2-D y: null
        part["y"] = pd.Series(labels).reindex(part.index)
        part.insert(0, "split", name)
        part.index = [f"{name}[{i}]" for i in range(len(part))]
        parts.append(part)
    frame = pd.concat(parts)
    return frame.astype({"split": str, "x_shape": str, "x_absmax": np.float64})


# ---------------------------------------------------------------------------------------------
# Running a suite with Great Expectations
# ---------------------------------------------------------------------------------------------
def _import_gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations.row_conditions  # noqa: F401  (used as an attribute)

    return gx


STORE_DIR = "_gx_store"  # inside docs_dir: the suites and results the Data Docs pages render


def _context(docs_dir: Path):
    """A GX context whose only Data Docs site is `docs_dir`.

    Suites and validation results are kept as JSON in `docs_dir/_gx_store`, not in memory: GX's
    index builder deletes every page whose suite or result is not in the context's stores, so
    with in-memory stores each call would wipe the report of the previous one (validate_processed
    would delete the raw report). Everything else (data sources, validation definitions) stays in
    memory, and nothing is written outside `docs_dir`.
    """
    gx = _import_gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    root = docs_dir.resolve()
    defaults = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    stores = dict(defaults.stores)
    for store_name, folder in (
        (defaults.expectations_store_name, "expectations"),
        (defaults.validation_results_store_name, "validations"),
    ):
        stores[store_name] = {
            **stores[store_name],
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(root / STORE_DIR / folder),
            },
        }
    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(root)},
    }
    config = DataContextConfig(
        # init_temp_docs_sites=False: the default ephemeral context also has a docs site in a
        # temporary directory, which would be a write outside docs_dir
        store_backend_defaults=defaults,
        stores=stores,
        data_docs_sites={"local_site": site},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),  # no tqdm bars in pipeline logs
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _run(
    name: str,
    frame: pd.DataFrame,
    expectations: list,
    warnings: tuple[str, ...],
    docs_dir: Path,
) -> ValidationReport:
    """Validate `frame` against `expectations`, update the Data Docs, then report (or raise)."""
    gx = _import_gx()
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    docs_dir = Path(docs_dir)
    docs_dir.mkdir(parents=True, exist_ok=True)
    context = _context(docs_dir)
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name.replace(":", "-"))  # "raw-digits"

    # one suite and one (the latest) result per stage and data set: drop those of earlier runs,
    # whose pages the index build below then removes
    suites = context.expectations_store
    old_suite = suites.get_key(name=slug, id=None)
    if suites.has_key(old_suite):
        suites.remove_key(old_suite)
    results_store = context.validation_results_store
    for key in results_store.list_keys():
        if getattr(key, "expectation_suite_identifier", None) == ExpectationSuiteIdentifier(slug):
            results_store.remove_key(key)

    asset = context.data_sources.add_pandas(slug).add_dataframe_asset(slug)
    batch = asset.add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(gx.ExpectationSuite(name=slug, expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=slug, data=batch, suite=suite)
    )
    # ValidationDefinition.run stores the result; a Checkpoint would only add its own bookkeeping
    suite_result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20},
    )
    # render only this suite and result; the index is rebuilt from everything in the stores
    suite_id = ExpectationSuiteIdentifier(name=suite.name)
    result_id = ValidationResultIdentifier(
        expectation_suite_identifier=suite_id,
        run_id=suite_result.meta["run_id"],
        batch_identifier=suite_result.batch_id,
    )
    context.build_data_docs(resource_identifiers=[result_id, suite_id])
    for folder in (docs_dir / "validations", docs_dir / STORE_DIR / "validations"):
        _remove_empty_dirs(folder)  # GX removes the files of replaced results, not their folders

    order = {expectation.id: i for i, expectation in enumerate(suite.expectations)}
    results = sorted(
        suite_result.results, key=lambda r: order.get(r.expectation_config.id, len(order))
    )
    failures = tuple(_failure(r, frame) for r in results if not r.success)
    index = docs_dir / "index.html"
    report = ValidationReport(
        name=name,
        success=not failures,
        evaluated=len(results),
        failures=failures,
        warnings=warnings,
        docs_index=str(index) if index.is_file() else None,
    )
    if failures:
        raise DataValidationError(report)
    return report


def _remove_empty_dirs(root: Path) -> None:
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        if folder != str(root) and not os.listdir(folder):
            os.rmdir(folder)


# ---------------------------------------------------------------------------------------------
# Failures in words
# ---------------------------------------------------------------------------------------------
def _failure(result: Any, frame: pd.DataFrame) -> Failure:
    config = result.expectation_config
    kwargs = config.kwargs
    column = kwargs.get("column")
    error = _exception_message(result.exception_info)
    if error is not None:
        return Failure(config.type, column, f"could not be evaluated: {error}")
    observed = _observed(config.type, kwargs, dict(result.result or {}), frame)
    split = _split_of(kwargs.get("row_condition"))
    if split is not None:
        observed = f"split '{split}': {observed}"
    return Failure(config.type, column, observed)


def _observed(kind: str, kwargs: dict, result: dict, frame: pd.DataFrame) -> str:
    column = kwargs.get("column")
    if kind == "expect_column_to_exist":
        return "column missing"
    if kind == "expect_table_row_count_to_be_between":
        expected = kwargs.get("min_value")
        return f"row count {result.get('observed_value')}, expected at least {expected}"
    if kind == "expect_column_values_to_be_in_type_list":
        dtype = frame[column].dtype if column in frame.columns else result.get("observed_value")
        return f"dtype {dtype}, expected a number"
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
    # the per-sample summary columns of validate_processed, in their own words
    if column == "x_shape":
        shapes = sorted({str(value) for value in result.get("partial_unexpected_list") or []})
        return (
            f"{count} of {total} samples have shape {' / '.join(shapes) or '?'}, "
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
        listed = ", ".join(f"{_value(v)} at {_row(r)}" for v, r in zip(values, rows))
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

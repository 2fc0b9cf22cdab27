"""Which expectations guard raw tables, unlabeled pools and processed splits.

The suites are lists of GX expectations built from the data set's spec and the rules of
params.yaml `prepare.validation`; `gx.run_suite` evaluates them. Class imbalance is computed
here too: it is a warning, never an expectation that fails.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from shrinkflow.config import ValidationRules
from shrinkflow.data import DatasetSpec, Splits
from tasks.validation.gx import import_gx, run_suite
from tasks.validation.messages import ValidationReport

BUILTIN_SOURCES = frozenset({"digits", "mnist1d", "breast_cancer"})
SPLIT_NAMES = ("train", "val", "test")

# dtype names accepted for feature columns (numpy names and pandas nullable extension dtypes)
_NUMERIC_DTYPES = [
    *(f"{kind}{bits}" for kind in ("int", "uint") for bits in (8, 16, 32, 64)),
    "float16", "float32", "float64",
    *(f"{kind}{bits}Dtype" for kind in ("Int", "UInt") for bits in (8, 16, 32, 64)),
    "Float32Dtype", "Float64Dtype",
]


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
    suite = raw_expectations(frame, spec, rules, labeled)
    if not labeled:
        return run_suite(f"unlabeled:{spec.name}", frame, suite, (), docs_dir)
    warnings = imbalance_warnings(frame, spec, rules)
    return run_suite(f"raw:{spec.name}", frame, suite, warnings, docs_dir)


def raw_expectations(
    frame: pd.DataFrame, spec: DatasetSpec, rules: ValidationRules, labeled: bool = True
) -> list:
    """The suite of a raw table (or, `labeled=False`, of an unlabeled pool) of `spec`."""
    gxe = import_gx().expectations
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
    return suite


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(
        series.dtype
    )


def imbalance_warnings(
    frame: pd.DataFrame, spec: DatasetSpec, rules: ValidationRules
) -> tuple[str, ...]:
    """A warning when the largest class has more than `imbalance_warn_ratio` x the smallest's rows.

    Classes are named as in `spec.classes`; a class of the spec that has no rows counts as 0.
    """
    if spec.target not in frame.columns:
        return ()
    # labels are matched as text, as table_to_arrays does
    counts = frame[spec.target].dropna().map(str).value_counts()
    names = dict(zip(spec.labels, spec.classes, strict=True))
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
    frame = sample_summary(splits)
    return run_suite(f"processed:{spec.name}", frame, processed_expectations(spec, rules), (),
                     docs_dir)


def processed_expectations(spec: DatasetSpec, rules: ValidationRules) -> list:
    """The suite of the per-sample summary (`sample_summary`) of the splits of `spec`."""
    gx = import_gx()
    gxe, Column = gx.expectations, gx.expectations.row_conditions.Column
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
    return suite


def sample_summary(splits: Splits) -> pd.DataFrame:
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

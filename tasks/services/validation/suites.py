"""Which expectations guard raw tables, unlabeled pools and processed splits.

The suites are lists of GX expectations built from the data set's spec and the rules of
params.yaml `prepare.validation`; `gx.run_suite` evaluates them. No suite grows with the number
of features, as GX spends its time per expectation rather than per value: the raw table's columns
and values are checked on reshaped views of it (one row per column, one row per value), the splits
on a per-sample summary. Class imbalance is computed here too: it is a warning, never an
expectation that fails.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shrinkflow.config import CsvSource, ValidationRules
from shrinkflow.data import DatasetSpec, Splits
from shrinkflow.encode import column_kind
from shrinkflow.leaks import LonePredictors
from tasks.services.validation.gx import View, import_gx, run_suite
from tasks.services.validation.messages import ValidationReport

BUILTIN_SOURCES = frozenset({"digits", "mnist1d", "breast_cancer"})
SPLIT_NAMES = ("train", "val", "test")

# dtype names (str(dtype)) accepted for feature columns: numpy's and pandas' nullable ones
NUMERIC_DTYPES = [
    *(f"{kind}{bits}" for kind in ("int", "uint", "Int", "UInt") for bits in (8, 16, 32, 64)),
    "float16", "float32", "float64", "Float32", "Float64",
]


# ---------------------------------------------------------------------------------------------
# Raw table
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Leaks:
    """What `shrinkflow.leaks` found in a user table's feature columns, for its raw suite."""

    identifiers: Mapping[str, str]  # column -> why it looks like a row identifier (not allowed)
    lone: LonePredictors | None  # None when the table could not be split to measure it


def validate_raw(
    frame: pd.DataFrame, spec: DatasetSpec, rules: ValidationRules, docs_dir: Path,
    labeled: bool = True, leaks: Leaks | None = None, csv: CsvSource | None = None,
) -> ValidationReport:
    """Validate the raw table of `spec` and write Data Docs under `docs_dir`.

    `labeled=False` validates an unlabeled pool: the same feature checks, no target column.
    `leaks` adds the row-identifier expectation (a failure) and the lone-predictor one (a
    warning) to the columns view. `csv` (a user table's settings) accepts text columns, and
    missing values unless `csv.missing` is "refuse". Failures are listed table-level first, then
    column by column in the order of the spec.

    Raises:
        DataValidationError: after the Data Docs are written, if any expectation failed.
    """
    expected = _expected_columns(spec, labeled)
    views = raw_views(frame, spec, rules, labeled, leaks, csv)
    if not labeled:
        return run_suite(f"unlabeled:{spec.name}", views, (), docs_dir, expected)
    warnings = imbalance_warnings(frame, spec, rules)
    if leaks is not None and leaks.lone is not None:
        warnings += tuple(leaks.lone.describe(column) for column in leaks.lone.flagged())
    return run_suite(f"raw:{spec.name}", views, warnings, docs_dir, expected)


def raw_views(
    frame: pd.DataFrame, spec: DatasetSpec, rules: ValidationRules, labeled: bool = True,
    leaks: Leaks | None = None, csv: CsvSource | None = None,
) -> list[View]:
    """The views of a raw table (or, `labeled=False`, of an unlabeled pool) of `spec` and their
    suites: 7 expectations (6 for a csv source, 5 unlabeled) whatever the number of features,
    2 more with `leaks`.

      table    the table itself: enough rows, every expected column present (one expectation
               naming each missing column), the target not null and, for built-in sources, in
               the label set
      columns  one row per feature column (`column_view`): of a numeric dtype (with `csv`: numbers
               or text, not numbers with a few text cells); with `leaks`, not a row identifier,
               and (a warning) not predicting the label alone nearly as well as all columns
      cells    one row per feature value (`cell_view`): not null (unless `csv` imputes) and, in
               numeric columns, within the known value range (else +/- `max_abs_value`, so inf
               fails)
    """
    gx = import_gx()
    gxe, Column = gx.expectations, gx.expectations.row_conditions.Column
    lo, hi = spec.value_range or (-rules.max_abs_value, rules.max_abs_value)

    table: list = [
        gxe.ExpectTableRowCountToBeBetween(min_value=rules.min_rows),
        gxe.ExpectTableColumnsToMatchSet(
            column_set=_expected_columns(spec, labeled), exact_match=False
        ),
    ]
    # the target's checks only if it is there (GX would error); its absence is reported above
    if labeled and spec.target in frame.columns:
        table.append(gxe.ExpectColumnValuesToNotBeNull(column=spec.target))
        if spec.name in BUILTIN_SOURCES:  # built-in tables store labels as 0..len(classes)-1
            labels = list(range(len(spec.classes)))
            table.append(gxe.ExpectColumnValuesToBeInSet(column=spec.target, value_set=labels))
    nulls_allowed = csv is not None and csv.missing == "impute"
    cells = [
        *([] if nulls_allowed else [gxe.ExpectColumnValuesToNotBeNull(column="value")]),
        # the values of a non-numeric column are reported by its dtype, and GX could not compare
        # them to the range
        gxe.ExpectColumnValuesToBeBetween(
            column="value", min_value=lo, max_value=hi,
            row_condition=Column("dtype").is_in(NUMERIC_DTYPES),
        ),
    ]

    # the views hold the feature columns that are there, in the spec's order
    features = [column for column in spec.feature_columns if column in frame.columns]
    columns = column_view(frame, features)
    if csv is None:
        per_column: list = [gxe.ExpectColumnValuesToBeInSet(column="dtype",
                                                             value_set=NUMERIC_DTYPES)]
    else:
        columns["kind"] = [column_kind(frame[name]) for name in features]
        per_column = [gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=["number", "text"])]
    if leaks is not None:
        columns, more = _leak_checks(columns, leaks)
        per_column += more
    return [
        View("table", frame, table),
        View("columns", columns, per_column, located_by=("feature",)),
        View("cells", cell_view(frame, _cell_columns(frame, features, nulls_allowed)), cells,
             located_by=("feature", "row")),
    ]


def _cell_columns(frame: pd.DataFrame, features: Sequence[str], nulls_allowed: bool) -> list[str]:
    """The columns whose every value the cells view holds: all of them, or, where missing values
    are allowed, the numeric ones (the range is all that is left to check; a text column makes
    the view one of Python objects, several times the table's memory)."""
    if not nulls_allowed:
        return list(features)
    return [name for name in features if pd.api.types.is_numeric_dtype(frame[name].dtype)]


@functools.cache
def named_expectation(name: str, base: str, description: str) -> type:
    """A GX expectation class called `name` (Data Docs and failures name it: ExpectFooBar is
    expect_foo_bar), checking what GX's `base` checks; built on first use, as GX is imported
    lazily."""
    parent = getattr(import_gx().expectations, base)
    return type(name, (parent,), {"__annotations__": {"description": str},
                                  "description": description, "__module__": __name__})


def leak_expectations() -> tuple[type, type]:
    """The two GX expectations of `Leaks`."""
    return (
        named_expectation(
            "ExpectFeaturesToNotBeRowIdentifiers", "ExpectColumnValuesToBeInSet",
            "No feature column is a row identifier: an unnamed column, integers that are all "
            "distinct and consecutive, all-distinct text, or an id column with all-distinct "
            "values (prepare.csv.drop or prepare.csv.allow_identifier decide)"),
        named_expectation(
            "ExpectFeaturesToNotPredictTheLabelAlone", "ExpectColumnValuesToBeBetween",
            "No feature column alone predicts the label on validation nearly as well as all "
            "columns together (within 1 pp, and 5 pp above the majority class): a warning, the "
            "user decides"),
    )


def _leak_checks(columns: pd.DataFrame, leaks: Leaks) -> tuple[pd.DataFrame, list]:
    """The column view with `identifier` (the reason, "" for none) and, when measured,
    `alone_accuracy`; and the expectations on them."""
    not_identifier, not_alone = leak_expectations()
    columns = columns.assign(identifier=[leaks.identifiers.get(name, "")
                                         for name in columns["feature"]])
    expectations = [not_identifier(column="identifier", value_set=[""])]
    if leaks.lone is not None:
        columns["alone_accuracy"] = [leaks.lone.alone.get(name, np.nan)
                                     for name in columns["feature"]]
        columns = columns.astype({"alone_accuracy": np.float64})
        expectations.append(not_alone(column="alone_accuracy", max_value=leaks.lone.threshold,
                                      strict_max=True, severity="warning"))
    return columns, expectations


def _expected_columns(spec: DatasetSpec, labeled: bool) -> list[str]:
    return [*spec.feature_columns, *([spec.target] if labeled else [])]


def column_view(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """One row per column of `columns` of `frame`, in that order: the `feature` (column) and its
    `dtype` (as str(dtype) names it: 'float64', 'Int64', 'object', 'str')."""
    return pd.DataFrame(
        {"feature": list(columns), "dtype": [str(frame[column].dtype) for column in columns]},
        dtype=object,
    )


def cell_view(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """One row per value of `columns` of `frame`, column by column in that order: the `feature`
    (column) it is in, its `row` (index label in `frame`), the column's `dtype` (as in
    `column_view`) and the `value`.

    The values keep their type: those of numeric columns together stay numbers, a text or mixed
    column makes the whole `value` column one of objects.
    """
    # the columns are numbered for the reshape, so that no feature name can clash with the view's
    numbered = frame[list(columns)].set_axis(range(len(columns)), axis=1).rename_axis("row")
    cells = numbered.melt(var_name="column", value_name="value", ignore_index=False).reset_index()
    position = cells["column"].to_numpy(dtype=np.int64)
    # categoricals: a byte per value rather than a string, as there is a row per value
    dtypes = pd.Categorical(column_view(frame, columns)["dtype"])
    return pd.DataFrame({
        "feature": pd.Categorical.from_codes(position, categories=list(columns)),
        "row": cells["row"],
        "dtype": pd.Categorical.from_codes(dtypes.codes[position], dtype=dtypes.dtype),
        "value": cells["value"],
    })


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
# Image folder
# ---------------------------------------------------------------------------------------------
def validate_images(files: pd.DataFrame, classes: pd.DataFrame, spec: DatasetSpec,
                    rules: ValidationRules, min_per_class: int, docs_dir: Path
                    ) -> ValidationReport:
    """Validate an image folder from its two views, and write Data Docs under `docs_dir`:

      classes  one row per class sub-folder: `label` (its name), `folder` (its path) and
               `images` (how many image files it holds): at least two classes, each with at
               least `min_per_class` images (a folder without any fails too)
      files    one row per image file: `file` (its path), `label`, and `error` (why it cannot be
               read as an image, "" when it can): at least `rules.min_rows` files, all readable

    Each failure names the folder or file. Class imbalance is a warning, as for tables.

    Raises:
        DataValidationError: after the Data Docs are written, if any expectation failed.
    """
    gxe = import_gx().expectations
    readable = named_expectation(
        "ExpectImagesToBeReadable", "ExpectColumnValuesToBeInSet",
        "Every image file decodes (PNG, JPEG, BMP, GIF, WebP, TIFF) within the pixel limit")
    enough = named_expectation(
        "ExpectClassesToHaveEnoughImages", "ExpectColumnValuesToBeBetween",
        "Every class folder holds at least prepare.images.min_per_class images")
    views = [
        View("classes", classes, [gxe.ExpectTableRowCountToBeBetween(min_value=2),
                                  enough(column="images", min_value=min_per_class)],
             located_by=("folder",)),
        View("files", files, [gxe.ExpectTableRowCountToBeBetween(min_value=rules.min_rows),
                              readable(column="error", value_set=[""])],
             located_by=("file",)),
    ]
    return run_suite(f"raw:{spec.name}", views, imbalance_warnings(files, spec, rules), docs_dir)


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
    view = View("samples", sample_summary(splits), processed_expectations(spec, rules))
    return run_suite(f"processed:{spec.name}", [view], (), docs_dir)


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
        try:  # in the arrays' own float type: a float64 copy of a big split is gigabytes
            flat = x.reshape(n_x, -1)
            flat = flat if np.issubdtype(flat.dtype, np.floating) else flat.astype(np.float64)
        except (TypeError, ValueError):  # not numeric at all: every sample counts as non-finite
            flat = np.full((n_x, 1), np.nan)
        nonfinite = (~np.isfinite(flat)).sum(axis=1).astype(np.int64)
        with np.errstate(invalid="ignore"):  # NaN rows: their largest finite |x| is taken below
            absmax = np.abs(flat).max(axis=1, initial=0.0)
        if nonfinite.any():  # the largest finite |x| of the rows that have a NaN or an inf
            rows = nonfinite > 0
            absmax[rows] = np.abs(np.where(np.isfinite(flat[rows]), flat[rows], 0.0)).max(
                axis=1, initial=0.0)
        part = pd.DataFrame(
            {
                "x_shape": [str(tuple(x.shape[1:]))] * n_x,
                "x_nonfinite": nonfinite,
                "x_absmax": absmax.astype(np.float64),
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

"""A user table's columns as model inputs: text encoded, missing values filled, fitted on train.

The pipeline's models read float feature rows. A table may hold text (categorical) columns and
missing values; `TableEncoder` turns each row into floats, with everything it needs learned on
the training split only:

  number   as it is; a missing value becomes the column's training median
  text     one-hot over the training split's categories plus an explicit "unknown" slot (a
           category never seen in training lands there: never an error, never a wrong code), or
           with `prepare.csv.ordinal` one code per category in the order the user gives
           (unknown: -1); a missing value becomes the most frequent training category
  both     with `missing_indicator`, a 0/1 column "was missing" for each column that had
           missing values in training, after all the value columns

The same encoding is written as ONNX nodes (`front`), so the deployed graph takes the raw row as
the table has it, strings and nulls included, and no caller ever encodes anything. Text counts as
missing when it is one of the spellings pandas reads as missing in a CSV (`MISSING_TEXT`), so a
served row and the training table agree on what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from onnx import NodeProto, TensorProto, helper, numpy_helper

# what pandas.read_csv reads as missing by default (pandas._libs.parsers.STR_NA_VALUES), and
# what ONNX Runtime makes of a None or NaN in a string tensor ("nan", "None")
MISSING_TEXT = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
UNKNOWN = "<unknown>"  # the name of a one-hot column's slot for categories unseen in training
ML_DOMAIN = "ai.onnx.ml"
Kind = Literal["number", "text"]


@dataclass(frozen=True)
class Column:
    """How one raw column becomes float columns."""

    name: str
    kind: Kind
    fill: float | str  # the training median (number) or most frequent category (text)
    categories: tuple[str, ...] = ()  # text: one-hot's categories (sorted) or the ordinal order
    ordinal: bool = False
    indicator: bool = False  # a 0/1 "was missing" column follows

    @property
    def outputs(self) -> tuple[str, ...]:
        """The names of the float columns its values become, in order."""
        if self.kind == "number" or self.ordinal:
            return (self.name,)
        return tuple(f"{self.name}={category}" for category in (*self.categories, UNKNOWN))


def column_kind(values: pd.Series) -> str:
    """"number" (every present value is one), "text" (at most half are numbers: codes such as
    "3" among names are categories too), or, for a column of numbers with a few text cells (a
    typo, a unit), "numbers and text (e.g. 'abc' at row 3)", which no encoding should guess at."""
    present = values[~missing(values)]
    numbers = pd.to_numeric(present, errors="coerce")
    text = numbers.isna()
    if not text.any():
        return "number"
    if text.mean() > 0.5:
        return "text"
    return f"numbers and text (e.g. {present[text].iloc[0]!r} at row {present[text].index[0]})"


def is_text(values: pd.Series) -> bool:
    return column_kind(values) == "text"


def missing(values: pd.Series) -> np.ndarray:
    """Where `values` is missing: null, or (text) a spelling of missing."""
    gaps = values.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(values.dtype):  # no spelling to look for
        return gaps
    return gaps | values.astype(str).isin(MISSING_TEXT).to_numpy()


@dataclass(frozen=True)
class TableEncoder:
    """Raw feature columns -> float32 rows, fitted on the training split (module docstring)."""

    columns: tuple[Column, ...]
    nullable: bool = False  # whether served rows may have missing values (they are filled)
    layout: Literal["matrix", "columns"] = field(default="matrix")  # one float input, or one
    # input per column (needed as soon as one column is text)

    @classmethod
    def fit(cls, train: pd.DataFrame, features: Sequence[str],
            ordinal: Mapping[str, Sequence[str]] | None = None,
            indicator: bool = False) -> TableEncoder:
        """Learn each column's kind, fill value and categories from the training rows."""
        ordinal = ordinal or {}
        columns = []
        for name in features:
            values = train[name]
            gaps = missing(values)
            present = values[~gaps]
            if is_text(values) or name in ordinal:
                text = present.astype(str)
                counts = text.value_counts()
                fill = str(min(counts.index[counts == counts.max()])) if len(counts) else ""
                order = tuple(ordinal.get(name, ())) or tuple(sorted(counts.index.astype(str)))
                columns.append(Column(name, "text", fill, order, name in ordinal,
                                      indicator and bool(gaps.any())))
            else:
                numbers = pd.to_numeric(present, errors="coerce").astype(np.float64)
                fill = float(numbers.median()) if len(numbers) else 0.0
                columns.append(Column(name, "number", fill, indicator=indicator and bool(gaps.any())))
        has_text = any(column.kind == "text" for column in columns)
        any_missing = bool(train[list(features)].isna().to_numpy().any())
        return cls(tuple(columns), nullable=has_text or any_missing,
                   layout="columns" if has_text else "matrix")

    @property
    def outputs(self) -> tuple[str, ...]:
        """The encoded columns' names: every column's values, then the indicators."""
        return (*(name for column in self.columns for name in column.outputs),
                *(f"{column.name}_missing" for column in self.columns if column.indicator))

    @property
    def width(self) -> int:
        return len(self.outputs)

    @property
    def is_identity(self) -> bool:
        """Numbers only, never missing: the rows are the features as they are."""
        return self.layout == "matrix" and not self.nullable and not any(
            column.indicator for column in self.columns)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """float32 (N, width): the encoded rows of `frame` (its feature columns), written into one
        array column by column (a big table's one-hot blocks never exist on their own)."""
        encoded = np.zeros((len(frame), self.width), np.float32)
        rows, at, indicators = np.arange(len(frame)), 0, []
        for column in self.columns:
            values = frame[column.name]
            gaps = missing(values)
            if column.kind == "number":
                numbers = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
                encoded[:, at] = np.where(gaps, column.fill, numbers)
            else:
                text = np.where(gaps, column.fill, values.astype(str).to_numpy())
                codes = pd.Index(column.categories).get_indexer(text)  # unseen: -1
                if column.ordinal:
                    encoded[:, at] = codes
                else:
                    encoded[rows, at + np.where(codes < 0, len(column.categories), codes)] = 1.0
            at += len(column.outputs)
            if column.indicator:
                indicators.append(gaps)
        for offset, gaps in enumerate(indicators):
            encoded[:, at + offset] = gaps
        return encoded

    def feed(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """The deployed graph's inputs for the raw rows of `frame`, as a caller sends them:
        one float32 [N] or text [N] array per column (layout "columns")."""
        return {column.name: frame[column.name].astype(str).to_numpy(object)
                if column.kind == "text" else
                pd.to_numeric(frame[column.name], errors="coerce").to_numpy(np.float32)
                for column in self.columns}

    def to_dict(self) -> dict:
        return {"columns": [asdict(column) for column in self.columns],
                "nullable": self.nullable, "layout": self.layout}

    @classmethod
    def from_dict(cls, data: dict) -> TableEncoder:
        columns = tuple(Column(**{**item, "categories": tuple(item["categories"])})
                        for item in data["columns"])
        return cls(columns, bool(data["nullable"]), data["layout"])

    # -----------------------------------------------------------------------------------------
    # The same encoding as ONNX nodes
    # -----------------------------------------------------------------------------------------
    def front(self, source: str, output: str, prefix: str
              ) -> tuple[list[NodeProto], list[TensorProto]]:
        """Nodes and constants that compute `transform` in a graph: from the float32 input
        `source` [N, columns] (layout "matrix"), or from one input per column named as the column
        (layout "columns"), to the float32 tensor `output` [N, width]."""
        builder = _Builder(prefix)
        if self.layout == "matrix":
            parts, indicators = builder.numbers(self.columns, source)
        else:
            encoded = [builder.encoded(column, column.name) for column in self.columns]
            parts = [values for values, _ in encoded]
            indicators = [gaps for _, gaps in encoded if gaps is not None]
        builder.node("Concat", [*parts, *indicators], output, axis=1)
        return builder.nodes, builder.constants


class _Builder:
    """Collects the nodes of `TableEncoder.front`, naming every tensor after `prefix`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[NodeProto] = []
        self.constants: list[TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def node(self, op: str, inputs: Sequence[str], output: str | None = None, domain: str = "",
             **attributes) -> str:
        output = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [output], domain=domain,
                                           **attributes))
        return output

    def constant(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.constants.append(numpy_helper.from_array(value, name))
        return name

    def as_column(self, vector: str, to: int | None = None) -> str:
        """[N] -> [N, 1], cast `to` a type first when given."""
        if to is not None:
            vector = self.node("Cast", [vector], to=to)
        axes = self.constant("axes", np.asarray([1], np.int64))
        return self.node("Unsqueeze", [vector, axes])

    def numbers(self, columns: Sequence[Column], source: str) -> tuple[list[str], list[str]]:
        """A float [N, columns] input filled where missing, and its indicator columns."""
        gaps = self.node("IsNaN", [source])
        fills = self.constant("fill", np.asarray([column.fill for column in columns], np.float32))
        flagged = [index for index, column in enumerate(columns) if column.indicator]
        if not flagged:
            return [self.node("Where", [gaps, fills, source])], []
        at = self.constant("flagged", np.asarray(flagged, np.int64))
        indicators = self.node("Cast", [self.node("Gather", [gaps, at], axis=1)],
                               to=TensorProto.FLOAT)
        return [self.node("Where", [gaps, fills, source])], [indicators]

    def encoded(self, column: Column, raw: str) -> tuple[str, str | None]:
        """The [N, k] float values `column` becomes from its [N] raw values, and its [N, 1]
        float "was missing" column when it has one."""
        if column.kind == "number":
            gaps = self.node("IsNaN", [raw])
            fill = self.constant("fill", np.asarray(column.fill, np.float32))
            values = self.as_column(self.node("Where", [gaps, fill, raw]))
            return values, self.as_column(gaps, to=TensorProto.FLOAT) if column.indicator else None
        categories = list(column.categories)
        unknown = -1 if column.ordinal else len(categories)
        fill_code = categories.index(column.fill) if column.fill in categories else unknown
        codes = self.node("LabelEncoder", [raw], domain=ML_DOMAIN,
                          keys_strings=[*categories, *MISSING_TEXT],
                          values_int64s=[*range(len(categories)), *[fill_code] * len(MISSING_TEXT)],
                          default_int64=unknown)
        if column.ordinal:
            values = self.as_column(codes, to=TensorProto.FLOAT)
        else:
            depth = self.constant("depth", np.asarray(len(categories) + 1, np.int64))
            onehot = self.constant("onehot", np.asarray([0.0, 1.0], np.float32))
            values = self.node("OneHot", [codes, depth, onehot], axis=-1)
        if not column.indicator:
            return values, None
        gaps = self.node("LabelEncoder", [raw], domain=ML_DOMAIN, keys_strings=list(MISSING_TEXT),
                         values_floats=[1.0] * len(MISSING_TEXT), default_float=0.0)
        return values, self.as_column(gaps)

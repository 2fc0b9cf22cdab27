"""Request bodies to float32 feature rows, or a 4xx error that says exactly what is wrong.

Accepted bodies are the JSON objects `mlflow models serve` takes, so clients written for MLflow work
unchanged:
  {"inputs": [[1.0, 2.0, ...], ...]}                  rows in the model's feature order; one flat
                                                      row [1.0, 2.0, ...] counts as a batch of one;
                                                      also as the model's one named input:
                                                      {"inputs": {"features": [[...], ...]}}
  {"dataframe_split": {"columns": [...], "data": [[...], ...]}}
                                                      columns optional; when given, exactly the
                                                      model's feature names, in any order
  {"dataframe_records": [{"name": value, ...}, ...]}  one object per row, keyed by feature name
  {"inputs": {"name": [...], ...}}                    one list per column (MLflow's form for a
                                                      model with one input per column)

Every value must be a finite JSON number. Python's json module reads the literals NaN and Infinity,
and numpy would turn the strings "nan" or "1.5" into floats: both are refused, and so are booleans
(true is not 1 here). A model that reads text columns takes strings there (numbers are read as
text), and null for a missing one; a model that fills missing values (`nullable`) takes null in
its number columns too. Rows in error messages count from 0 and are also given as a JSON path.

The common case (a list of lists of numbers) costs one numpy conversion and one finiteness check;
rows are only walked one by one, in Python, when that fails, to find and name the bad value.

An image model (`parse_images`) takes
  {"images": ["<base64 PNG or JPEG>", ...]}          encoded image files, as a client has them
                                                      (a "data:image/png;base64," prefix is allowed)
  {"inputs": [[[[r, g, b], ...], ...], ...]}          MLflow's tensor form: integers 0-255,
                                                      [N, height, width, C] (one image: [H, W, C])
Images of any size are resized to the model's, as its graph would (`shrinkflow.images`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from shrinkflow import images

ACCEPTED_KEYS = ("inputs", "dataframe_split", "dataframe_records")
_SHOWN_NAMES = 8  # an error lists at most this many column names (models may have hundreds)
_SHOWN_CHARS = 40  # an offending value is quoted up to this many characters
_FLOAT64_MAX = float(np.finfo(np.float64).max)


class BadRequest(Exception):
    """The client's request is wrong: `status` is the HTTP status (4xx), `message` says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_body(body: bytes, feature_names: Sequence[str], *, text: Collection[str] = (),
               nullable: bool = False, max_rows: int = 1024,
               max_bytes: int = 4_000_000) -> np.ndarray:
    """The rows of a JSON request body as float32 [n, F] (objects when `text` names columns),
    columns in the order of `feature_names`.

    Args:
        body: the raw request body (UTF-8 JSON).
        feature_names: the model's F feature names, in its input order.
        text: the columns that hold text: a string there is a category (a number is read as
            one too), null a missing one.
        nullable: whether null is accepted in number columns, as a missing value (NaN).
        max_rows: largest accepted batch; more rows are refused with 413.
        max_bytes: largest accepted body; a bigger one is refused with 413 before it is parsed.

    Raises:
        BadRequest: 413 for a body or batch over its limit, 400 for anything else wrong.
    """
    if len(body) > max_bytes:
        raise BadRequest(413, f"the body has {len(body)} bytes; the limit is {max_bytes}")
    payload = _decode(body)
    rows, columns, where = _rows(payload, tuple(feature_names))
    if not rows:
        raise BadRequest(400, f"{where} is empty: send at least one row")
    if len(rows) > max_rows:
        raise BadRequest(413, f"the request has {len(rows)} rows; the limit is {max_rows} per request "
                              f"(split the batch)")
    # `true`/`false` anywhere in the text (a column name, at worst) sends the rows down the slow path,
    # the only one that tells a boolean from 1 or 0
    text = frozenset(text)
    fast = not text and b"true" not in body and b"false" not in body
    array = _fast_array(rows, len(columns)) if fast else None
    if array is None:
        array = _array_row_by_row(rows, columns, where, text, nullable)
    if columns != feature_names:
        position = {name: index for index, name in enumerate(columns)}
        array = array[:, [position[name] for name in feature_names]]
    return array


def parse_images(body: bytes, image_shape: tuple[int, int, int], *, max_images: int = 1024,
                 max_bytes: int = 4_000_000, max_pixels: int = images.MAX_PIXELS) -> np.ndarray:
    """The images of a JSON request body (see the module docstring) as uint8
    [n, height, width, C] of the model's `image_shape`.

    Raises:
        BadRequest: 413 for a body, a batch or an image over its limit; 400 for anything else
            wrong (an image that does not decode, values outside 0-255, a wrong channel count),
            naming the image by its index.
    """
    if len(body) > max_bytes:
        raise BadRequest(413, f"the body has {len(body)} bytes; the limit is {max_bytes}")
    payload = _decode(body, ("images", "inputs"), '{"images": ["<base64 PNG or JPEG>", ...]}')
    keys = [key for key in ("images", "inputs") if key in payload]
    if len(keys) != 1:
        found = f"it has {_names(keys or list(payload)) or 'no keys'}"
        raise BadRequest(400, f"an image model takes a body with exactly one of the keys 'images' "
                              f"(base64 image files) and 'inputs' (pixel arrays); {found}")
    height, width, channels = image_shape
    if keys == ["images"]:
        decoded = _base64_images(payload["images"], channels, max_images, max_pixels)
    else:
        decoded = _pixel_arrays(payload["inputs"], channels, max_images, max_pixels)
    resize = _resizer(height, channels)
    return np.concatenate([resize(image[None]) for image in decoded])


@functools.cache
def _resizer(size: int, channels: int) -> images.Resizer:
    return images.Resizer(size, channels)


def _base64_images(value: Any, channels: int, max_images: int, max_pixels: int
                   ) -> list[np.ndarray]:
    if not isinstance(value, list) or not value:
        raise BadRequest(400, f"'images' must be a non-empty list of base64 strings; got {_kind(value)}")
    if len(value) > max_images:
        raise BadRequest(413, f"the request has {len(value)} images; the limit is {max_images} "
                              f"per request (split the batch)")
    decoded = []
    for index, text in enumerate(value):
        where = f"images[{index}]"
        if not isinstance(text, str):
            raise BadRequest(400, f"{where} must be a base64 string; got {_kind(text)}")
        if text.startswith("data:") and "," in text:  # a data URL: data:image/png;base64,....
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(400, f"{where} is not base64 (standard alphabet, padded)") from None
        try:
            decoded.append(images.decode(data, channels, max_pixels))
        except images.ImageTooLarge as error:
            raise BadRequest(413, f"{where}: {error}") from None
        except images.ImageError as error:
            raise BadRequest(400, f"{where}: {error}") from None
    return decoded


def _pixel_arrays(value: Any, channels: int, max_images: int, max_pixels: int
                  ) -> list[np.ndarray]:
    if isinstance(value, dict) and len(value) == 1:  # the named input: {"images": [...]}
        value = next(iter(value.values()))
    expected = f"integers 0-255 shaped [N, height, width, {channels}]"
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        array = None
    if array is not None and array.ndim == 3:  # one image, sent without its batch
        array = array[None]
    if array is None or array.ndim != 4 or array.dtype.kind not in "iu" or not array.size:
        raise BadRequest(400, f"'inputs' of an image model must be {expected}")
    if array.shape[3] != channels:
        raise BadRequest(400, f"'inputs' has {array.shape[3]} channels; the model takes {channels} "
                              f"({expected})")
    if len(array) > max_images:
        raise BadRequest(413, f"the request has {len(array)} images; the limit is {max_images} "
                              f"per request (split the batch)")
    if array.shape[1] * array.shape[2] > max_pixels:
        raise BadRequest(413, f"the images have {array.shape[2]} x {array.shape[1]} pixels; the "
                              f"limit is {max_pixels:,}")
    outside = np.argwhere((array < 0) | (array > 255))
    if outside.size:
        index = tuple(int(i) for i in outside[0])
        raise BadRequest(400, f"inputs{list(index)} is {array[index]}; pixel values are 0-255")
    return list(array.astype(np.uint8))


def _decode(body: bytes, keys: Sequence[str] = ACCEPTED_KEYS,
            example: str = '{"inputs": [[...], ...]}') -> dict[str, Any]:
    if not body.strip():
        raise BadRequest(400, f"the body is empty: send a JSON object such as {example}")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(400, f"the body is not valid JSON: {error}") from error
    except RecursionError as error:  # a few thousand nested brackets exhaust the decoder's stack
        raise BadRequest(400, "the body is not valid JSON: nested too deeply") from error
    if not isinstance(payload, dict):
        raise BadRequest(400, f"the body must be a JSON object with one of the keys {_accepted(keys)}, "
                              f"e.g. {example}; got {_kind(payload)}")
    return payload


def _rows(payload: dict[str, Any], feature_names: tuple[str, ...]
          ) -> tuple[list[Any], tuple[str, ...], str]:
    """(rows as sent, the column name of each position in a row, the rows' JSON path)."""
    keys = [key for key in ACCEPTED_KEYS if key in payload]
    if len(keys) != 1:
        found = f"it has {_names(keys or list(payload)) or 'no keys'}"
        raise BadRequest(400, f"the body must have exactly one of the keys {_accepted(ACCEPTED_KEYS)}; "
                              f"{found}")
    key = keys[0]
    value = payload[key]
    if key == "inputs":
        if isinstance(value, dict) and len(value) > 1:  # one tensor per column: {"a": [...], ...}
            return _columns_rows(value, feature_names), feature_names, "inputs"
        if isinstance(value, dict) and len(value) == 1:  # a named tensor: {"features": [[...]]}
            value = next(iter(value.values()))
        if not isinstance(value, list):
            raise BadRequest(400, f"'inputs' must be a list of rows (lists of numbers), or one named "
                                  f"tensor of them; got {_kind(value)}")
        flat = bool(value) and not isinstance(value[0], list | dict)  # one row, sent without its batch
        return ([value] if flat else value), feature_names, "inputs"
    if key == "dataframe_split":
        return _split_rows(value, feature_names)
    return _records_rows(value, feature_names), feature_names, "dataframe_records"


def _columns_rows(tensors: dict[str, Any], feature_names: tuple[str, ...]) -> list[list[Any]]:
    """{"column": [values...], ...} (one tensor per column, as MLflow sends a model with one input
    per column) as rows."""
    missing = [name for name in feature_names if name not in tensors]
    unknown = [name for name in tensors if name not in set(feature_names)]
    if missing or unknown:
        problems = [f"{label} {_names(names)}" for label, names in
                    (("missing", missing), ("unknown", unknown)) if names]
        raise BadRequest(400, f"'inputs' as one list per column must name the model's features: "
                              f"{'; '.join(problems)} (expected {_names(feature_names)})")
    columns = [tensors[name] for name in feature_names]
    if not all(isinstance(column, list) for column in columns) or len({len(c) for c in columns}) != 1:
        raise BadRequest(400, "'inputs' as one list per column needs a list of the same length for "
                              "every column")
    return [list(row) for row in zip(*columns, strict=True)]


def _split_rows(split: Any, feature_names: tuple[str, ...]) -> tuple[list[Any], tuple[str, ...], str]:
    if not isinstance(split, dict) or "data" not in split:
        raise BadRequest(400, "'dataframe_split' must be an object with 'data' (a list of rows) and "
                              "optionally 'columns'")
    data, columns = split["data"], split.get("columns")
    if not isinstance(data, list):
        raise BadRequest(400, f"'dataframe_split.data' must be a list of rows; got {_kind(data)}")
    if columns is None:
        return data, feature_names, "dataframe_split.data"
    if not isinstance(columns, list) or not all(isinstance(name, str) for name in columns):
        raise BadRequest(400, "'dataframe_split.columns' must be a list of column names (strings)")
    sent, known = set(columns), set(feature_names)  # sets: a body may name thousands of columns
    missing = [name for name in feature_names if name not in sent]
    unknown = [name for name in columns if name not in known]
    repeated = sorted(name for name, count in Counter(columns).items() if count > 1)
    if missing or unknown or repeated:
        problems = [f"{label} {_names(names)}" for label, names in
                    (("missing", missing), ("unknown", unknown), ("repeated", repeated)) if names]
        raise BadRequest(400, f"'dataframe_split.columns' must be the model's features in any order: "
                              f"{'; '.join(problems)} (expected {_names(feature_names)})")
    return data, tuple(columns), "dataframe_split.data"


def _records_rows(records: Any, feature_names: tuple[str, ...]) -> list[list[Any]]:
    """Each record's values in the model's feature order."""
    if not isinstance(records, list):
        raise BadRequest(400, f"'dataframe_records' must be a list of objects; got {_kind(records)}")
    rows = []
    for index, record in enumerate(records):
        where = _row(index, "dataframe_records")
        if not isinstance(record, dict):
            raise BadRequest(400, f"{where} must be an object keyed by feature name; got {_kind(record)}")
        try:
            rows.append([record[name] for name in feature_names])
        except KeyError as error:
            raise BadRequest(400, f"{where} lacks column {error.args[0]!r} "
                                  f"(expected {_names(feature_names)})") from error
        if len(record) != len(feature_names):
            known = set(feature_names)
            unknown = [name for name in record if name not in known]
            raise BadRequest(400, f"{where} has unknown column(s) {_names(unknown)} "
                                  f"(expected {_names(feature_names)})")
    return rows


def _fast_array(rows: list[Any], width: int) -> np.ndarray | None:
    """float32 [n, width] when every row is a list of `width` finite numbers, else None. Booleans
    must have been ruled out: numpy reads them as 0 and 1."""
    try:
        # no dtype: strings or None then give a non-numeric array instead of being parsed
        array = np.asarray(rows)
    except (ValueError, TypeError, OverflowError):  # ragged rows, huge integers
        return None
    if array.dtype.kind not in "iuf" or array.ndim != 2 or array.shape[1] != width:
        return None
    with np.errstate(over="ignore"):  # out of float32 range becomes inf, refused just below
        array = array.astype(np.float32)
    return array if np.isfinite(array).all() else None


def _array_row_by_row(rows: list[Any], columns: tuple[str, ...], where: str,
                      text: frozenset[str] = frozenset(), nullable: bool = False) -> np.ndarray:
    """The slow path: check every row's shape and every value's type in Python, then convert with
    numpy; raise on the first bad row or value, naming it. With `text` columns the rows come back
    as objects: their strings (None for null) beside the numbers."""
    width = len(columns)
    is_text = [name in text for name in columns]
    for index, row in enumerate(rows):
        if not isinstance(row, list):
            kind = "values" if text else "numbers"
            raise BadRequest(400, f"{_row(index, where)} must be a list of {width} {kind}; got {_kind(row)}")
        if len(row) != width:
            raise BadRequest(400, f"{_row(index, where)} has {len(row)} values; the model expects {width} "
                                  f"({_names(columns)})")
        for position, value in enumerate(row):
            problem = _value_problem(value, is_text[position], nullable)
            if problem:
                raise BadRequest(400, f"{_cell(index, where, position, columns)}: {_show(value)} {problem}")
    if text:
        return np.array([[_as_text(value) if is_text[position] else _as_number(value)
                          for position, value in enumerate(row)] for row in rows], dtype=object)
    with np.errstate(over="ignore"):  # out of float32 range becomes inf, refused below
        try:
            array = np.array([[_as_number(value) for value in row] for row in rows], dtype=np.float64)
        except OverflowError:  # an integer beyond float64: make it inf, to be named below
            array = np.array([[value if value is None or abs(value) < _FLOAT64_MAX else math.inf if value > 0
                               else -math.inf for value in row] for row in rows], dtype=np.float64)
        array = array.astype(np.float32)
    bad = np.argwhere(~np.isfinite(array) & ~_nulls(rows))
    if bad.size:
        index, position = (int(i) for i in bad[0])
        value = rows[index][position]
        if isinstance(value, float) and not math.isfinite(value):
            reason = "not a finite number (NaN and infinities are refused)"
        else:
            reason = "out of float32 range"
        raise BadRequest(400, f"{_cell(index, where, position, columns)}: {_show(value)} is {reason}")
    return array


def _value_problem(value: Any, text: bool, nullable: bool) -> str | None:
    """Why a cell's value cannot be sent to its column, or None."""
    if value is None:
        return None if text or nullable else "is not a number (this model takes no missing values)"
    if type(value) is bool:  # a bool's type is bool, not int
        return "is not a number or text" if text else "is not a number"
    if text:
        return None if type(value) in (str, int, float) else "is not text"
    return None if type(value) in (float, int) else "is not a number"


def _as_text(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else str(value)


def _as_number(value: Any) -> float:
    return math.nan if value is None else value


def _nulls(rows: list[list[Any]]) -> np.ndarray:
    return np.array([[value is None for value in row] for row in rows], dtype=bool)


def _row(index: int, where: str) -> str:
    return f"row {index} ({where}[{index}])"


def _cell(index: int, where: str, position: int, columns: tuple[str, ...]) -> str:
    return f"{_row(index, where)}, column {position} ({columns[position]!r})"


def _accepted(keys: Sequence[str]) -> str:
    return ", ".join(repr(key) for key in keys)


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:_SHOWN_NAMES])
    return shown + (f" and {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else "")


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."

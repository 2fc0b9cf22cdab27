"""Request bodies: the three MLflow formats, and a 4xx naming the row, column or count for each
kind of mistake."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.payload import BadRequest, parse_body
from tests.serving.conftest import FEATURES, ROWS

ROW = [0.5, -1.0, 2.0, 0.25]


def parse(payload, **limits) -> np.ndarray:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_body(body, FEATURES, **limits)


def refused(payload, **limits) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        parse(payload, **limits)
    return caught.value


class TestAccepted:
    def test_inputs(self):
        rows = parse({"inputs": ROWS.tolist()})

        assert rows.dtype == np.float32 and rows.shape == (3, 4)
        np.testing.assert_array_equal(rows, ROWS)

    def test_inputs__one_flat_row(self):
        np.testing.assert_array_equal(parse({"inputs": ROW}), [ROW])

    def test_inputs__as_the_models_named_tensor(self):
        np.testing.assert_array_equal(parse({"inputs": {"features": ROWS.tolist()}}), ROWS)

    def test_integers_and_large_values(self):
        rows = parse({"inputs": [[1, 2, 10**30, -3.4e38]]})

        np.testing.assert_allclose(rows, [[1, 2, 1e30, -3.4e38]], rtol=1e-6)

    def test_dataframe_split__columns_reordered_to_the_model(self):
        columns = ["weight", "height", "depth", "width"]
        data = [[row[FEATURES.index(name)] for name in columns] for row in ROWS.tolist()]

        rows = parse({"dataframe_split": {"columns": columns, "data": data, "index": [0, 1, 2]}})

        np.testing.assert_array_equal(rows, ROWS)

    def test_dataframe_split__without_columns(self):
        np.testing.assert_array_equal(parse({"dataframe_split": {"data": ROWS.tolist()}}), ROWS)

    def test_dataframe_records(self):
        records = [dict(reversed(list(zip(FEATURES, row, strict=True)))) for row in ROWS.tolist()]

        np.testing.assert_array_equal(parse({"dataframe_records": records}), ROWS)

    def test_a_column_named_true_is_not_a_boolean(self):
        # given a body containing the text `true` (slow path) but no boolean value
        rows = parse_body(json.dumps({"dataframe_split": {"columns": ["true", "b", "c", "d"], "data": [ROW]}})
                          .encode(), ("true", "b", "c", "d"))

        np.testing.assert_array_equal(rows, [ROW])

    def test_extra_keys_such_as_params_are_ignored(self):
        np.testing.assert_array_equal(parse({"inputs": [ROW], "params": {"k": 1}}), [ROW])


# (payload, status, fragments the message must contain)
REFUSED = {
    "not json": (b"{'inputs': [1, 2]", 400, ["not valid JSON"]),
    "not utf-8": (b'{"inputs": [[\xff]]}', 400, ["not valid JSON"]),
    "empty body": (b"  ", 400, ["empty", "inputs"]),
    "nested too deeply": (b"[" * 100_000, 400, ["not valid JSON", "deeply"]),
    "a list": ([ROW], 400, ["JSON object", "'inputs'", "'dataframe_split'", "'dataframe_records'", "a list"]),
    "unknown key": ({"instances": [ROW]}, 400, ["'inputs', 'dataframe_split', 'dataframe_records'",
                                                "'instances'"]),
    "two keys": ({"inputs": [ROW], "dataframe_records": []}, 400,
                 ["exactly one", "it has 'inputs', 'dataframe_records'"]),
    "inputs not a list": ({"inputs": 3}, 400, ["'inputs' must be a list", "a number"]),
    "columns not the features": ({"inputs": {"a": ROW, "b": ROW}}, 400,
                                 ["'inputs' as one list per column", "unknown 'a', 'b'"]),
    "null in a model without gaps": ({"inputs": [[0.5, None, 2.0, 0.25]]}, 400,
                                     ["column 1 ('width')", "takes no missing values"]),
    "empty batch": ({"inputs": []}, 400, ["inputs is empty"]),
    "empty records": ({"dataframe_records": []}, 400, ["empty"]),
    "short row": ({"inputs": [ROW, ROW[:3]]}, 400,
                  ["row 1", "inputs[1]", "3 values", "expects 4", "'height'"]),
    "long row": ({"inputs": [[*ROW, 9.0]]}, 400, ["row 0", "5 values", "expects 4"]),
    "row not a list": ({"inputs": [ROW, {"height": 1}]}, 400, ["row 1", "must be a list of 4 numbers"]),
    "string": ({"inputs": [ROW, [1, "x", 3, 4]]}, 400,
               ["row 1", "column 1 ('width')", '"x" is not a number']),
    "string nan": ({"inputs": [[1, 2, "nan", 4]]}, 400,
                   ["row 0", "column 2 ('depth')", '"nan" is not a number']),
    "numeric string": ({"inputs": [["1.5", 2, 3, 4]]}, 400, ["column 0 ('height')", '"1.5" is not a number']),
    "boolean": ({"inputs": [[1, 2, 3, True]]}, 400, ["row 0", "column 3 ('weight')", "true is not a number"]),
    "all booleans": ({"inputs": [[False] * 4]}, 400, ["column 0", "false is not a number"]),
    "null": ({"inputs": [[1, None, 3, 4]]}, 400, ["column 1", "null is not a number"]),
    "nested value": ({"inputs": [[1, [2], 3, 4]]}, 400, ["column 1", "[2] is not a number"]),
    "NaN literal": (b'{"inputs": [[1, 2, NaN, 4]]}', 400, ["row 0", "column 2 ('depth')", "not a finite"]),
    "Infinity literal": (b'{"inputs": [[1, 2, 3, 4], [1, -Infinity, 3, 4]]}', 400,
                         ["row 1", "column 1 ('width')", "-Infinity", "not a finite"]),
    "1e400": (b'{"inputs": [[1e400, 2, 3, 4]]}', 400, ["column 0", "not a finite"]),
    "beyond float32": ({"inputs": [[1, 2, 3, 1e39]]}, 400, ["column 3", "out of float32 range"]),
    "huge integer": ({"inputs": [[1, 2, 3, 10**400]]}, 400, ["column 3", "out of float32 range"]),
    "split without data": ({"dataframe_split": {"columns": list(FEATURES)}}, 400, ["'data'"]),
    "split missing column": ({"dataframe_split": {"columns": list(FEATURES[:3]), "data": [ROW[:3]]}}, 400,
                             ["missing 'weight'"]),
    "split unknown column": ({"dataframe_split": {"columns": [*FEATURES[:3], "mass"], "data": [ROW]}},
                             400, ["missing 'weight'", "unknown 'mass'"]),
    "split repeated column": ({"dataframe_split": {"columns": [*FEATURES, "depth"], "data": [ROW]}}, 400,
                              ["repeated 'depth'"]),
    "split bad value": ({"dataframe_split": {"columns": ["weight", "height", "width", "depth"],
                                             "data": [ROW, [1, 2, "?", 4]]}},
                        400, ["row 1", "dataframe_split.data[1]", "column 2 ('width')"]),
    "record missing column": ({"dataframe_records": [dict(zip(FEATURES[:3], ROW, strict=False))]}, 400,
                              ["row 0", "lacks column 'weight'"]),
    "record unknown column": ({"dataframe_records": [{**dict(zip(FEATURES, ROW, strict=True)), "mass": 1}]},
                              400, ["unknown column(s) 'mass'"]),
    "record not an object": ({"dataframe_records": [ROW]}, 400, ["row 0", "an object keyed by feature name"]),
    "record bad value": ({"dataframe_records": [{**dict(zip(FEATURES, ROW, strict=True)), "depth": "deep"}]},
                         400, ["row 0", "column 2 ('depth')", '"deep" is not a number']),
}


@pytest.mark.parametrize("payload, status, fragments", REFUSED.values(), ids=REFUSED.keys())
def test_refused(payload, status: int, fragments: list[str]):
    error = refused(payload)

    assert error.status == status
    for fragment in fragments:
        assert fragment in error.message, f"the message should say {fragment!r}: {error.message}"


def test_too_many_rows__413_with_both_counts():
    error = refused({"inputs": [ROW] * 11}, max_rows=10)

    assert error.status == 413
    assert "11 rows" in error.message and "limit is 10" in error.message


def test_body_too_large__413_before_parsing():
    error = refused(b"x" * 101, max_bytes=100)  # not even JSON: the size is checked first

    assert error.status == 413 and "101 bytes" in error.message and "100" in error.message


def test_long_names_and_values_are_shortened_in_messages():
    names = tuple(f"pixel_{index}" for index in range(300))
    body = json.dumps({"inputs": [[0.0] * 299 + ["x" * 500]]}).encode()

    with pytest.raises(BadRequest) as caught:
        parse_body(body, names)

    assert "column 299 ('pixel_299')" in caught.value.message
    assert len(caught.value.message) < 200, "a bad value should be quoted briefly"


class TestTextAndMissing:
    """A model that reads text columns and fills missing values (a user table's)."""

    def test_strings_numbers_and_nulls_come_back_as_objects_in_feature_order(self):
        body = json.dumps({"dataframe_records": [
            {"depth": "deep", "height": 1.5, "weight": None, "width": 2},
            {"height": None, "width": 3, "depth": None, "weight": 7}]}).encode()
        rows = parse_body(body, FEATURES, text={"depth"}, nullable=True)
        assert rows.dtype == object
        assert rows.tolist()[0][:3] == [1.5, 2, "deep"] and np.isnan(rows[0, 3])
        assert np.isnan(rows[1, 0]) and rows[1, 2] is None and rows[1, 3] == 7

    def test_a_number_sent_to_a_text_column_is_read_as_its_text(self):
        rows = parse_body(json.dumps({"inputs": [[1.0, 2.0, 3, 4.0]]}).encode(), FEATURES,
                          text={"depth"})
        assert rows[0, 2] == "3"

    def test_one_list_per_column_as_mlflow_sends_it(self):
        body = json.dumps({"inputs": {name: [value, value] for name, value in
                                      zip(FEATURES, ROW, strict=True)}}).encode()
        np.testing.assert_array_equal(parse_body(body, FEATURES), [ROW, ROW])

    def test_nulls_in_number_columns_become_nan_when_the_model_fills_them(self):
        rows = parse_body(json.dumps({"inputs": [[None, 1.0, 2.0, 3.0]]}).encode(), FEATURES,
                          nullable=True)
        assert rows.dtype == np.float32 and np.isnan(rows[0, 0])

    @pytest.mark.parametrize(("value", "says"), [
        (True, "is not a number or text"), ({"a": 1}, "is not text")])
    def test_a_text_column_refuses_what_is_not_text(self, value, says):
        body = json.dumps({"inputs": [[1.0, 2.0, value, 4.0]]}).encode()
        with pytest.raises(BadRequest, match=says):
            parse_body(body, FEATURES, text={"depth"})

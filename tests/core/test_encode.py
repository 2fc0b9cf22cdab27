"""shrinkflow.encode: text and missing values encoded on the training split, the same in numpy and
in the ONNX graph."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from onnx import TensorProto, helper

from shrinkflow.encode import MISSING_TEXT, UNKNOWN, TableEncoder

TRAIN = pd.DataFrame({
    "size": [1.0, 2.0, np.nan, 4.0, 10.0],
    "colour": ["red", "green", "red", None, "blue"],
    "grade": ["low", "high", "mid", "low", np.nan],
})
SERVED = pd.DataFrame({  # unseen categories, nulls, and text that reads as missing
    "size": [np.nan, 3.0, 7.5, 1.0],
    "colour": ["purple", None, "NA", "green"],
    "grade": ["mid", "extreme", None, "high"],
})


def _fitted(**options) -> TableEncoder:
    return TableEncoder.fit(TRAIN, ["size", "colour", "grade"], **options)


def _graph_output(encoder: TableEncoder, frame: pd.DataFrame) -> np.ndarray:
    """Run `encoder.front` alone in ONNX Runtime on `frame`'s columns, as a caller sends them."""
    nodes, constants = encoder.front("features", "encoded", "enc_")
    if encoder.layout == "columns":
        inputs = [helper.make_tensor_value_info(
            column.name, TensorProto.STRING if column.kind == "text" else TensorProto.FLOAT, ["N"])
            for column in encoder.columns]
        feed = {name: values for name, values in encoder.feed(frame).items()}
    else:
        inputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT,
                                                ["N", len(encoder.columns)])]
        feed = {"features": frame.to_numpy(np.float32)}
    graph = helper.make_graph(nodes, "front", inputs, [helper.make_tensor_value_info(
        "encoded", TensorProto.FLOAT, ["N", encoder.width])], initializer=constants)
    model = helper.make_model(graph, ir_version=9, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)])
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def test_missing_text_is_what_pandas_reads_as_missing():
    # given a CSV column holding each spelling, and one real category
    text = "x\n" + "\n".join(f'"{token}"' for token in MISSING_TEXT if token) + "\nred\n"
    read = pd.read_csv(io.StringIO(text))["x"]
    # then pandas reads every spelling as missing and nothing else
    assert read.isna().sum() == len(MISSING_TEXT) - 1 and read.iloc[-1] == "red"
    assert "" in MISSING_TEXT  # an empty cell: what a served row's null becomes


def test_fit_learns_kinds_fills_and_categories_on_the_rows_given():
    encoder = _fitted()
    size, colour, grade = encoder.columns
    assert (size.kind, size.fill) == ("number", 3.0)  # median of 1, 2, 4, 10
    assert (colour.kind, colour.categories, colour.fill) == ("text", ("blue", "green", "red"), "red")
    assert grade.fill == "low" and encoder.layout == "columns" and encoder.nullable
    assert encoder.outputs == ("size", "colour=blue", "colour=green", "colour=red",
                               f"colour={UNKNOWN}", "grade=high", "grade=low", "grade=mid",
                               f"grade={UNKNOWN}")


def test_transform_fills_missing_and_sends_unseen_categories_to_their_own_slot():
    encoded = _fitted().transform(SERVED)
    expected = np.array([
        # size, colour blue/green/red/unknown, grade high/low/mid/unknown
        [3.0, 0, 0, 0, 1, 0, 0, 1, 0],  # size missing -> median; purple unseen; mid
        [3.0, 0, 0, 1, 0, 0, 0, 0, 1],  # colour missing -> red; "extreme" unseen
        [7.5, 0, 0, 1, 0, 0, 1, 0, 0],  # "NA" is missing -> red; grade missing -> low
        [1.0, 0, 1, 0, 0, 1, 0, 0, 0],
    ], np.float32)
    np.testing.assert_array_equal(encoded, expected)


def test_ordinal_codes_follow_the_users_order_and_indicators_come_last():
    encoder = _fitted(ordinal={"grade": ["low", "mid", "high"]}, indicator=True)
    assert encoder.outputs[-4:] == ("grade", "size_missing", "colour_missing", "grade_missing")
    encoded = encoder.transform(SERVED)
    np.testing.assert_array_equal(encoded[:, 5], [1, -1, 0, 2])  # mid, unseen, missing->low, high
    np.testing.assert_array_equal(encoded[:, 6:], [[1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, 0]])


@pytest.mark.parametrize("options", [{}, {"ordinal": {"grade": ["low", "mid", "high"]},
                                          "indicator": True}], ids=["onehot", "ordinal+indicator"])
def test_the_onnx_front_computes_what_transform_computes(options):
    encoder = _fitted(**options)
    frame = pd.concat([TRAIN, SERVED], ignore_index=True)
    np.testing.assert_array_equal(_graph_output(encoder, frame), encoder.transform(frame))


def test_a_numbers_only_table_reads_one_matrix_and_fills_it_in_the_graph():
    # given numbers with gaps in training, and an indicator
    train = TRAIN[["size"]].assign(weight=[5.0, 6.0, 7.0, np.nan, 9.0])
    encoder = TableEncoder.fit(train, ["size", "weight"], indicator=True)
    assert encoder.layout == "matrix" and encoder.nullable and not encoder.is_identity
    served = pd.DataFrame({"size": [np.nan, 2.0], "weight": [1.0, np.nan]})
    np.testing.assert_array_equal(_graph_output(encoder, served), encoder.transform(served))
    np.testing.assert_array_equal(encoder.transform(served), [[3, 1, 1, 0], [2, 6.5, 0, 1]])
    # and numbers without gaps need no encoding at all
    assert TableEncoder.fit(train.dropna(), ["size", "weight"]).is_identity


def test_the_encoder_round_trips_through_json():
    import json

    encoder = _fitted(ordinal={"grade": ["low", "mid", "high"]}, indicator=True)
    assert TableEncoder.from_dict(json.loads(json.dumps(encoder.to_dict()))) == encoder

"""One loaded model version, ready to predict, and the protocol of the place versions come from.

A served model is an ONNX file with one float32 input of shape [N, F] (raw feature rows), or, for a
table with text columns, one input of shape [N] per column (strings or float32), and two
outputs: `label` (string [N], the predicted class names) and `probabilities` (float32 [N, K]). Its
metadata_props say what the columns are: `feature_names` (JSON list of F names) and `classes` (JSON
list of K names, in the order of the probability columns), and `nullable` (JSON true when the graph
fills missing values itself). Without them the features are called
f0..f{F-1} and the classes 0..K-1, with F and K read from the graph's shapes.

An image model's one input is `images`, uint8 [N, height, width, C]; its metadata's `image_shape`
([height, width, C]) is the size it was trained at, and the size the server resizes decoded
images to before they are batched together.

The server never opens a registry itself: a `ModelSource` (an MLflow alias, a folder, a dict in a
test) says which version is current and loads it. That keeps this package free of mlflow, so the
serving image stays small and the tests need no tracking server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

# the outputs and metadata keys `shrinkflow.deployable` writes
from shrinkflow.deployable import CLASSES_KEY, FEATURE_NAMES_KEY, IMAGE_SHAPE_KEY, NULLABLE_KEY
from shrinkflow.deployable import LABEL as LABEL_OUTPUT
from shrinkflow.deployable import PROBABILITIES as PROBABILITIES_OUTPUT


class ModelFileError(ValueError):
    """An ONNX file is not a servable model: wrong inputs or outputs, or unreadable metadata."""


@dataclass(frozen=True)
class ServedModel:
    """A model version with its ONNX Runtime session. Immutable: a new version is a new object,
    so a request that picked one up keeps it even while the server swaps to the next."""

    version: str
    info: dict[str, Any] = field(compare=False)  # what the source says: name, alias, metrics, lineage
    session: ort.InferenceSession = field(compare=False, repr=False)
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    text_columns: frozenset[str] = frozenset()  # features the graph reads as strings
    nullable: bool = False  # whether a missing value (null) is filled in the graph
    image_shape: tuple[int, int, int] | None = None  # an image model's (height, width, C)

    @classmethod
    def from_onnx(cls, model: bytes | str | Path, version: str, info: dict[str, Any] | None = None,
                  threads: int = 1) -> ServedModel:
        """Open `model` (the file's bytes or its path) on the CPU with `threads` intra-op threads.

        Raises:
            ModelFileError: the graph does not have the input and outputs described above, or its
                metadata disagrees with its shapes.
        """
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # the graph is a chain; parallel branches would only idle
        source = model if isinstance(model, bytes) else str(model)
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        image_shape = _image_shape(session)
        if image_shape is not None:
            return cls(version=str(version), info=dict(info or {}), session=session,
                       feature_names=(), classes=_classes(session), image_shape=image_shape)
        feature_names, classes = _columns(session)
        text = frozenset(item.name for item in session.get_inputs() if item.type == "tensor(string)")
        nullable = json.loads(session.get_modelmeta().custom_metadata_map.get(NULLABLE_KEY, "false"))
        return cls(version=str(version), info=dict(info or {}), session=session,
                   feature_names=feature_names, classes=classes, text_columns=text,
                   nullable=bool(nullable))

    @property
    def name(self) -> str | None:
        return self.info.get("name")

    @cached_property
    def input_names(self) -> tuple[str, ...]:
        return tuple(item.name for item in self.session.get_inputs())

    @property
    def layout(self) -> tuple[str, ...]:
        """What a request's rows must have been parsed for: the feature names, in order, or an
        image model's image shape."""
        if self.image_shape is None:
            return self.feature_names
        return ("image", *(str(size) for size in self.image_shape))

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The shape of one row of `predict`'s input: (F,), or an image's (height, width, C)."""
        return self.image_shape or (len(self.feature_names),)

    @property
    def per_column(self) -> bool:
        """Whether the graph takes one input per column (a table with text) rather than rows."""
        return len(self.input_names) > 1 or self.input_names == self.feature_names

    def predict(self, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Labels (one per row) and float32 probabilities [n, K] for rows [n, F] in the order of
        `feature_names`: float32, or objects (numbers, strings, None for missing) for a graph that
        reads text; or, for an image model, uint8 images [n, height, width, C]."""
        labels, probabilities = self.session.run([LABEL_OUTPUT, PROBABILITIES_OUTPUT],
                                                 self.feed(rows))
        return [str(label) for label in labels], np.asarray(probabilities, dtype=np.float32)

    def feed(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's inputs for `rows` (see `predict`): missing text becomes "" and a missing
        number NaN, which the graph fills."""
        if self.image_shape is not None:
            return {self.input_names[0]: np.ascontiguousarray(rows, dtype=np.uint8)}
        if not self.per_column:
            return {self.input_names[0]: np.ascontiguousarray(rows, dtype=np.float32)}
        return {name: _column(rows[:, index], name in self.text_columns)
                for index, name in enumerate(self.feature_names)}


class ModelSource(Protocol):
    """Where model versions come from (a registry alias, a folder...).

    `current_version` is polled every few seconds, so it must be cheap: it says which version the
    alias points to now, or None when nothing is registered. `load` may be slow (a download); the
    server calls both in a worker thread. A source usually sets the sessions' intra-op threads
    itself; one whose `load` also takes a `threads` keyword gets the server's `threads` there.
    """

    def current_version(self) -> str | None: ...

    def load(self, version: str) -> ServedModel: ...


def _column(values: np.ndarray, text: bool) -> np.ndarray:
    """One column of rows as its graph input: strings ("" for None), or float32 (NaN for None)."""
    if text:
        return np.array(["" if value is None else str(value) for value in values], dtype=object)
    if values.dtype == object:
        values = np.array([np.nan if value is None else value for value in values], np.float64)
    return values.astype(np.float32)


def _columns(session: ort.InferenceSession) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Feature and class names from the metadata, checked against the graph's inputs and shapes."""
    inputs = session.get_inputs()
    per_column = bool(inputs) and all(len(item.shape) == 1 for item in inputs)
    if not per_column and (len(inputs) != 1 or len(inputs[0].shape) != 2):
        raise ModelFileError(f"a served model has one input of shape [N, F], or one of shape [N] "
                             f"per column, or uint8 images [N, height, width, C]; this one has "
                             f"{[(i.name, i.shape) for i in inputs]}")
    _outputs(session)
    metadata = session.get_modelmeta().custom_metadata_map
    width = len(inputs) if per_column else inputs[0].shape[1]
    features = _names(metadata, FEATURE_NAMES_KEY, width, "f")
    if per_column and features != tuple(item.name for item in inputs):
        raise ModelFileError(f"metadata_props {FEATURE_NAMES_KEY!r} {list(features)} must name the "
                             f"graph's inputs, in order: {[item.name for item in inputs]}")
    return features, _classes(session)


def _outputs(session: ort.InferenceSession) -> dict[str, Any]:
    """The graph's outputs by name, which must include the label and the probabilities."""
    outputs = {out.name: out for out in session.get_outputs()}
    missing = {LABEL_OUTPUT, PROBABILITIES_OUTPUT} - set(outputs)
    if missing:
        raise ModelFileError(f"a served model has outputs {LABEL_OUTPUT!r} and {PROBABILITIES_OUTPUT!r}; "
                             f"this one lacks {sorted(missing)} (it has {sorted(outputs)})")
    return outputs


def _classes(session: ort.InferenceSession) -> tuple[str, ...]:
    metadata = session.get_modelmeta().custom_metadata_map
    return _names(metadata, CLASSES_KEY, _outputs(session)[PROBABILITIES_OUTPUT].shape[-1], "")


def _image_shape(session: ort.InferenceSession) -> tuple[int, int, int] | None:
    """An image model's training (height, width, C), from its metadata; None for other models."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(uint8)":
        return None
    metadata = session.get_modelmeta().custom_metadata_map
    if len(inputs[0].shape) != 4 or IMAGE_SHAPE_KEY not in metadata:
        raise ModelFileError(f"an image model takes uint8 [N, height, width, C] and says its size in "
                             f"metadata_props {IMAGE_SHAPE_KEY!r}; this one has {inputs[0].shape} and "
                             f"{sorted(metadata)}")
    try:
        shape = json.loads(metadata[IMAGE_SHAPE_KEY])
    except json.JSONDecodeError as error:
        raise ModelFileError(f"metadata_props {IMAGE_SHAPE_KEY!r} is not JSON: {error}") from error
    if not (isinstance(shape, list) and len(shape) == 3 and shape[0] == shape[1]
            and all(type(size) is int and size > 0 for size in shape)):
        raise ModelFileError(f"metadata_props {IMAGE_SHAPE_KEY!r} must be [size, size, C] (images are "
                             f"resized to squares); got {shape}")
    return shape[0], shape[1], shape[2]


def _names(metadata: dict[str, str], key: str, size: int | str | None, prefix: str) -> tuple[str, ...]:
    """The JSON list under `key`, else `prefix`0..`prefix`{size-1}; `size` is a static dim or None."""
    known = size if isinstance(size, int) and size > 0 else None  # symbolic dims come as strings
    if key not in metadata:
        if known is None:
            raise ModelFileError(f"metadata_props has no {key!r} and the graph's shape does not say how "
                                 f"many there are: add {key!r} (a JSON list of names)")
        return tuple(f"{prefix}{index}" for index in range(known))
    try:
        names = json.loads(metadata[key])
    except json.JSONDecodeError as error:
        raise ModelFileError(f"metadata_props {key!r} is not JSON: {error}") from error
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise ModelFileError(f"metadata_props {key!r} must be a non-empty JSON list of strings")
    if len(set(names)) != len(names):
        raise ModelFileError(f"metadata_props {key!r} repeats a name: {names}")
    if known is not None and len(names) != known:
        raise ModelFileError(f"metadata_props {key!r} has {len(names)} names; the graph has {known}")
    return tuple(names)

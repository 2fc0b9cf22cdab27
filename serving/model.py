"""One loaded model version, ready to predict, and the protocol of the place versions come from.

A served model is an ONNX file with one float32 input of shape [N, F] (raw feature rows) and two
outputs: `label` (string [N], the predicted class names) and `probabilities` (float32 [N, K]). Its
metadata_props say what the columns are: `feature_names` (JSON list of F names) and `classes` (JSON
list of K names, in the order of the probability columns). Without them the features are called
f0..f{F-1} and the classes 0..K-1, with F and K read from the graph's shapes.

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
from shrinkflow.deployable import CLASSES_KEY, FEATURE_NAMES_KEY
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
        feature_names, classes = _columns(session)
        return cls(version=str(version), info=dict(info or {}), session=session,
                   feature_names=feature_names, classes=classes)

    @property
    def name(self) -> str | None:
        return self.info.get("name")

    @cached_property
    def input_name(self) -> str:
        return self.session.get_inputs()[0].name

    def predict(self, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Labels (one per row) and float32 probabilities [n, K] for float32 rows [n, F]."""
        feed = {self.input_name: np.ascontiguousarray(rows, dtype=np.float32)}
        labels, probabilities = self.session.run([LABEL_OUTPUT, PROBABILITIES_OUTPUT], feed)
        return [str(label) for label in labels], np.asarray(probabilities, dtype=np.float32)


class ModelSource(Protocol):
    """Where model versions come from (a registry alias, a folder...).

    `current_version` is polled every few seconds, so it must be cheap: it says which version the
    alias points to now, or None when nothing is registered. `load` may be slow (a download); the
    server calls both in a worker thread. A source usually sets the sessions' intra-op threads
    itself; one whose `load` also takes a `threads` keyword gets the server's `threads` there.
    """

    def current_version(self) -> str | None: ...

    def load(self, version: str) -> ServedModel: ...


def _columns(session: ort.InferenceSession) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Feature and class names from the metadata, checked against the graph's shapes."""
    inputs, outputs = session.get_inputs(), {out.name: out for out in session.get_outputs()}
    if len(inputs) != 1 or len(inputs[0].shape) != 2:
        raise ModelFileError(f"a served model has one input of shape [N, F]; this one has "
                             f"{[(i.name, i.shape) for i in inputs]}")
    missing = {LABEL_OUTPUT, PROBABILITIES_OUTPUT} - set(outputs)
    if missing:
        raise ModelFileError(f"a served model has outputs {LABEL_OUTPUT!r} and {PROBABILITIES_OUTPUT!r}; "
                             f"this one lacks {sorted(missing)} (it has {sorted(outputs)})")
    metadata = session.get_modelmeta().custom_metadata_map
    features = _names(metadata, FEATURE_NAMES_KEY, inputs[0].shape[1], "f")
    classes = _names(metadata, CLASSES_KEY, outputs[PROBABILITIES_OUTPUT].shape[-1], "")
    return features, classes


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

"""No loading path unpickles a file: a planted malicious pickle is refused everywhere."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.services.candidates import evaluate_onnx, load_torch
from tasks.services.catalog import Catalog
from tasks.services.io import UnsafeFileError, load_processed


class Payload:
    """Unpickling it creates a marker file: proof that the pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Payload(marker)))


@pytest.fixture
def planted(trained_project: Path, tmp_path: Path) -> tuple[Catalog, Path]:
    return Catalog.at(trained_project), tmp_path / "executed"


def test_a_pickled_state_dict_is_refused(planted):
    catalog, marker = planted
    # given: model.pt replaced by a raw pickle, then by a torch.save archive of the payload
    for write in (lambda path: _plant_pickle(path, marker),
                  lambda path: torch.save({"weights": Payload(marker)}, path)):
        write(catalog.baseline_dir / "model.pt")
        # when / then
        with pytest.raises(UnsafeFileError, match="model.pt holds pickled objects"):
            load_torch(catalog.baseline_dir, "baseline")
        assert not marker.exists(), "the payload must never run"


def test_processed_arrays_holding_pickled_objects_are_refused(planted):
    catalog, marker = planted
    # given: a split whose arrays are pickled objects
    np.savez(catalog.split_file("train"), x=np.array([Payload(marker)], dtype=object),
             y=np.zeros(1))
    with pytest.raises(UnsafeFileError, match="train.npz holds pickled objects"):
        load_processed(catalog)
    assert not marker.exists()


def test_a_pickle_in_place_of_an_onnx_file_is_not_loaded(planted):
    catalog, marker = planted
    shutil.copy2(catalog.baseline_dir / "model.onnx", catalog.root / "kept.onnx")
    _plant_pickle(catalog.baseline_dir / "model.onnx", marker)
    splits, _, _ = load_processed(catalog)
    # ONNX Runtime parses protobuf only, and this is not one
    with pytest.raises(Exception, match="(?i)protobuf|parse|load model"):  # noqa: B017
        evaluate_onnx(catalog.baseline_dir / "model.onnx", splits)
    assert not marker.exists()

"""Candidates: the compressed models each stage produces, saved, listed and measured one way.

A stage writes each candidate in its own folder (model.pt state_dict + architecture.json when it
is a torch model, and the ONNX file that gets served) and lists them in the folder's
`candidates.json` manifest: name, ONNX file, parent candidate, method. Stages report a
candidate's accuracy (validation and test) and size (`evaluate_onnx`) on the candidate's MLflow run,
tagged with the ONNX file's md5; the `compare` stage reads every manifest, times all candidates side
by side and logs those timings to the run that made each file (found by that tag), so a file's
speed is measured once, in one place. Manifests hold no run ids: the same inputs give the same
bytes, so a stage re-run with nothing changed leaves the stages after it cached.
"""

from __future__ import annotations

# only for the error type of refused files: nothing is unpickled here
import pickle  # nosec B403
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from shrinkflow import measure, models
from shrinkflow.data import Splits
from shrinkflow.export import export_onnx, onnx_predictor
from tasks.services import io, tracking
from tasks.services.catalog import Catalog

MANIFEST = "candidates.json"


@dataclass(frozen=True)
class Candidate:
    name: str  # e.g. "pruned-structured-50", "student-kd-int8_static"
    onnx: str  # the served file, relative to the project root
    parent: str  # what it was made from ("baseline", "student-kd", ...)
    method: str  # "structured", "unstructured", "kd", "int8_static", ...
    torch: str | None = None  # folder with model.pt + architecture.json, if it has one


def save_torch(model: torch.nn.Module, arch: models.Architecture, folder: Path,
               sparse: bool = False) -> None:
    """model.pt (state_dict, loadable with weights_only=True), architecture.json, model.onnx.

    sparse: zeroed weights are stored compactly in both files (values + bitmask in model.pt,
    sparse initializers in the ONNX file), so unstructured pruning really shrinks them.
    """
    from shrinkflow.sparse import sparse_state_dict, sparsify_onnx

    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    torch.save(sparse_state_dict(state) if sparse else state, folder / "model.pt")
    io.write_json(folder / "architecture.json", arch.to_dict())
    export_onnx(model, arch.input_shape, folder / "model.onnx")
    if sparse:
        sparsify_onnx(folder / "model.onnx", folder / "model.onnx")


def load_torch(folder: Path, produced_by: str) -> tuple[models.Architecture, torch.nn.Module]:
    from shrinkflow.sparse import dense_state_dict

    arch = models.Architecture.from_dict(io.read_json(folder / "architecture.json", produced_by))
    path = io.require(folder / "model.pt", produced_by)
    try:  # weights_only: a model.pt holding pickled code is refused, never run
        state = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        raise io.UnsafeFileError(f"{path} holds pickled objects beyond tensors: refused "
                                 f"({str(error).splitlines()[0]})") from None
    return arch, models.load_model(arch, dense_state_dict(state))


def write_manifest(folder: Path, candidates: list[Candidate]) -> None:
    io.write_json(folder / MANIFEST, [asdict(candidate) for candidate in candidates])


ONNX_TEACHER = "the teacher is an ONNX file (baseline.onnx) and this needs its torch graph"


def torch_teacher(catalog: Catalog) -> bool:
    """Does the baseline have a torch model (not only a user's ONNX file)?"""
    (baseline,) = read_manifest(catalog.baseline_dir, produced_by="baseline")
    return baseline.torch is not None


def load_teacher(catalog: Catalog) -> torch.nn.Module:
    """The teacher to learn from or score: its torch model, or its ONNX file answering through
    ONNX Runtime (`OnnxTeacher`, frozen)."""
    from shrinkflow.user_models import OnnxTeacher

    (baseline,) = read_manifest(catalog.baseline_dir, produced_by="baseline")
    if baseline.torch is not None:
        return load_torch(catalog.path(baseline.torch), produced_by="baseline")[1]
    return OnnxTeacher(catalog.path(baseline.onnx))


def read_manifest(folder: Path, produced_by: str) -> list[Candidate]:
    return [Candidate(**item) for item in io.read_json(folder / MANIFEST, produced_by)]


def read_manifests(catalog: Catalog, stages: tuple[str, ...]) -> list[Candidate]:
    """Candidates listed in the models/ folder of each of `stages` (names, as `tasks.services.dag`
    declares them) that has written its manifest."""
    found = []
    for stage in stages:
        folder = catalog.models_dir(stage)
        if (folder / MANIFEST).is_file():
            found += read_manifest(folder, produced_by=stage)
    return found


def evaluate_onnx(path: Path, splits: Splits) -> dict[str, float]:
    """Validation and test accuracy and size of one served file (no timing: see compare)."""
    predict = onnx_predictor(path)
    return {**measure.scores(predict, splits.val.x, splits.val.y, splits.test.x, splits.test.y),
            **measure.onnx_size(path)}


def report_candidate(path: Path, splits: Splits, **extra: float) -> dict[str, float]:
    """Evaluate a candidate's file and log the result (with `extra` metrics) on the active run,
    tagged as the run that made this file; returns what was logged. `make_seconds`: the wall
    seconds since its candidate run began (training, fine-tuning, calibration, export), unless
    `extra` gives them."""
    seconds = tracking.candidate_seconds()
    measured = {**evaluate_onnx(path, splits), "make_seconds": seconds, **extra}
    tracking.log_metrics(measured)
    tracking.tag_model_file(path)
    return measured


# a stage's best candidate in metrics/<stage>.json: the same names in every stage's file
BEST_FIGURES = ("val_accuracy", "accuracy", "size_ratio")


def headline(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """metrics/<stage>.json of a stage that makes candidates (`rows`, by name): how many, and
    `BEST_FIGURES` (those its row has) of the one most accurate on validation, the first listed
    among equals; chosen on validation as every choice is: the test split is only reported."""
    best = max(rows.values(), key=lambda row: row["val_accuracy"], default={})
    return {"candidates": len(rows), **{key: best[key] for key in BEST_FIGURES if key in best}}

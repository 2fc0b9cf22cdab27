"""The default configurations reach their accuracy targets (real training, ~1 min on 2 cores).

Targets: digits CNN >= 98.5 % (360 test rows), MNIST-1D CNN >= 97 %, breast cancer MLP >= 95 %.
"""

from __future__ import annotations

import pytest

from shrinkflow.config import load_params
from tasks.services.candidates import evaluate_onnx
from tasks.services.catalog import Catalog
from tasks.services.io import load_processed
from tasks.services.runner import run_stage
from tests.conftest import copy_project

TARGETS = {
    None: ("digits", 0.985),
    "configs/mnist1d.yaml": ("mnist1d", 0.97),
    "configs/breast_cancer.yaml": ("breast_cancer", 0.95),
}


@pytest.mark.slow
@pytest.mark.parametrize("overlay", list(TARGETS), ids=[name for name, _ in TARGETS.values()])
def test_default_config_reaches_its_accuracy_target(tmp_path, overlay):
    # given: the shipped configuration
    project = copy_project(tmp_path / "project")
    overlays = [project / overlay] if overlay else []
    # (params.yaml's own teacher: what the search must beat is checked by the search's tests)
    params = load_params(project / "params.yaml", overlays, ["search.enabled=false"])
    dataset, target = TARGETS[overlay]
    # when
    for stage in ("prepare", "search"):
        run_stage(stage, params, project)
    summary = run_stage("baseline", params, project)
    # then
    accuracy = summary["metrics"]["accuracy"]
    assert summary["dataset"] == dataset
    assert accuracy >= target, f"{dataset} baseline should reach {target:.1%}, got {accuracy:.2%}"
    splits, _, _ = load_processed(Catalog.at(project))
    onnx = evaluate_onnx(Catalog.at(project).baseline_dir / "model.onnx", splits)
    assert onnx["accuracy"] >= target, "the ONNX export should keep it"
    assert summary["metrics"]["params_count"] < 100_000, "the baseline should stay practical"

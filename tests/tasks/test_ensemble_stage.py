"""Stage `ensemble`: members picked on validation (one per lineage, within the size budget),
one ONNX candidate per method, measured by compare like any other."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shrinkflow import quantize
from shrinkflow.config import load_params
from shrinkflow.ensemble import EnsembleError
from shrinkflow.export import export_onnx
from shrinkflow.models import build_model
from tasks.services import io
from tasks.services.candidates import Candidate, load_torch, read_manifest, write_manifest
from tasks.services.catalog import Catalog
from tasks.stages.compare import run_compare
from tasks.stages.ensemble import run_ensemble
from tests.conftest import TINY, copy_trained


def _params(project, *overrides: str):
    return load_params(project / "params.yaml", overrides=[*TINY, *overrides])


@pytest.fixture(scope="module")
def with_students(trained_tiny, tmp_path_factory):
    """The trained project plus two small students (different seeds: different mistakes) and an
    int8 variant of the first, as the distill and quantize stages would list them."""
    project = copy_trained(trained_tiny, tmp_path_factory.mktemp("ensemble") / "project")
    catalog = Catalog.at(project)
    arch, _ = load_torch(catalog.baseline_dir, "baseline")
    small = arch.__class__(arch.family, arch.input_shape, arch.n_classes, (4, 8))
    distilled, quantized = catalog.models_dir("distill"), catalog.models_dir("quantize")
    distilled.mkdir(parents=True)
    quantized.mkdir(parents=True)
    listed = []
    for seed, name in ((1, "small-a"), (2, "small-b")):
        torch.manual_seed(seed)
        export_onnx(build_model(small).eval(), arch.input_shape, distilled / f"{name}.onnx")
        listed.append(Candidate(name, f"models/distilled/{name}.onnx", "baseline", "kd"))
    write_manifest(distilled, listed)
    quantize.to_int8_dynamic(distilled / "small-a.onnx", quantized / "small-a-int8_dynamic.onnx")
    write_manifest(quantized, [Candidate("small-a-int8_dynamic",
                                         "models/quantized/small-a-int8_dynamic.onnx", "small-a",
                                         "int8_dynamic")])
    return project


def test_one_candidate_per_method_from_members_of_different_lineages(with_students):
    project = with_students
    summary = run_ensemble(_params(project), project)
    report = io.read_candidates(Catalog.at(project), "ensemble")
    # the baseline is over the size budget; small-a and its int8 variant count as one lineage
    assert report["selection"] == "greedy" and "validation log-loss" in report["reason"]
    assert len(report["members"]) == 2 and "small-b" in report["members"], report["reason"]
    assert len({name.removesuffix("-int8_dynamic") for name in report["members"]}) == 2
    assert sum(report["weights"].values()) == pytest.approx(1.0)
    made = read_manifest(Catalog.at(project).models_dir("ensemble"), "ensemble")
    assert [c.name for c in made] == ["ensemble-average", "ensemble-weighted", "ensemble-vote"]
    assert all(c.parent == "+".join(report["members"]) for c in made)
    assert summary["members"] == report["members"]
    sizes = {c.name: (project / c.onnx).stat().st_size for c in made}
    members = sum((project / f"models/{'quantized' if 'int8' in m else 'distilled'}/{m}.onnx")
                  .stat().st_size for m in report["members"])
    # one file holding every member's weights, and little else
    assert all(0.9 * members < size < members + 4096 for size in sizes.values())
    assert report["candidates"].keys() == sizes.keys()
    assert io.read_metrics(Catalog.at(project), "ensemble") == {"candidates": 3, "member_count": 2}
    best = max(report["candidates"].values(), key=lambda row: row["val_accuracy"])
    assert json.loads(Catalog.at(project).metrics_file("ensemble").read_text()) == {
        "candidates": 3, "val_accuracy": best["val_accuracy"], "accuracy": best["accuracy"]}
    # compare measures them like any other candidate
    run_compare(_params(project), project)
    rows = io.read_candidates(Catalog.at(project), "compare")["candidates"]
    assert {"ensemble-average", "ensemble-weighted", "ensemble-vote"} <= set(rows)
    assert all(np.isfinite(rows[name]["latency_ms_p50_b1"]) for name in sizes)


def test_selection_top_k_picks_by_validation_accuracy_and_fits_the_weights(with_students, tmp_path):
    # given: the same candidates, and `selection: top_k` instead of the greedy default
    project = copy_trained(with_students, tmp_path / "project")
    run_ensemble(_params(project, "ensemble.selection=top_k", "ensemble.methods=[weighted]"), project)
    report = io.read_candidates(Catalog.at(project), "ensemble")
    # then the members are the most accurate on validation, one per lineage, within the budget
    assert report["selection"] == "top_k" and "top_k=3 by validation accuracy" in report["reason"]
    assert len(report["members"]) == 2 and "small-b" in report["members"], report["reason"]
    assert sum(report["weights"].values()) == pytest.approx(1.0)
    made = read_manifest(Catalog.at(project).models_dir("ensemble"), "ensemble")
    assert [c.name for c in made] == ["ensemble-weighted"]


def test_named_members_must_be_candidates(with_students):
    with pytest.raises(EnsembleError, match=r"\['nope'\] are not candidates; available"):
        run_ensemble(_params(with_students, "ensemble.members=[small-a, nope]"), with_students)


def test_disabled_or_impossible_ensembles_list_no_candidates(with_students, tmp_path):
    project = copy_trained(with_students, tmp_path / "project")
    run_ensemble(_params(project, "ensemble.enabled=false"), project)
    assert read_manifest(Catalog.at(project).models_dir("ensemble"), "ensemble") == []
    run_ensemble(_params(project, "ensemble.max_size_fraction=0.001"), project)
    report = io.read_candidates(Catalog.at(project), "ensemble")
    assert report["members"] == [] and "max_total_bytes" in report["reason"]

"""Stage `compare`: every candidate measured in one place, the deployable one chosen."""

from __future__ import annotations

import json
import shutil

import pytest

from tasks.catalog import Catalog
from tasks.compare import run_compare
from tasks.stages import run_stage


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    from shrinkflow.config import load_params
    from tests.conftest import TINY, copy_project

    project = copy_project(tmp_path_factory.mktemp("compare") / "project")
    params = load_params(project / "params.yaml", overrides=TINY)
    for stage in ("prepare", "baseline"):
        run_stage(stage, params, project)
    return project, params, run_compare(params, project)


def test_compare__rows_carry_the_benchmark_fields(compared):
    project, _, summary = compared
    report = json.loads(Catalog.at(project).metrics_file("compare").read_text())
    assert sorted(report["candidates"]) == ["baseline-fp32", "baseline-fp32-torch"]
    for row in report["candidates"].values():
        for key in ("accuracy", "accuracy_drop_pp", "size_bytes", "size_ratio",
                    "latency_ms_p50_b1", "speedup_b1_vs_torch", "speedup_b1_vs_ort_fp32",
                    "throughput_sps_b256", "deployed"):
            assert key in row, f"{row['candidate']} should report {key}"
    torch_row = report["candidates"]["baseline-fp32-torch"]
    assert torch_row["size_ratio"] == 1.0 and torch_row["speedup_b1_vs_torch"] == 1.0


def test_compare__deploys_only_an_onnx_file(compared):
    project, _, summary = compared
    report = json.loads(Catalog.at(project).metrics_file("compare").read_text())
    deployed = [row for row in report["candidates"].values() if row["deployed"]]
    assert len(deployed) == 1 and deployed[0]["file"].endswith(".onnx")
    assert summary["deployed"] == deployed[0]["candidate"]
    assert (Catalog.at(project).compare_dir / "pareto.png").is_file()
    assert "(deployed)" in (Catalog.at(project).compare_dir / "candidates.md").read_text()


def test_compare__a_candidate_beyond_tolerance_is_never_deployed(compared):
    project, params, _ = compared
    strict = params.model_copy(update={"compare": params.compare.model_copy(
        update={"max_accuracy_drop_pp": 0.0})})
    # given: a manifest entry whose model is far worse than the teacher (an untrained copy)
    import torch

    from shrinkflow.models import build_model
    from tasks.candidates import Candidate, load_torch, save_torch, write_manifest

    catalog = Catalog.at(project)
    arch, _ = load_torch(catalog.baseline_dir, "baseline")
    folder = catalog.stage_models("distilled")
    torch.manual_seed(1)
    save_torch(build_model(arch), arch, folder / "untrained")
    write_manifest(folder, [Candidate("untrained", "models/distilled/untrained/model.onnx",
                                      "baseline", "none")])
    # when
    summary = run_compare(strict, project)
    # then: the baseline's own ONNX (drop 0) is still chosen; the untrained one never is
    assert summary["deployed"] == "baseline-fp32"
    shutil.rmtree(folder)


def test_compare__without_baseline_names_the_stage(tmp_path, tiny_params):
    with pytest.raises(FileNotFoundError, match="prepare|baseline"):
        run_compare(tiny_params, tmp_path)

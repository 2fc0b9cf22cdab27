"""Stage `compare`: every candidate timed side by side, the deployable one chosen on validation."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from shrinkflow.config import load_params
from shrinkflow.export import export_onnx
from shrinkflow.models import build_model
from tasks.services import io, tracking
from tasks.services.candidates import Candidate, load_torch, write_manifest
from tasks.services.catalog import Catalog
from tasks.stages.compare import CONTROL, JUDGED, TORCH_BASELINE, run_compare
from tests.conftest import TINY, copy_trained

# the default timing settings (TINY shortens them): enough calls for real intervals
TIMING = ["measure.warmup=20", "measure.repeats=200", "measure.throughput_repeats=20"]


class SlowTwin(nn.Module):
    """The teacher's predictions, plus a large computation that adds exactly zero: as accurate,
    several times bigger and slower."""

    def __init__(self, teacher: nn.Module, features: int) -> None:
        super().__init__()
        self.teacher = teacher
        self.heavy = nn.Sequential(nn.Flatten(), nn.Linear(features, 512), nn.Tanh(),
                                   nn.Linear(512, 512), nn.Tanh(), nn.Linear(512, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x) + 0.0 * self.heavy(x)


def _add_candidates(project, params) -> str:
    """models/distilled/ lists two real ONNX candidates besides the baseline: a slower twin of
    the teacher (as accurate) and an untrained small model (faster, far less accurate). Returns
    the MLflow run that made the twin."""
    catalog = Catalog.at(project)
    arch, teacher = load_torch(catalog.baseline_dir, "baseline")
    folder = catalog.models_dir("distill")
    folder.mkdir(parents=True)
    torch.manual_seed(1)
    with tracking.stage_run("distill", params, catalog.root), \
            tracking.candidate_run("slow-twin") as twin_run:
        export_onnx(SlowTwin(teacher, int(np.prod(arch.input_shape))).eval(), arch.input_shape,
                    folder / "slow-twin.onnx")
        tracking.tag_model_file(folder / "slow-twin.onnx")
    untrained = build_model(arch.__class__(arch.family, arch.input_shape, arch.n_classes, (2, 2)))
    export_onnx(untrained.eval(), arch.input_shape, folder / "untrained.onnx")
    write_manifest(folder, [Candidate("slow-twin", "models/distilled/slow-twin.onnx", "baseline",
                                      "none"),
                            Candidate("untrained", "models/distilled/untrained.onnx", "baseline",
                                      "none")])
    return twin_run.info.run_id


@pytest.fixture(scope="module")
def compared(trained_tiny, tmp_path_factory):
    project = copy_trained(trained_tiny, tmp_path_factory.mktemp("compare") / "project")
    params = load_params(project / "params.yaml", overrides=[*TINY, *TIMING])
    twin_run = _add_candidates(project, params)
    return project, params, run_compare(params, project), twin_run


def _report(project) -> dict:
    return io.read_candidates(Catalog.at(project), "compare")


def test_compare__deploys_the_candidate_that_is_accurate_fast_and_small(compared):
    project, _, summary, _ = compared
    report = _report(project)
    rows = report["candidates"]
    # then: the slow twin is as accurate but clearly slower, the untrained model is rejected on
    # validation: the baseline's own ONNX file wins
    assert rows["slow-twin"]["val_accuracy"] == rows["baseline-fp32"]["val_accuracy"]
    assert rows["slow-twin"]["speedup_b1_vs_ort_fp32_interval"][1] < 1.0, \
        "the twin should be measured slower, beyond the noise"
    assert rows["untrained"]["val_accuracy_drop_pp"] > 5
    assert summary["deployed"] == report["deployed"] == "baseline-fp32"
    assert [name for name, row in rows.items() if row["deployed"]] == ["baseline-fp32"]
    assert "**baseline-fp32** (deployed)" in (Catalog.at(project).compare_dir / "candidates.md"
                                              ).read_text()
    assert (Catalog.at(project).compare_dir / "pareto.png").is_file()


def test_compare__rows_carry_validation_test_and_speed_with_intervals(compared):
    project, _, _, _ = compared
    report = _report(project)
    for row in report["candidates"].values():
        for key in ("val_accuracy", "val_accuracy_drop_pp", "accuracy", "accuracy_drop_pp",
                    "size_bytes", "size_ratio", "latency_ms_p50_b1", "throughput_sps_b256",
                    "speedup_b1_vs_torch", "speedup_b1_vs_ort_fp32",
                    "throughput_ratio_b256_vs_ort_fp32", "deployed", *JUDGED):
            assert key in row, f"{row['candidate']} should report {key}"
        for key in ("speedup_b1_vs_torch", "speedup_b1_vs_ort_fp32",
                    "throughput_ratio_b256_vs_ort_fp32"):
            low, high = row[f"{key}_interval"]
            assert low <= row[key] <= high, f"{row['candidate']}: {key} outside its interval"
    torch_row = report["candidates"][TORCH_BASELINE]
    assert torch_row["size_ratio"] == 1.0 and torch_row["speedup_b1_vs_torch"] == 1.0
    # and: judged beside the teacher, its own file agrees with it, the untrained model does not
    rows = report["candidates"]
    assert torch_row["agreement"] == 1.0 and rows["baseline-fp32"]["agreement"] == 1.0
    assert rows["untrained"]["val_agreement"] < 0.5 and rows["untrained"]["kl_to_teacher"] > 0.1
    # and: the control (the baseline file timed twice) reads about 1 with an interval: the same
    # file, not the eager-torch model (several times slower); how close to 1 is the machine's
    # noise, which `make bench` reports (two test workers on two cores swing it by +-30%)
    control = report["control"]
    assert control["candidate"] == CONTROL
    assert 0.5 < control["speedup_b1_vs_ort_fp32"] < 2.0, control
    low, high = control["speedup_b1_vs_ort_fp32_interval"]
    assert low <= control["speedup_b1_vs_ort_fp32"] <= high


def test_compare__metrics_hold_the_deployed_candidates_headline_and_the_csv_every_row(compared):
    project, _, _, _ = compared
    catalog = Catalog.at(project)
    rows = _report(project)["candidates"]
    deployed = rows["baseline-fp32"]
    # then: reports/compare/metrics.json holds the deployed one's figures, named as in the rows
    metrics = io.read_metrics(catalog, "compare")
    assert metrics["deployed"] == "baseline-fp32" and metrics["candidates"] == 3
    for key in ("val_accuracy", "accuracy", "accuracy_drop_pp", "size_bytes", "size_ratio",
                "speedup_b1_vs_torch", "speedup_b1_vs_ort_fp32"):
        assert metrics[key] == deployed[key], f"the compare metrics should hold the deployed {key}"
    # and: metrics/compare.json a few numbers under the names the stages share
    assert json.loads(catalog.metrics_file("compare").read_text()) == {
        "candidates": 3, **{key: deployed[key] for key in ("val_accuracy", "accuracy",
                                                           "accuracy_drop_pp", "size_ratio")},
        "speedup_b1": deployed["speedup_b1_vs_ort_fp32"]}, \
        "no strings, no per-candidate detail: `dvc metrics show` prints a column for each key"
    # and: candidates.csv has one line per row (the eager-torch teacher included), with its kind
    with catalog.candidates_table.open() as handle:
        table = {line["candidate"]: line for line in csv.DictReader(handle)}
    assert table.keys() == rows.keys()
    assert float(table["slow-twin"]["accuracy"]) == rows["slow-twin"]["accuracy"]
    assert {line["kind"] for line in table.values()} == {"baseline", "distilled"}


@pytest.mark.integration  # runs dvc commands
def test_compare__dvc_plots_draws_every_candidate_from_the_csv(compared):
    project, _, _, _ = compared
    dvc = str(Path(sys.executable).parent / "dvc")
    # given: the project as a DVC repository (reading plots needs no git)
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=project, check=True)
    # when
    shown = subprocess.run([dvc, "plots", "show", "--json"], cwd=project, capture_output=True,
                           text=True)
    # then: dvc.yaml's `candidates` scatter has one point per candidate
    assert shown.returncode == 0, shown.stderr
    plot = json.loads(shown.stdout)["data"]["candidates"][0]["content"]
    assert plot["encoding"]["x"]["field"] == "size_ratio"
    assert {point["candidate"] for point in plot["data"]["values"]} == set(_report(project)["candidates"])


def test_compare__timings_reach_the_candidates_own_runs(compared):
    from mlflow import MlflowClient

    project, _, _, twin_run = compared
    row = _report(project)["candidates"]["slow-twin"]
    logged = MlflowClient().get_run(twin_run).data.metrics
    # then: the run that made the file shows compare's numbers, the only timing there is
    assert logged["latency_ms_p50_b1"] == pytest.approx(row["latency_ms_p50_b1"])
    assert logged["speedup_b1_vs_torch"] == pytest.approx(row["speedup_b1_vs_torch"])


def test_compare__the_choice_is_unchanged_when_the_test_labels_are_shuffled(compared):
    project, params, first, _ = compared
    before = _report(project)["candidates"]
    # given: test labels shuffled, so every test accuracy collapses to chance
    split = Catalog.at(project).split_file("test")
    with np.load(split) as arrays:
        x, y = arrays["x"], arrays["y"]
    np.savez(split, x=x, y=np.random.default_rng(0).permutation(y))
    try:
        # when
        second = run_compare(params, project)
        after = _report(project)["candidates"]
    finally:
        np.savez(split, x=x, y=y)
    # then: test accuracies changed, the validation ones and the choice did not
    assert after["baseline-fp32"]["accuracy"] != before["baseline-fp32"]["accuracy"]
    assert {name: row["val_accuracy"] for name, row in after.items()} == \
        {name: row["val_accuracy"] for name, row in before.items()}
    assert second["deployed"] == first["deployed"] == "baseline-fp32"


@pytest.mark.parametrize("rule", [{"max_accuracy_drop_pp": 0.0},
                                  {"max_accuracy_drop_pp": 100.0, "min_agreement": 0.9}])
def test_compare__a_candidate_beyond_tolerance_on_validation_is_never_deployed(compared, rule):
    project, params, _, _ = compared
    strict = params.model_copy(update={"compare": params.compare.model_copy(update=rule)})
    summary = run_compare(strict, project)
    assert summary["deployed"] == "baseline-fp32"
    assert not _report(project)["candidates"]["untrained"]["deployed"]


def test_compare__without_baseline_names_the_stage(tmp_path, tiny_params):
    with pytest.raises(FileNotFoundError, match="prepare|baseline"):
        run_compare(tiny_params, tmp_path)


def test_costs__each_candidate_counts_what_it_was_made_from_once(tmp_path):
    from tasks.services.candidates import Candidate
    from tasks.stages.compare import _costs

    catalog = Catalog.at(tmp_path)
    # given the seconds each stage's report holds: the teacher trained in 10 s, pruning took 5,
    # quantizing the pruned one 1, distilling 20, and an ensemble of the last two 0.5
    reports = {"baseline": ("metrics.json", {"train_seconds": 10.0}),
               "prune": ("candidates.json", {"candidates": {"structured-50": {"make_seconds": 5.0}}}),
               "quantize": ("candidates.json", {"candidates": {"structured-50-int8": {"make_seconds": 1.0}}}),
               "distill": ("candidates.json", {"candidates": {"student-kd": {"make_seconds": 20.0}}}),
               "ensemble": ("candidates.json", {"candidates": {"ensemble-average": {"make_seconds": 0.5}}})}
    for stage, (name, content) in reports.items():
        (catalog.report_dir(stage)).mkdir(parents=True)
        (catalog.report_dir(stage) / name).write_text(json.dumps(content))
    found = [("baseline", Candidate("baseline-fp32", "b.onnx", "baseline", "fp32")),
             ("pruned", Candidate("structured-50", "p.onnx", "baseline", "structured")),
             ("quantized", Candidate("structured-50-int8", "q.onnx", "structured-50", "int8")),
             ("distilled", Candidate("student-kd", "s.onnx", "baseline", "kd")),
             ("ensemble", Candidate("ensemble-average", "e.onnx", "structured-50-int8+student-kd",
                                    "average"))]
    # when the costs are summed; then the teacher's training is counted once, also for the ensemble
    assert _costs(catalog, found) == {"baseline-fp32": 10.0, "structured-50": 15.0,
                                      "structured-50-int8": 16.0, "student-kd": 30.0,
                                      "ensemble-average": 36.5, TORCH_BASELINE: 10.0}

"""The Prefect flow end to end: real Prefect API, real SQLite MLflow store, real files."""

from __future__ import annotations

import shutil

import pytest
from mlflow import MlflowClient

from flows.pipeline import pipeline
from tasks.catalog import Catalog
from tests.conftest import TINY


def _children(parent_run_id: str) -> list:
    client = MlflowClient()
    experiment = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


def _run(project, *extra: str) -> dict:
    return pipeline(root=str(project), overrides=[*TINY, *extra])


@pytest.fixture(scope="module")
def shared(prefect_api, tmp_path_factory):
    """One project and its first run, shared by this module's tests (they run in file order:
    the read-only ones first, then those that change params or delete outputs)."""
    from tests.conftest import copy_project

    project = copy_project(tmp_path_factory.mktemp("pipeline") / "project")
    return project, _run(project)


@pytest.fixture
def first_run(shared):
    return shared[1]


@pytest.fixture
def project(shared):  # noqa: F811 - this module's tests share one project
    return shared[0]


def test_pipeline__stages_are_nested_under_one_parent_run(first_run, project):
    # then: one parent with a nested run per stage, stage metrics copied onto the parent
    parent = MlflowClient().get_run(first_run["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["shrinkflow.kind"] == "pipeline"
    assert parent.data.params["baseline.train.epochs"] == "2", "params.yaml should be flattened"
    assert "baseline.accuracy" in parent.data.metrics
    names = sorted(run.info.run_name for run in _children(first_run["run_id"]))
    assert names == ["baseline", "compare", "distill", "prepare", "prune", "quantize"]
    # and: the summary is a Prefect markdown artifact and a file
    summary = Catalog.at(project).summary_file.read_text()
    assert "| accuracy |" in summary and first_run["stages"]["baseline"]["run_id"] in summary


def test_pipeline__summary_is_a_prefect_artifact(first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pipeline-summary"])))
    assert artifacts and artifacts[0].type == "markdown"


def test_pipeline__unchanged_rerun_is_cached(first_run, project):
    # when: the same configuration again
    second = _run(project)
    # then: no stage ran again; the new parent run points at the cached stage runs
    for stage in ("prepare", "baseline", "compare"):
        assert second["stages"][stage]["run_id"] == first_run["stages"][stage]["run_id"], \
            f"{stage} should come from the cache"
    assert _children(second["run_id"]) == []


def test_pipeline__changed_baseline_param_reruns_only_baseline(first_run, project):
    # when
    second = _run(project, "baseline.train.epochs=1")
    # then
    assert second["stages"]["prepare"]["run_id"] == first_run["stages"]["prepare"]["run_id"]
    assert second["stages"]["baseline"]["run_id"] != first_run["stages"]["baseline"]["run_id"]
    assert second["stages"]["baseline"]["metrics"]["epochs_run"] == 1
    assert second["stages"]["compare"]["run_id"] != first_run["stages"]["compare"]["run_id"], \
        "compare reads the baseline's outputs, so it must run again too"


def test_pipeline__outputs_of_other_params_are_not_taken_from_the_cache(first_run, project):
    # given: the previous test left outputs made with epochs=1 on disk; the cache still holds
    # an entry for the default params
    # when: the default params run again
    again = _run(project)
    # then: baseline runs again instead of returning the cached summary of different files
    assert again["stages"]["baseline"]["run_id"] != first_run["stages"]["baseline"]["run_id"]
    assert again["stages"]["baseline"]["metrics"]["epochs_run"] == 2


def test_pipeline__missing_outputs_force_a_rerun(first_run, project):
    # given: the baseline's outputs are gone although its cache entry is not
    before = _run(project)["stages"]["baseline"]["run_id"]
    shutil.rmtree(Catalog.at(project).baseline_dir)
    # when
    second = _run(project)
    # then
    assert second["stages"]["baseline"]["run_id"] != before
    assert (Catalog.at(project).baseline_dir / "model.onnx").is_file()


def test_pipeline__bad_data_fails_and_marks_the_parent_run_failed(prefect_api, tmp_path):
    from tests.conftest import copy_project

    project = copy_project(tmp_path / "project")
    # given: a user CSV with a NaN
    (project / "data/external/bad.csv").write_text("a,b,label\n" + "1,2,0\n" * 30 + "nan,1,1\n" * 30)
    # when
    with pytest.raises(Exception, match="null"):
        _run(project, "prepare.source=csv", "prepare.csv.path=data/external/bad.csv")
    # then
    client = MlflowClient()
    experiment = client.get_experiment_by_name("shrinkflow")
    latest = client.search_runs([experiment.experiment_id],
                                filter_string="tags.`shrinkflow.kind` = 'pipeline'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert latest.info.status == "FAILED"
    assert not Catalog.at(project).processed_dir.exists(), "nothing downstream should be written"

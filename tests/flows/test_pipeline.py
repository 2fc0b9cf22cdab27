"""The Prefect flow end to end: real Prefect API, real SQLite MLflow store, real files.

The tests share the session's reference run and run in file order: the read-only ones first, then
those that edit code, change params or delete outputs (this module runs after every other one
using the reference project, as its name sorts after theirs).
"""

from __future__ import annotations

import os
import shutil
from urllib.parse import parse_qs, urlsplit

import pytest

from tasks.services.catalog import Catalog
from tasks.services.dag import STAGES
from tests.flows.conftest import mlflow_client, pipeline

pytestmark = pytest.mark.integration


def _children(parent_run_id: str) -> list:
    client = mlflow_client()
    experiment = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


def _listed(link: str) -> set[str]:
    """The runs a printed link's runs table lists: the store searched with the link's filter."""
    client = mlflow_client()
    search = parse_qs(urlsplit(link).fragment.split("?", 1)[1])["searchFilter"][0]
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return {run.info.run_id for run in client.search_runs(experiments, search, max_results=5000)}


def _runs_of(result: dict) -> set[str]:
    """A pipeline run's runs: itself, its stage runs (cached ones too) and the runs nested in them."""
    stages = [summary["run_id"] for summary in result["stages"].values()]
    return {result["run_id"], *stages,
            *(run.info.run_id for stage in stages for run in _children(stage))}


def _ran(first: dict, second: dict) -> set[str]:
    """The stages of `second` that ran (their run differs from `first`'s) instead of coming
    from the cache."""
    return {stage for stage in STAGES
            if second["stages"][stage]["run_id"] != first["stages"][stage]["run_id"]}


def test_pipeline__stages_are_nested_under_one_parent_run(reference):
    result, project = reference["result"], reference["project"]
    # then: one parent with a nested run per stage, stage metrics copied onto the parent
    parent = mlflow_client().get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["shrinkflow.kind"] == "pipeline"
    assert parent.data.params["baseline.train.epochs"] == "2", "params.yaml should be flattened"
    assert "baseline.val_accuracy" in parent.data.metrics
    stages = _children(result["run_id"])
    assert sorted(run.info.run_name for run in stages) == sorted(STAGES)
    # and: the candidates are nested in their stage's run, in the project's experiment too
    candidates = [run for stage in stages for run in _children(stage.info.run_id)]
    assert {"student-kd", "structured-50", "baseline-fp32-int8_static"} <= \
        {run.info.run_name for run in candidates}
    assert {run.info.experiment_id for run in candidates} == {parent.info.experiment_id}
    # and: the printed link lists exactly these runs, with one short filter on a tag
    assert len(result["links"]["pipeline"]) < 400, result["links"]["pipeline"]
    assert _listed(result["links"]["pipeline"]) == _runs_of(result)
    # and: the summary is a file
    summary = Catalog.at(project).summary_file.read_text()
    assert "validation accuracy" in summary and result["stages"]["baseline"]["run_id"] in summary


def test_pipeline__summary_is_a_prefect_artifact(reference):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pipeline-summary"])))
    assert artifacts and artifacts[0].type == "markdown"


def _stage_runs(flow_run_id) -> dict[str, tuple]:
    """(start, end) of each stage's Prefect task run in a flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: (run.start_time, run.end_time) for run in task_runs
            if run.name.rsplit("-", 1)[0] in STAGES}


def test_pipeline__independent_stages_run_at_once(reference):
    from tasks.services import dag

    # given: the reference run, made with cores for two stages at once (see its fixture)
    runs = _stage_runs(reference["flow_run_id"])
    # then: each stage started after the stages whose outputs it reads had finished
    assert set(runs) == set(STAGES)
    for name in STAGES:
        for other in dag.upstream(name):
            assert runs[name][0] >= runs[other][1], f"{name} started before {other} finished"
    # and: stages that do not wait for each other ran at once (test_interruptions checks that a
    # run one stage at a time computes the same)
    overlapping = [(name, other) for name in STAGES for other in dag.independent(name)
                   if runs[name][0] < runs[other][1] and runs[other][0] < runs[name][1]]
    first = min(start for start, _ in runs.values())
    assert overlapping, {name: (round((start - first).total_seconds(), 1),
                                round((end - first).total_seconds(), 1))
                         for name, (start, end) in runs.items()}
    result = reference["result"]
    assert list(result["stages"]) == list(STAGES) and set(result["links"]) == {*STAGES, "pipeline"}


def test_pipeline__stages_running_at_once_never_ask_for_more_than_all_cores():
    from itertools import combinations

    from flows.pipeline import at_once, stage_threads
    from tasks.services import dag

    # given: every group of stages that may run at once (none of them waits for another)
    groups = [group for size in range(1, len(STAGES) + 1) for group in combinations(STAGES, size)
              if all(b in dag.independent(a) for a, b in combinations(group, 2))]
    assert max(len(group) for group in groups) == dag.width() == 3
    for cores in (1, 2, 3, 4, 6, 16):
        # then: stages run at once only with two cores each, and those that do have their
        # torch threads fit the cores
        assert at_once(cores) == max(1, min(3, cores // 2))
        for group in groups:
            if at_once(cores) == 1:
                assert stage_threads(group[0], cores) is None, "one at a time: as they are"
            elif len(group) <= at_once(cores):
                assert sum(stage_threads(name, cores) for name in group) <= cores, (cores, group)
    # and: a stage that runs alone has them all
    assert stage_threads("compare", 16) == 16 and stage_threads("prune", 16) == 5


def test_pipeline__the_user_sets_how_many_stages_run_at_once(monkeypatch):
    from flows.pipeline import at_once
    from shrinkflow.errors import UserError
    from tasks.services import dag
    from tasks.services.environment import STAGES_AT_ONCE_VARIABLE

    # given: the variable set, one at a time, more than the DAG allows, or not a number
    monkeypatch.setenv(STAGES_AT_ONCE_VARIABLE, "1")
    assert at_once() == 1
    monkeypatch.setenv(STAGES_AT_ONCE_VARIABLE, "16")
    assert at_once() == dag.width()
    monkeypatch.setenv(STAGES_AT_ONCE_VARIABLE, "two")
    with pytest.raises(UserError, match=f"{STAGES_AT_ONCE_VARIABLE}='two'"):
        at_once()
    # and: the rule for given cores stays the machine's
    assert at_once(16) == dag.width()


def test_pipeline__unchanged_rerun_is_cached(reference):
    # given: the project as the modules before left it (DVC may have run stages since)
    before = pipeline(root=str(reference["project"]))
    # when: the same configuration again
    second = pipeline(root=str(reference["project"]))
    # then: no stage ran again; the new parent run points at the cached stage runs
    assert _ran(before, second) == set()
    assert _children(second["run_id"]) == []
    # and its link still lists those stage runs and their candidates, to compare them
    assert len(second["links"]["pipeline"]) < 400, second["links"]["pipeline"]
    assert _listed(second["links"]["pipeline"]) == _runs_of(second)


def test_pipeline__a_comment_deep_in_the_code_reruns_exactly_the_stages_importing_it(reference):
    # given: a comment added to shrinkflow/plots.py, which search, baseline, recipes and compare
    # import
    project = reference["project"]
    plots = project / "shrinkflow" / "plots.py"
    plots.write_text(plots.read_text() + "\n# a comment\n")
    # when
    second = pipeline(root=str(project))
    # then: those four run again; search resumes its finished study (the same choice) and
    # baseline writes the same bytes (same config and seed), so the stages that read their
    # outputs come from the cache, but for deploy, which reads compare's new timings
    assert _ran(reference["result"], second) == {"search", "baseline", "recipes", "compare",
                                                  "deploy"}
    assert second["stages"]["baseline"]["metrics"]["val_accuracy"] == \
        reference["result"]["stages"]["baseline"]["metrics"]["val_accuracy"]


def test_pipeline__outputs_of_other_params_are_not_taken_from_the_cache(reference):
    project = reference["project"]
    before = pipeline(root=str(project))
    # given: compare's outputs made with another tolerance; the cache still holds an entry for
    # the params.yaml ones
    other = pipeline(root=str(project), overrides=["compare.max_accuracy_drop_pp=5"])
    assert _ran(before, other) == {"compare", "deploy"}
    # when: params.yaml runs again
    again = pipeline(root=str(project))
    # then: they run again instead of returning the cached summaries of different files
    assert _ran(other, again) == {"compare", "deploy"}
    assert _ran(before, again) == {"compare", "deploy"}


def test_pipeline__missing_outputs_force_a_rerun(reference):
    # given: the baseline's outputs are gone although its cache entry is not
    project = reference["project"]
    before = pipeline(root=str(project))
    shutil.rmtree(Catalog.at(project).baseline_dir)
    # when
    second = pipeline(root=str(project))
    # then: baseline makes the same bytes again, so what reads them stays cached
    assert _ran(before, second) == {"baseline"}
    assert (Catalog.at(project).baseline_dir / "model.onnx").is_file()


@pytest.mark.slow  # nearly a whole run again; other params' reruns are checked in make test
def test_pipeline__changed_baseline_param_reruns_baseline_and_what_reads_it(reference):
    project = reference["project"]
    before = pipeline(root=str(project))
    # when
    second = pipeline(root=str(project), overrides=["baseline.train.epochs=1"])
    # then
    assert _ran(before, second) == set(STAGES) - {"prepare"}
    assert second["stages"]["baseline"]["metrics"]["epochs_run"] == 1


def test_pipeline__a_missing_upstream_output_fails_at_once_without_retries(prefect_api, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client

    from shrinkflow.config import load_params
    from tasks.services.stage_tasks import stage_task
    from tests.conftest import REPO, TINY

    params = load_params(REPO / "params.yaml", overrides=TINY)

    @flow
    def baseline_alone() -> dict:
        state = stage_task("baseline", params, tmp_path)("baseline", params, tmp_path,
                                                         return_state=True)
        return {"failed": state.is_failed(), "message": state.message,
                "task_run_id": str(state.state_details.task_run_id)}

    # when: baseline runs in a folder where prepare never ran
    outcome = baseline_alone()
    # then: it failed with the missing input named, after a single attempt
    assert outcome["failed"] and "run the 'prepare' stage first" in outcome["message"]
    with get_client(sync_client=True) as client:
        assert client.read_task_run(outcome["task_run_id"]).run_count == 1


def test_pipeline__bad_data_fails_and_marks_the_parent_run_failed(prefect_api, tmp_path):
    from tests.conftest import TINY, copy_project

    project = copy_project(tmp_path / "project")
    # given: a user CSV with a NaN, and missing values refused
    (project / "data/external/bad.csv").write_text("a,b,label\n" + "1,2,0\n" * 30 + "nan,1,1\n" * 30)
    # when
    with pytest.raises(Exception, match="null"):
        pipeline(root=str(project), overrides=[*TINY, "prepare.source=csv",
                                               "prepare.csv.path=data/external/bad.csv",
                                               "prepare.csv.missing=refuse"])
    # then
    client = mlflow_client()
    experiment = client.get_experiment_by_name("shrinkflow")
    latest = client.search_runs([experiment.experiment_id],
                                filter_string="tags.`shrinkflow.kind` = 'pipeline'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert latest.info.status == "FAILED"
    assert not Catalog.at(project).processed_dir.exists(), "nothing downstream should be written"


def test_a_run_started_by_hand_or_by_ci_says_so(reference):
    from tasks.services import triggers

    expected = triggers.current(os.environ)
    parent = mlflow_client().get_run(reference["result"]["run_id"])
    assert parent.data.tags["shrinkflow.trigger"] == expected.kind
    assert parent.info.run_name == f"pipeline ({expected.label})"

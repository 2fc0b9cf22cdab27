"""DVC on the real pipeline: the flow records dvc.lock, DVC sees exactly the stages a code change
touches, repro, metrics, plots, push/pull. All on the session's reference project, which these
tests leave as they found it: recorded in dvc.lock, every stage's outputs current."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tasks.services import dag
from tasks.services.catalog import Catalog, tree_digest
from tests.flows.conftest import mlflow_client, pipeline, run
from tests.services import aws_test_credentials, forwarding, free_port, s3_server

pytestmark = pytest.mark.integration


@contextmanager
def _commented(path: Path) -> Iterator[None]:
    """`path` with a comment appended for the block, then as it was."""
    original = path.read_text()
    path.write_text(original + "\n# a comment\n")
    try:
        yield
    finally:
        path.write_text(original)


def _changed_stages(project: Path) -> set[str]:
    status = run(["dvc", "status", "--json"], project)
    assert status.returncode == 0, status.stderr
    import json

    return set(json.loads(status.stdout or "{}"))


def test_flow__records_outputs_in_dvc_lock_and_pushes(reference):

    project = reference["project"]
    # then: DVC sees the flow's outputs as the pipeline's current state, and the remote has them
    assert _changed_stages(project) == set()
    cloud = run(["dvc", "status", "--cloud"], project)
    assert cloud.returncode == 0 and "in sync" in cloud.stdout, cloud.stdout
    logged = {item.path for item in mlflow_client().list_artifacts(reference["result"]["run_id"])}
    assert "dvc.lock" in logged, "the parent run should keep the dvc.lock it produced"


@pytest.mark.parametrize("module", ["shrinkflow/gate.py", "shrinkflow/distill.py",
                                    "shrinkflow/data.py"])
def test_dvc_status__a_comment_deep_in_the_code_changes_exactly_its_importers(reference, module):
    project = reference["project"]
    expected = {name for name in dag.STAGES if module in dag.code_deps(name, project)}
    with _commented(project / module):
        assert _changed_stages(project) == expected
    assert _changed_stages(project) == set()


def test_record_versions__runs_again_when_dvc_lock_or_the_remote_lost_its_records(reference):
    project = reference["project"]
    # given: dvc.lock deleted and the remote emptied, outputs and caches untouched
    (project / "dvc.lock").unlink()
    shutil.rmtree(project / ".dvc-storage")
    # when: the pipeline runs again with nothing else changed
    pipeline(root=str(project))
    # then: the recording was not skipped: dvc.lock is back and the remote holds everything
    assert _changed_stages(project) == set()
    cloud = run(["dvc", "status", "--cloud"], project)
    assert cloud.returncode == 0 and "in sync" in cloud.stdout, cloud.stdout


def test_dvc_repro__runs_what_changed_then_has_nothing_to_do(reference, tmp_path):
    # given: a copy of the reference project (git, DVC cache and remote included), so the stages
    # DVC runs leave the reference's outputs to the Prefect cache entries of the tests after this
    project = Path(shutil.copytree(reference["project"], tmp_path / "project", symlinks=True))
    # when: a module only compare and deploy import changes
    with _commented(project / "shrinkflow" / "gate.py"):
        repro = run(["dvc", "repro"], project)
        # then: DVC runs those two alone, through the same stage functions the flow runs
        assert repro.returncode == 0, repro.stderr + repro.stdout
        ran = {name for name in dag.STAGES if f"Running stage '{name}'" in repro.stdout}
        assert ran == {"compare", "deploy"}, repro.stdout
        again = run(["dvc", "repro"], project)
        assert "Data and pipelines are up to date" in again.stdout, again.stdout
    # and: metrics and plots are readable by DVC
    metrics = run(["dvc", "metrics", "show", "--json"], project)
    assert metrics.returncode == 0 and '"val_accuracy"' in metrics.stdout
    plots = run(["dvc", "plots", "show", "--json"], project)
    assert plots.returncode == 0 and "val_accuracy" in plots.stdout, plots.stderr


def test_dvc_push_pull__restores_lost_outputs_byte_for_byte(reference):
    project = reference["project"]
    assert run(["dvc", "push"], project).returncode == 0
    catalog = Catalog.at(project)
    before = {path: tree_digest(path) for path in (catalog.processed_dir, catalog.baseline_dir)}
    for path in (*before, project / ".dvc" / "cache"):
        shutil.rmtree(path)
    pulled = run(["dvc", "pull"], project)
    assert pulled.returncode == 0, pulled.stderr
    assert {path: tree_digest(path) for path in before} == before


def test_check_remote__an_unreachable_s3_endpoint_is_retried_with_backoff_until_it_answers(
        prefect_api, dvc_project, monkeypatch, tmp_path):
    import threading
    import time
    from contextlib import ExitStack

    import boto3
    from prefect.client.orchestration import get_client

    from tasks.services import faults, versions

    # given: the remote's S3 endpoint is down when the check starts and comes up ~2 s later
    aws_test_credentials(monkeypatch, tmp_path)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("SHRINKFLOW_DVC_REMOTE", "s3://late/dvc")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    with pytest.raises(versions.RemoteUnreachable) as refused:
        versions.ready(dvc_project)
    assert faults.is_transient(refused.value), "an unreachable endpoint is worth a retry"

    with ExitStack() as later_server:
        def start_later() -> None:
            # the server and its bucket are ready before the endpoint answers: the check must
            # never see a reachable endpoint without the bucket (that is no transient fault)
            behind = later_server.enter_context(s3_server(tmp_path))
            boto3.client("s3", endpoint_url=behind).create_bucket(Bucket="late")
            time.sleep(2)
            later_server.enter_context(forwarding(port, int(behind.rsplit(":", 1)[1])))

        starter = threading.Thread(target=start_later)
        starter.start()
        # when: the pipeline's check runs as its task (the push's retry policy)
        state = versions.check_remote(dvc_project, return_state=True)
        starter.join()
    # then: it failed, waited, tried again and succeeded
    assert state.is_completed(), state
    assert state.result() == versions.Remote("shared", "s3://late/dvc", endpoint)
    with get_client(sync_client=True) as client:
        history = [item.name for item in client.read_task_run_states(state.state_details.task_run_id)]
    assert "AwaitingRetry" in history, history

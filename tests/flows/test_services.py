"""The pipeline against real network services started by the tests themselves.

- an MLflow tracking server: the project's own `infra/mlflow-server.sh`, run from a temporary
  project so its store (mlflow.db, mlartifacts/) is temporary;
- an S3 server for DVC's remote: moto's standalone server (the whole push and pull through it is
  tests/flows/test_stack.py's; here, the checks before a push).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import copy_project
from tests.flows.conftest import run
from tests.services import answers, aws_test_credentials, free_port, s3_server, service, service_env

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# MLflow tracking server
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """infra/mlflow-server.sh serving a temporary project's store; yields (url, that project)."""
    root = copy_project(tmp_path_factory.mktemp("mlflow-server") / "project")
    (root / "infra").mkdir()
    script = shutil.copy2(REPO / "infra" / "mlflow-server.sh", root / "infra" / "mlflow-server.sh")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = service_env(MLFLOW_HOST="127.0.0.1", MLFLOW_PORT=str(port))
    with service(["bash", str(script)], root, env, lambda: answers(f"{url}/health"),
                  root / "server.log"):
        yield url, root


@pytest.fixture
def _mlflow_uri_restored() -> Iterator[None]:
    """mlflow.set_tracking_uri is process-global: give later tests back the session's store."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(previous)


def test_pipeline_stages_log_to_a_tracking_server(mlflow_server, project, tiny_params,
                                                  monkeypatch, _mlflow_uri_restored):
    from mlflow import MlflowClient

    from tasks.services import tracking
    from tasks.services.runner import run_stage

    # given: the pipeline pointed at a running tracking server
    url, server_root = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)

    # when
    prepare = run_stage("prepare", tiny_params, project)
    search = run_stage("search", tiny_params, project)
    baseline = run_stage("baseline", tiny_params, project)

    # then: the runs and their metrics are on the server (the search's trials nested in its run)
    client = MlflowClient(url)
    search_run = client.get_run(search["run_id"])
    assert search_run.data.tags["study"] == search["choice"]["study"]
    trials = client.search_runs([search_run.info.experiment_id],
                                f"tags.mlflow.parentRunId = '{search['run_id']}'")
    assert [run.info.run_name for run in trials] == ["trial-0"]
    prepare_run = client.get_run(prepare["run_id"])
    baseline_run = client.get_run(baseline["run_id"])
    assert prepare_run.info.status == baseline_run.info.status == "FINISHED"
    assert prepare_run.data.metrics["rows_test"] == prepare["metrics"]["rows_test"]
    assert baseline_run.data.metrics["accuracy"] == pytest.approx(
        baseline["metrics"]["accuracy"])
    experiment = client.get_experiment(baseline_run.info.experiment_id)
    assert experiment.name == tiny_params.project.experiment

    # and: artifacts went through the server into its own store, not the client's project
    assert baseline_run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert "weights/model.pt" in {a.path for a in client.list_artifacts(baseline["run_id"],
                                                                          "weights")}
    stored = list((server_root / "mlartifacts").rglob("weights/model.pt"))
    assert len(stored) == 1
    assert stored[0].read_bytes() == (project / "models/baseline/model.pt").read_bytes()
    assert list((server_root / "mlartifacts").rglob("MLmodel")), "the ONNX model is logged"
    assert not (project / "mlartifacts").exists() and not (project / "mlruns").exists()

    # and: the link a person gets opens the run on the server
    link = tracking.run_link(project, baseline["run_id"])
    assert link.startswith(f"{url}/#/experiments/")
    assert link.endswith(baseline["run_id"])


# ---------------------------------------------------------------------------------------------
# DVC with an S3 remote
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with s3_server(tmp_path_factory.mktemp("moto")) as url:
        yield url


@pytest.fixture
def aws_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    aws_test_credentials(monkeypatch, tmp_path)


def _dvc_project_remote(project: Path, url: str, endpoint: str,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHRINKFLOW_DVC_REMOTE", url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)


def test_the_s3_remote_is_checked_before_a_push(s3_endpoint, aws_credentials, dvc_project,
                                                monkeypatch):
    import boto3

    from tasks.services import versions

    # given: the remote the environment names, its bucket not created yet
    _dvc_project_remote(dvc_project, "s3://checked/dvc", s3_endpoint, monkeypatch)
    # then: a missing bucket is named, and nothing is configured for it
    with pytest.raises(versions.RemoteError, match="DVC remote 'shared' \\(s3://checked/dvc at "
                       f"{s3_endpoint}\\): bucket 'checked' does not exist"):
        versions.ready(dvc_project)
    assert not (dvc_project / ".dvc" / "config.local").exists()
    # and: once it exists, the remote becomes this machine's `shared` remote
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="checked")
    assert versions.ready(dvc_project) == versions.Remote("shared", "s3://checked/dvc", s3_endpoint)
    listed = run(["dvc", "remote", "list"], dvc_project)
    assert "shared\ts3://checked/dvc" in listed.stdout.replace("  ", "\t"), listed.stdout


def test_missing_s3_credentials_are_named(s3_endpoint, aws_credentials, dvc_project, monkeypatch):
    from tasks.services import versions

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    _dvc_project_remote(dvc_project, "s3://anything/dvc", s3_endpoint, monkeypatch)
    with pytest.raises(versions.RemoteError, match="'shared' .*: no S3 credentials; set "
                       "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        versions.ready(dvc_project)

"""The pipeline against real network services started by the tests themselves.

- an MLflow tracking server: the project's own `infra/mlflow-server.sh`, run from a temporary
  project so its store (mlflow.db, mlartifacts/) is temporary;
- an S3 remote for DVC: moto's standalone server.

Each service binds a free port on 127.0.0.1, is waited for with a deadline and is stopped (its
whole process group) at fixture teardown, whether the test passed or not.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tasks.catalog import Catalog, tree_digest
from tests.conftest import copy_project
from tests.flows.conftest import run

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the test interpreter's bin/: mlflow, moto_server, dvc
STARTUP_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def _service(command: list[str], cwd: Path, env: dict[str, str], ready: Callable[[], bool],
             log: Path) -> Iterator[subprocess.Popen]:
    """Start `command` in its own process group, wait until `ready()`, stop the group on exit."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"{command[0]} exited with {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{command[0]} not ready after {STARTUP_TIMEOUT_S} s:\n"
                            f"{log.read_text()}")
            time.sleep(0.25)
        yield process
    finally:
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue


def _service_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)  # the server's store comes from its flags only
    return env


# ---------------------------------------------------------------------------------------------
# MLflow tracking server
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """infra/mlflow-server.sh serving a temporary project's store; yields (url, that project)."""
    root = copy_project(tmp_path_factory.mktemp("mlflow-server") / "project")
    (root / "infra").mkdir()
    script = shutil.copy2(REPO / "infra" / "mlflow-server.sh", root / "infra" / "mlflow-server.sh")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = _service_env(MLFLOW_HOST="127.0.0.1", MLFLOW_PORT=str(port))
    with _service(["bash", str(script)], root, env, lambda: _answers(f"{url}/health"),
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

    from tasks import tracking
    from tasks.stages import run_stage

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
    """moto's S3 server on a free local port; yields its endpoint URL."""
    folder = tmp_path_factory.mktemp("moto")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with _service(command, folder, _service_env(), lambda: _answers(f"{url}/moto-api/"),
                  folder / "moto.log"):
        yield url


@pytest.fixture
def aws_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials (moto accepts any) and no AWS configuration from the user's home."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                       "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
                       "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
                       "DVC_NO_ANALYTICS": "1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)


def test_dvc_push_pull_through_an_s3_remote(s3_endpoint, aws_credentials, dvc_project):
    import boto3

    # given: a bucket on the S3 server and the project's default remote pointing at it
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="shrinkflow")
    for command in (["dvc", "remote", "add", "-d", "s3", "s3://shrinkflow/dvc"],
                    ["dvc", "remote", "modify", "s3", "endpointurl", s3_endpoint]):
        configured = run(command, dvc_project)
        assert configured.returncode == 0, configured.stderr

    # when: the first stage runs (enough to have data to version) and its outputs are pushed
    repro = run(["dvc", "repro", "prepare"], dvc_project)
    assert repro.returncode == 0, repro.stderr + repro.stdout
    pushed = run(["dvc", "push", "prepare"], dvc_project)
    assert pushed.returncode == 0, pushed.stderr + pushed.stdout

    # then: the objects are in the bucket, under the remote's prefix
    listing = s3.list_objects_v2(Bucket="shrinkflow", Prefix="dvc/")
    assert listing["KeyCount"] > 0
    assert not (dvc_project / ".dvc-storage").exists(), "the local remote is no longer default"

    # and: with local outputs and cache gone, a pull restores them byte for byte
    catalog = Catalog.at(dvc_project)
    before = {path: tree_digest(path) for path in (catalog.raw_dir, catalog.processed_dir)}
    for path in (*before, dvc_project / ".dvc" / "cache"):
        shutil.rmtree(path)
    pulled = run(["dvc", "pull", "prepare"], dvc_project)
    assert pulled.returncode == 0, pulled.stderr + pulled.stdout
    assert {path: tree_digest(path) for path in before} == before

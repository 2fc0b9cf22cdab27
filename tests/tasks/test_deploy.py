"""Stage `deploy` and the registry: registration with lineage, the promotion gate, rollback, the
`models` commands and both servers of the registered model, on a real MLflow store.

Integration tests (not in `make test-fast`): the gate loads every version it promotes in a client
process of its own, and two tests start the model's servers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from bench.serving import free_port, running
from shrinkflow.config import load_params
from shrinkflow.export import export_onnx
from shrinkflow.models import build_model
from tasks.services import io, registry
from tasks.services.candidates import Candidate, evaluate_onnx, load_torch, write_manifest
from tasks.services.catalog import Catalog
from tasks.stages.compare import run_compare
from tasks.stages.deploy import run_deploy
from tests.conftest import TINY, copy_trained

pytestmark = pytest.mark.integration
VENV_BIN = Path(sys.executable).parent


def _params(project: Path, name: str, *overrides: str):
    return load_params(project / "params.yaml",
                       overrides=[*TINY, f"deploy.registered_model={name}", *overrides])


def _champion(project: Path, name: str) -> str | None:
    return registry.version_of(project, name, registry.CHAMPION)


@pytest.fixture(scope="module")
def compared(trained_tiny, tmp_path_factory) -> Path:
    """The tiny trained project after `compare` (the baseline is the one candidate)."""
    project = copy_trained(trained_tiny, tmp_path_factory.mktemp("deploy") / "project")
    run_compare(_params(project, "unused"), project)
    return project


@pytest.fixture(scope="module")
def deployed(compared) -> dict:
    """`deploy` run once on a registry of its own: version 1, promoted."""
    summary = run_deploy(_params(compared, "digits-deployed"), compared)
    return {"project": compared, "name": "digits-deployed", "summary": summary}


def _inject_untrained(project: Path) -> None:
    """compare's report names an untrained model as its choice: a regression to be refused."""
    catalog = Catalog.at(project)
    arch, _ = load_torch(catalog.baseline_dir, "baseline")
    folder = catalog.models_dir("distill")
    folder.mkdir(parents=True, exist_ok=True)
    export_onnx(build_model(arch).eval(), arch.input_shape, folder / "untrained.onnx")
    write_manifest(folder, [Candidate("untrained", "models/distilled/untrained.onnx", "baseline",
                                      "none")])
    compared = io.read_candidates(catalog, "compare")
    splits, _, _ = io.load_processed(catalog)
    row = {**compared["candidates"][compared["deployed"]], "candidate": "untrained",
           "file": "models/distilled/untrained.onnx",
           **evaluate_onnx(folder / "untrained.onnx", splits)}
    compared["candidates"]["untrained"], compared["deployed"] = row, "untrained"
    io.write_json(catalog.candidates_report("compare"), compared)


def test_the_first_version_is_registered_with_its_lineage_and_promoted(deployed):
    project, name, summary = deployed["project"], deployed["name"], deployed["summary"]
    assert summary["registered"] and summary["promoted"] and summary["version"] == "1"
    assert all(check["passed"] for check in summary["checks"])
    assert {check["name"] for check in summary["checks"]} == {"accuracy", "size", "latency",
                                                              "rollback", "integration"}
    info = registry.version_info(project, name, "1")
    assert set(info["aliases"]) == {registry.CHALLENGER, registry.CHAMPION}
    compared = io.read_candidates(Catalog.at(project), "compare")
    chosen = compared["candidates"][compared["deployed"]]
    dataset = json.loads((project / "data" / "processed" / "dataset.json").read_text())
    assert info["candidate"] == compared["deployed"]
    assert float(info["test_accuracy"]) == pytest.approx(chosen["accuracy"])
    assert float(info["latency_ms_p50_b1"]) == pytest.approx(chosen["latency_ms_p50_b1"])
    assert info["data_md5"] == dataset["raw_md5"]
    assert len(info["params_hash"]) == 16 and info["shrinkflow.moved_how"] == "auto"
    # and: metrics/deploy.json is the headline, numbers only; the gate's checks and the champion
    # are in models/deploy/deploy.json
    assert json.loads((project / "metrics" / "deploy.json").read_text()) == {
        "promoted": 1, "version": 1}
    report = json.loads((project / "models" / "deploy" / "deploy.json").read_text())
    assert report["checks"] == summary["checks"]
    assert (report["registered"], report["champion"]) == (True, "1")


def test_the_deployed_file_answers_raw_rows_in_label_names(deployed):
    project = deployed["project"]
    rows = registry.Rows.of_split(project, "test")
    session = ort.InferenceSession(str(project / "models" / "deploy" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {"features": rows.x})
    compared = io.read_candidates(Catalog.at(project), "compare")
    assert np.mean(labels == rows.labels) == pytest.approx(
        compared["candidates"][compared["deployed"]]["accuracy"])
    assert probabilities.shape == (len(rows.x), 10)


def test_a_worse_model_is_refused_and_the_champion_kept_then_rollback_restores(compared, tmp_path):
    project = copy_trained(compared, tmp_path / "project")
    name = "digits-gated"
    first = run_deploy(_params(project, name), project)
    _inject_untrained(project)
    # when the untrained model comes through deploy
    second = run_deploy(_params(project, name), project)
    # then it is registered as challenger but refused on accuracy; the champion is untouched
    assert second["registered"] and not second["promoted"]
    failed = {check["name"] for check in second["checks"] if not check["passed"]}
    assert failed == {"accuracy"}
    assert _champion(project, name) == first["version"]
    assert registry.version_of(project, name, registry.CHALLENGER) == second["version"]
    # when it is forced in by hand, then rolled back
    registry.promote(project, "shrinkflow", name, second["version"], "manual-forced")
    assert _champion(project, name) == second["version"]
    served = registry.RegistrySource(project, name, registry.CHAMPION)
    assert served.current_version() == second["version"]
    assert registry.rollback(project, "shrinkflow", name) == (second["version"], first["version"])
    assert _champion(project, name) == first["version"]
    # and: a server following the alias sees the rollback, and loads that version
    assert served.current_version() == first["version"]
    assert served.load(first["version"]).info["candidate"] == first["candidate"]
    with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
        registry.rollback(project, "shrinkflow", name)
    # and: the next deploy of the rolled-back bytes does not undo the rollback
    third = run_deploy(_params(project, name), project)
    assert third["version"] == second["version"] and not third["promoted"]
    assert {c["name"] for c in third["checks"] if not c["passed"]} == {"accuracy", "rollback"}
    assert _champion(project, name) == first["version"]
    assert registry.version_of(project, name, registry.CHALLENGER) == second["version"]


def test_a_champion_moved_during_the_gate_is_not_overwritten(deployed, tmp_path, monkeypatch):
    project = copy_trained(deployed["project"], tmp_path / "project")
    name = "digits-race"
    first = run_deploy(_params(project, name, "deploy.auto_promote=false"), project)["version"]
    _inject_untrained(project)
    second = run_deploy(_params(project, name, "deploy.auto_promote=false"), project)["version"]
    checks = registry.checks

    def meanwhile(root, name_, version, champion, cfg):
        # another promotion lands while this version is being checked
        registry.promote(root, "shrinkflow", name_, first, "manual")
        return [check for check in checks(root, name_, version, champion, cfg) if check.passed]

    monkeypatch.setattr(registry, "checks", meanwhile)
    with pytest.raises(registry.RegistryError, match="moved to version 1 while version 2"):
        registry.gated_promote(project, "shrinkflow", name, second,
                               _params(project, name).deploy, how="manual")
    assert _champion(project, name) == first

    # and: another run promoting this very version meanwhile (two runs that made the same file
    # share the registry) leaves it the champion, without an error
    def same_meanwhile(root, name_, version, champion, cfg):
        registry.promote(root, "shrinkflow", name_, version, "manual")
        return [check for check in checks(root, name_, version, champion, cfg) if check.passed]

    monkeypatch.setattr(registry, "checks", same_meanwhile)
    done = registry.gated_promote(project, "shrinkflow", name, second,
                                  _params(project, name).deploy, how="manual")
    assert (done.promoted, done.champion, _champion(project, name)) == (False, second, second)


def test_budgets_and_auto_promote_off_leave_the_champion_alone(deployed, tmp_path):
    project = copy_trained(deployed["project"], tmp_path / "project")
    name = "digits-budgets"
    over = run_deploy(_params(project, name, "deploy.max_size_bytes=1000"), project)
    assert not over["promoted"] and _champion(project, name) is None
    assert [c["name"] for c in over["checks"] if not c["passed"]] == ["size"]
    manual = run_deploy(_params(project, name, "deploy.auto_promote=false"), project)
    assert not manual["promoted"] and "auto_promote" in manual["reason"]
    assert _champion(project, name) is None


def test_models_commands(deployed, monkeypatch):
    from flows.cli import app

    monkeypatch.chdir(deployed["project"])
    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list", "--name", deployed["name"]])
    assert listed.exit_code == 0, listed.output
    assert "champion" in listed.output and "auto" in listed.output
    missing = runner.invoke(app, ["models", "promote", "7", "--name", deployed["name"]])
    assert missing.exit_code == 1 and "has no version '7'" in missing.output
    unknown = runner.invoke(app, ["models", "rollback", "--name", "no-such-model"])
    assert unknown.exit_code == 1 and "no registered model 'no-such-model'" in unknown.output


# ---------------------------------------------------------------------------------------------
# Both servers of the registered model
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def test_rows(deployed):
    rows = registry.Rows.of_split(deployed["project"], "test")
    session = ort.InferenceSession(str(deployed["project"] / "models" / "deploy" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return rows, list(session.run(None, {"features": rows.x})[0])


def test_shrinkflow_serve_answers_like_offline_evaluation(deployed, test_rows):
    rows, offline = test_rows
    port = free_port()
    command = [str(VENV_BIN / "shrinkflow"), "serve", "--name", deployed["name"], "--port", str(port)]
    with running(command, deployed["project"], port, "/health") as url:
        answer = httpx.post(f"{url}/predict", json={"inputs": rows.x.tolist()}, timeout=30).json()
        model = httpx.get(f"{url}/model", timeout=5).json()
    assert answer["labels"] == offline
    assert model["version"] == "1" and model["candidate"] and model["alias"] == "champion"


def test_mlflow_models_serve_answers_like_offline_evaluation(deployed, test_rows):
    rows, offline = test_rows
    port = free_port()
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m",
               f"models:/{deployed['name']}@champion", "--env-manager", "local", "-h", "127.0.0.1",
               "-p", str(port)]
    with running(command, deployed["project"], port, "/ping") as url:
        answer = httpx.post(f"{url}/invocations", json={"inputs": rows.x.tolist()}, timeout=30).json()
    assert answer["predictions"]["label"] == offline


def test_nothing_deployable_registers_nothing_and_says_why(compared, tmp_path):
    project = copy_trained(compared, tmp_path / "project")
    catalog = Catalog.at(project)
    report = io.read_candidates(catalog, "compare")
    io.write_json(catalog.candidates_report("compare"), {**report, "deployed": None})
    summary = run_deploy(_params(project, "digits-none"), project)
    assert not summary["registered"] and "no candidate within" in summary["reason"]
    assert "nothing registered" in summary["headline"]
    assert json.loads(catalog.metrics_file("deploy").read_text()) == {"promoted": 0}
    with pytest.raises(registry.RegistryError, match="no registered model 'digits-none'"):
        registry.list_versions(project, "digits-none")

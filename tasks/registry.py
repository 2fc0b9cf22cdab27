"""The MLflow Model Registry: register a deployable model, gate its promotion, roll back, list.

One registered model per data set. A new version gets the alias `challenger`; it becomes
`champion` (what `shrinkflow serve` answers with) only through `promote`, after the gate's checks
(`shrinkflow.gate`): validation accuracy against the champion, both re-evaluated now on the
current validation rows, the size and latency budgets, and an integration check in a fresh process
(`tasks.registry_check`: `mlflow.pyfunc` loads the registered model and predicts the raw test rows,
which must give the test accuracy logged with it). A failed check moves nothing.

Every move is recorded twice: as tags on the version (when, how, the previous champion, the
checks) and as an MLflow run of kind `promotion` in the project's experiment. The registered
model's tag `shrinkflow.champion_history` lists the champions in order: `rollback` gives the alias
back to the one before the current champion, and again to the one before that.
"""

from __future__ import annotations

import json
import subprocess  # nosec B404: runs this project's own check module with this interpreter
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shrinkflow import gate
from shrinkflow.config import DeployConfig, Params
from shrinkflow.errors import UserError
from tasks import io, tracking
from tasks.catalog import Catalog

CHALLENGER, CHAMPION = "challenger", "champion"
HISTORY_TAG = "shrinkflow.champion_history"  # on the registered model: JSON list of versions
PROMOTION_KIND = "promotion"  # tracking.PIPELINE_TAG of the runs recording a move
# version tags written at registration, read back by the gate, `models list` and the server
LINEAGE = ("candidate", "val_accuracy", "test_accuracy", "size_bytes", "latency_ms_p50_b1",
           "git_commit", "data_md5", "pipeline_run_id", "params_hash", "dataset", "model_md5")
INTEGRATION_TIMEOUT_S = 300


class RegistryError(UserError):
    """A registered model, version or alias the command needs does not exist."""


def default_name(params: Params, root: Path) -> str:
    """params.yaml `deploy.registered_model`, else shrinkflow-<data set> (from prepare's output)."""
    if params.deploy.registered_model:
        return params.deploy.registered_model
    spec = io.read_json(Catalog.at(root).dataset_file(), produced_by="prepare")["spec"]
    return f"shrinkflow-{spec['name']}"


# ---------------------------------------------------------------------------------------------
# Reading the registry
# ---------------------------------------------------------------------------------------------
def _require_model(root: Path, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return tracking.client(root).get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"no registered model {name!r} in {tracking.tracking_uri(root)}: run "
                            "the pipeline (its deploy stage registers one) or pass --name") from None


def version_of(root: Path, name: str, alias: str) -> str | None:
    """The version `alias` points to, None when it points nowhere (or the model does not exist)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(tracking.client(root).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _version(root: Path, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    _require_model(root, name)
    try:
        return tracking.client(root).get_model_version(name, version)
    except MlflowException:
        raise RegistryError(f"registered model {name!r} has no version {version!r} "
                            "(`shrinkflow models list` shows them)") from None


def model_bytes(root: Path, name: str, version: str) -> bytes:
    """The ONNX file of a registered version."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="shrinkflow-registry-") as folder:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                    dst_path=folder,
                                                    tracking_uri=tracking.tracking_uri(root))
        return (Path(local) / "model.onnx").read_bytes()


def version_info(root: Path, name: str, version: str) -> dict[str, Any]:
    """What the registry says about a version: aliases, lineage and moves (its tags)."""
    found = _version(root, name, version)
    return {"name": name, "version": str(found.version), "aliases": list(found.aliases),
            "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(found.creation_timestamp / 1000)),
            "run_id": found.run_id, **found.tags}


def version_with_file(root: Path, name: str, md5: str) -> str | None:
    """The version registered with these exact bytes (tag `model_md5`), None if none is."""
    from mlflow.exceptions import MlflowException

    try:
        versions = tracking.client(root).search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    return next((str(v.version) for v in versions if v.tags.get("model_md5") == md5), None)


def list_versions(root: Path, name: str) -> list[dict[str, Any]]:
    """Every version of `name`, newest first, with aliases, metrics and lineage."""
    _require_model(root, name)
    versions = tracking.client(root).search_model_versions(f"name = '{name}'")
    return [version_info(root, name, str(v.version))
            for v in sorted(versions, key=lambda v: -int(v.version))]


# ---------------------------------------------------------------------------------------------
# Registering
# ---------------------------------------------------------------------------------------------
def register(root: Path, name: str, model_file: Path, example: np.ndarray,
             lineage: dict[str, Any]) -> str:
    """Log the deployable ONNX file on the active run, register it as a new version of `name`
    with its lineage as tags, and point `challenger` at it; returns the version."""
    from shrinkflow.serving import ServedModel

    model = ServedModel.from_onnx(model_file.read_bytes(), version="new", info={})
    labels, probabilities = model.predict(example)
    info = tracking.log_onnx_model(model_file, example,
                                   {"label": np.asarray(labels), "probabilities": probabilities},
                                   registered_model_name=name)
    version = str(info.registered_model_version)
    store = tracking.client(root)
    for key, value in lineage.items():
        store.set_model_version_tag(name, version, key, str(value))
    store.set_registered_model_alias(name, CHALLENGER, version)
    return version


# ---------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rows:
    """Raw feature rows and their labels in the data set's own names."""

    x: np.ndarray
    labels: np.ndarray

    @classmethod
    def of_split(cls, root: Path, split: str) -> Rows:
        catalog = Catalog.at(root)
        x, y = io.load_raw_rows(catalog, split)
        names = io.read_json(catalog.dataset_file(), produced_by="prepare")["spec"]["labels"]
        return cls(x, np.asarray(names)[y])


def accuracy_now(root: Path, name: str, version: str, rows: Rows) -> float:
    """A registered version's accuracy on `rows`, measured now with ONNX Runtime."""
    from shrinkflow.serving import ServedModel

    model = ServedModel.from_onnx(model_bytes(root, name, version), version=version, info={})
    labels, _ = model.predict(rows.x)
    return float(np.mean(np.asarray(labels) == rows.labels))


def integration_check(root: Path, name: str, version: str) -> gate.Check:
    """A fresh process loads the version through mlflow.pyfunc and predicts the raw test rows."""
    command = [sys.executable, "-m", "tasks.registry_check", "--root", str(root), "--name", name,
               "--version", version]
    try:
        done = subprocess.run(command, capture_output=True, text=True,  # nosec B603
                              timeout=INTEGRATION_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return gate.Check("integration", False, f"no answer within {INTEGRATION_TIMEOUT_S} s")
    lines = (done.stdout.strip() or done.stderr.strip() or "no output").splitlines()
    return gate.Check("integration", done.returncode == 0, lines[-1])


def checks(root: Path, name: str, version: str, cfg: DeployConfig) -> list[gate.Check]:
    """The gate's checks of `version` against the current champion (see the module docstring)."""
    tags = _version(root, name, version).tags
    validation = Rows.of_split(root, "val")
    champion = version_of(root, name, CHAMPION)
    champion_accuracy = (None if champion in (None, version)
                         else accuracy_now(root, name, champion, validation))
    return [gate.accuracy_check(accuracy_now(root, name, version, validation), champion_accuracy,
                                cfg.max_accuracy_drop_pp),
            gate.budget_check("size", float(tags["size_bytes"]), cfg.max_size_bytes, "bytes"),
            gate.budget_check("latency", float(tags["latency_ms_p50_b1"]), cfg.max_latency_ms, "ms"),
            integration_check(root, name, version)]


# ---------------------------------------------------------------------------------------------
# Moving the champion alias
# ---------------------------------------------------------------------------------------------
def _history(root: Path, name: str) -> list[str]:
    return json.loads(_require_model(root, name).tags.get(HISTORY_TAG, "[]"))


def _record_move(root: Path, experiment: str, name: str, version: str, how: str,
                 previous: str | None, found: Sequence[gate.Check] = ()) -> str:
    """An MLflow run of kind `promotion` saying what moved, and the same as tags on the version."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tags = {"shrinkflow.moved_at": now, "shrinkflow.moved_how": how,
            "shrinkflow.previous_champion": previous or "none",
            **({"shrinkflow.gate": json.dumps([check.to_dict() for check in found])} if found else {})}
    store = tracking.client(root)
    for key, value in tags.items():
        store.set_model_version_tag(name, version, key, value)
    run = store.create_run(tracking.experiment_id(root, experiment),
                           run_name=f"{how} {name} v{version}",
                           tags={tracking.PIPELINE_TAG: PROMOTION_KIND,
                                 tracking.PROJECT_TAG: str(root), **tags})
    for key, value in {"registered_model": name, "version": version, "how": how,
                       "previous_champion": previous or "none"}.items():
        store.log_param(run.info.run_id, key, value)
    for check in found:
        store.log_metric(run.info.run_id, f"gate.{check.name}", float(check.passed))
    store.set_terminated(run.info.run_id)
    return run.info.run_id


def promote(root: Path, experiment: str, name: str, version: str, how: str,
            found: Sequence[gate.Check] = ()) -> str | None:
    """Point `champion` at `version` (the checks, if any, have passed); returns the previous one."""
    _version(root, name, version)
    previous = version_of(root, name, CHAMPION)
    history = [v for v in _history(root, name) if v != version] + [version]
    store = tracking.client(root)
    store.set_registered_model_alias(name, CHAMPION, version)
    store.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    _record_move(root, experiment, name, version, how, previous, found)
    return previous


def rollback(root: Path, experiment: str, name: str) -> tuple[str, str]:
    """Give `champion` back to the previous champion; returns (demoted, restored) versions."""
    _require_model(root, name)
    current = version_of(root, name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name!r} has no champion to roll back")
    history = _history(root, name)
    while history and history[-1] == current:
        history.pop()
    if not history:
        raise RegistryError(f"{name!r} has had no champion before version {current}: nothing to "
                            "roll back to")
    restored = history[-1]
    store = tracking.client(root)
    store.set_registered_model_alias(name, CHAMPION, restored)
    store.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    _record_move(root, experiment, name, restored, "rollback", current)
    return current, restored


# ---------------------------------------------------------------------------------------------
# What the server reads
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistrySource:
    """The version an alias points to, for `shrinkflow.serving` (its ModelSource)."""

    root: Path
    name: str
    alias: str
    threads: int = 1

    def current_version(self) -> str | None:
        return version_of(self.root, self.name, self.alias)

    def load(self, version: str) -> Any:
        from shrinkflow.serving import ServedModel

        info = {**version_info(self.root, self.name, version), "alias": self.alias}
        return ServedModel.from_onnx(model_bytes(self.root, self.name, version), version=version,
                                     info=info, threads=self.threads)

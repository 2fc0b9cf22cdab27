"""The MLflow Model Registry: register a deployable model, gate its promotion, roll back, list.

One registered model per data set. A new version gets the alias `challenger`; it becomes
`champion` (what `shrinkflow serve` answers with) only through `promote`, after the gate's checks
(`shrinkflow.gate`): validation accuracy against the champion, both re-evaluated now on the
current validation rows, the size and latency budgets, and an integration check in a fresh process
(`tasks.services.registry_check`: `mlflow.pyfunc` loads the registered model and predicts the raw test rows,
which must give the test accuracy logged with it). A failed check moves nothing.

Every move is recorded twice: as tags on the version (when, how, the previous champion, the
checks) and as an MLflow run of kind `promotion` in the project's experiment. The registered
model's tag `shrinkflow.champion_history` lists the champions in order: `rollback` gives the alias
back to the one before the current champion, and again to the one before that.
"""

from __future__ import annotations

import json
import re
import subprocess  # nosec B404
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shrinkflow import gate
from shrinkflow.config import MODEL_NAME, DeployConfig, Params
from shrinkflow.deployable import LABEL, PROBABILITIES
from shrinkflow.errors import UserError
from tasks.services import io, tracking
from tasks.services.catalog import Catalog

CHALLENGER, CHAMPION = "challenger", "champion"
HISTORY_TAG = "shrinkflow.champion_history"  # on the registered model: JSON list of versions
ROLLED_BACK_TAG = "shrinkflow.rolled_back_at"  # on a version rolled back: the gate refuses it
PROMOTION_KIND = "promotion"  # tracking.PIPELINE_TAG of the runs recording a move
# version tags written at registration, read back by the gate, `models list` and the server
LINEAGE = ("candidate", "val_accuracy", "test_accuracy", "size_bytes", "latency_ms_p50_b1",
           "git_commit", "data_md5", "pipeline_run_id", "params_hash", "dataset", "model_md5")
INTEGRATION_TIMEOUT_S = 300


class RegistryError(UserError):
    """A registered model, version or alias the command needs does not exist."""


def model_name(params: Params, root: Path, given: str | None = None) -> str:
    """`given`, else params.yaml `deploy.registered_model`, else shrinkflow-<data set> (from
    prepare's output); checked to be a usable registered model name."""
    if not (name := given or params.deploy.registered_model):
        spec = io.read_json(Catalog.at(root).dataset_file(), produced_by="prepare")["spec"]
        name = f"shrinkflow-{re.sub(r'[^A-Za-z0-9_.-]', '_', spec['name'])}"
    if not re.fullmatch(MODEL_NAME, name):
        raise RegistryError(f"{name!r} is not a usable registered model name (letters, digits, "
                            "'_', '.', '-')")
    return name


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
    return _described(found, list(found.aliases))


def _described(found: Any, aliases: list[str]) -> dict[str, Any]:
    """A registry ModelVersion and its aliases as plain data."""
    return {"name": found.name, "version": str(found.version), "aliases": aliases,
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
    # a search fills in no aliases: the registered model holds them all
    aliases = _require_model(root, name).aliases  # {alias: version}
    versions = tracking.client(root).search_model_versions(f"name = '{name}'")
    return [_described(v, [a for a, at in aliases.items() if str(at) == str(v.version)])
            for v in sorted(versions, key=lambda v: -int(v.version))]


# ---------------------------------------------------------------------------------------------
# Registering
# ---------------------------------------------------------------------------------------------
def register(root: Path, name: str, model_file: Path, example: np.ndarray,
             lineage: dict[str, Any], threads: int = 1) -> str:
    """Log the deployable ONNX file on the active run, register it as a new version of `name`
    with its lineage as tags, and point `challenger` at it; returns the version. `example`: a
    few raw rows (`Rows.x`), the signature's input example. `threads`: ONNX Runtime intra-op
    threads of the sessions `mlflow.pyfunc` opens for it."""
    from serving.model import ServedModel

    model = ServedModel.from_onnx(model_file.read_bytes(), version="new", info={})
    labels, probabilities = model.predict(example)
    # the graph's own inputs: one tensor per column of a table with text, so the signature
    # says which columns are strings and mlflow.pyfunc feeds each column as its own array
    inputs = model.feed(example)
    info = tracking.log_onnx_model(model_file, inputs if model.per_column else example,
                                   {LABEL: np.asarray(labels), PROBABILITIES: probabilities},
                                   registered_model_name=name, threads=threads)
    version = str(info.registered_model_version)
    store = tracking.client(root)
    for key, value in lineage.items():
        store.set_model_version_tag(name, version, key, str(value))
    mark_challenger(root, name, version)
    return version


# ---------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rows:
    """A split's inputs as the raw data has them, and their labels in the data set's own names."""

    # what a user's client sends: a table's feature columns, text and gaps included, or
    # an image folder's images, uint8 N x H x W x C
    inputs: pd.DataFrame | np.ndarray
    labels: np.ndarray

    @classmethod
    def of_split(cls, root: Path, split: str) -> Rows:
        catalog = Catalog.at(root)
        inputs, y = io.load_raw_rows(catalog, split)
        names = io.read_json(catalog.dataset_file(), produced_by="prepare")["spec"]["labels"]
        return cls(inputs, np.asarray(names)[y])

    @property
    def x(self) -> np.ndarray:
        """The inputs as `ServedModel.predict` takes them: the images, float32 rows, or, when a
        column holds text, objects (strings and numbers, None where a value is missing)."""
        if isinstance(self.inputs, np.ndarray):
            return self.inputs
        if all(pd.api.types.is_numeric_dtype(dtype) for dtype in self.inputs.dtypes):
            return self.inputs.to_numpy(np.float32)
        return self.inputs.astype(object).where(self.inputs.notna(), None).to_numpy()

    def accuracy(self, predicted: Sequence[str] | np.ndarray) -> float:
        return float(np.mean(np.asarray(predicted) == self.labels))


def _tag(tags: dict[str, str], key: str, name: str, version: str) -> str:
    if key not in tags:
        raise RegistryError(f"version {version} of {name!r} has no tag {key!r}: it was not "
                            "registered by the deploy stage")
    return tags[key]


def _accuracy_check(root: Path, name: str, version: str, champion: str | None,
                    cfg: DeployConfig) -> gate.Check:
    """Both versions re-evaluated now on the current validation rows."""
    from serving.model import ServedModel

    if champion == version:
        return gate.Check("accuracy", True, f"version {version} is the champion")
    validation = Rows.of_split(root, "val")
    measured = {}
    for which in filter(None, (version, champion)):
        try:
            model = ServedModel.from_onnx(model_bytes(root, name, which), version=which, info={})
            measured[which] = validation.accuracy(model.predict(validation.x)[0])
        except Exception as error:  # a missing artifact, or rows the model no longer fits
            return gate.Check("accuracy", False, f"version {which} could not be evaluated on the "
                              f"current validation rows: {str(error).splitlines()[0]}")
    return gate.accuracy_check(measured[version], measured.get(champion), cfg.max_accuracy_drop_pp)


def integration_check(root: Path, name: str, version: str) -> gate.Check:
    """A fresh process loads the version through mlflow.pyfunc and predicts the raw test rows."""
    # this interpreter and this project's module, no shell; the model named as a user's client
    # names it: by alias when the version is the challenger
    alias = CHALLENGER if version_of(root, name, CHALLENGER) == version else None
    command = [sys.executable, "-m", "tasks.services.registry_check", "--root", str(root), "--name", name,
               "--version", version, *(["--alias", alias] if alias else [])]
    try:
        done = subprocess.run(command, capture_output=True, text=True,  # nosec B603
                              timeout=INTEGRATION_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return gate.Check("integration", False, f"no answer within {INTEGRATION_TIMEOUT_S} s")
    lines = (done.stdout.strip() or done.stderr.strip() or "no output").splitlines()
    return gate.Check("integration", done.returncode == 0, lines[-1])


def checks(root: Path, name: str, version: str, champion: str | None,
           cfg: DeployConfig) -> list[gate.Check]:
    """The gate's checks of `version` against `champion` (see the module docstring)."""
    tags = _version(root, name, version).tags
    rolled_back = tags.get(ROLLED_BACK_TAG)
    return [_accuracy_check(root, name, version, champion, cfg),
            gate.budget_check("size", float(_tag(tags, "size_bytes", name, version)),
                              cfg.max_size_bytes, "bytes"),
            gate.budget_check("latency", float(_tag(tags, "latency_ms_p50_b1", name, version)),
                              cfg.max_latency_ms, "ms"),
            gate.Check("rollback", rolled_back is None,
                       f"rolled back at {rolled_back}" if rolled_back else "never rolled back"),
            integration_check(root, name, version)]


@dataclass(frozen=True)
class Promotion:
    """What the gate found and whether the champion moved."""

    checks: list[gate.Check]
    promoted: bool
    champion: str | None  # the champion afterwards


def gated_promote(root: Path, experiment: str, name: str, version: str, cfg: DeployConfig,
                  how: str, force: bool = False) -> Promotion:
    """Run the gate on `version` against the current champion; promote it when every check
    passes (or `force`). The champion must not move while the checks run (hold the project
    lock): if it moved to another version, nothing is promoted; if another run promoted this
    very one, it is the champion as asked."""
    champion = version_of(root, name, CHAMPION)
    found = checks(root, name, version, champion, cfg)
    if gate.failed(found) and not force:
        return Promotion(found, False, champion)
    now = version_of(root, name, CHAMPION)
    if now == version:  # another run (sharing the registry) promoted this very version meanwhile
        return Promotion(found, False, now)
    if now != champion:
        raise RegistryError(f"the champion of {name!r} moved to version {now} while version "
                            f"{version} was checked against version {champion}: nothing "
                            "promoted; run the promotion again")
    promote(root, experiment, name, version, f"{how}-forced" if gate.failed(found) else how, found)
    return Promotion(found, True, version)


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


def _move_champion(root: Path, experiment: str, name: str, version: str, how: str,
                   history: list[str], previous: str | None,
                   found: Sequence[gate.Check] = ()) -> None:
    """Record the move (version tags, history, an MLflow run), then move the alias: a step that
    fails before the last leaves the champion where it was."""
    _record_move(root, experiment, name, version, how, previous, found)
    store = tracking.client(root)
    store.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    store.set_registered_model_alias(name, CHAMPION, version)


def promote(root: Path, experiment: str, name: str, version: str, how: str,
            found: Sequence[gate.Check] = ()) -> str | None:
    """Point `champion` at `version` (clearing a rollback mark); returns the previous champion."""
    tags = _version(root, name, version).tags
    previous = version_of(root, name, CHAMPION)
    history = [v for v in _history(root, name) if v != version] + [version]
    _move_champion(root, experiment, name, version, how, history, previous, found)
    if ROLLED_BACK_TAG in tags:
        tracking.client(root).delete_model_version_tag(name, version, ROLLED_BACK_TAG)
    return previous


def rollback(root: Path, experiment: str, name: str) -> tuple[str, str]:
    """Give `champion` back to the previous champion; returns (demoted, restored) versions. The
    demoted version is tagged rolled back: the gate refuses it until promoted by hand."""
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
    tracking.client(root).set_model_version_tag(name, current, ROLLED_BACK_TAG,
                                                time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _move_champion(root, experiment, name, restored, "rollback", history, current)
    return current, restored


def mark_challenger(root: Path, name: str, version: str) -> None:
    tracking.client(root).set_registered_model_alias(name, CHALLENGER, version)


# ---------------------------------------------------------------------------------------------
# What the server reads
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegistrySource:
    """The version an alias points to, for the server in `serving/` (its ModelSource)."""

    root: Path
    name: str
    alias: str
    threads: int = 1

    def current_version(self) -> str | None:
        return version_of(self.root, self.name, self.alias)

    def load(self, version: str) -> Any:
        from serving.model import ServedModel

        info = {**version_info(self.root, self.name, version), "alias": self.alias}
        return ServedModel.from_onnx(model_bytes(self.root, self.name, version), version=version,
                                     info=info, threads=self.threads)

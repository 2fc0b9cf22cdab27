"""Where studies live and how their trials run and are tracked: shared by `search` and `recipes`.

A study's database: SHRINKFLOW_SEARCH_STORAGE (shared services), else `search.storage`, else
optuna.db in the project; `storage` opens it for Optuna through SQLAlchemy (the core's
`shrinkflow.search.study` takes the opened storage, never a URL). Trials run in the stage's
process, or on Dask workers through prefect-dask (`search.workers` > 1, or a scheduler in
DASK_SCHEDULER_ADDRESS). Each trial is logged as a nested MLflow run.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shrinkflow.config import Params, SearchConfig
from shrinkflow.errors import UserError
from tasks.services import io, tracking
from tasks.services.catalog import Catalog

if TYPE_CHECKING:
    import optuna

STORAGE_VARIABLE = "SHRINKFLOW_SEARCH_STORAGE"
SCHEDULER_VARIABLE = "DASK_SCHEDULER_ADDRESS"


def storage_url(cfg: SearchConfig, catalog: Catalog) -> str:
    """Where the study lives: the environment wins (shared services), then params, then a SQLite
    file in the project."""
    return os.environ.get(STORAGE_VARIABLE) or cfg.storage or f"sqlite:///{catalog.search_db}"


class StorageError(UserError, RuntimeError):
    """The study database cannot be opened (a malformed URL, no server, no driver)."""


def shown_url(url: str) -> str:
    """A storage URL without its password (for logs, tags and messages)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<not a database URL>"


def with_driver(url: str) -> str:
    """`postgresql://...` on the installed driver, psycopg 3 (SQLAlchemy 2.0 would look for
    psycopg2); other URLs as they are."""
    return "postgresql+psycopg://" + url[len("postgresql://"):] \
        if url.startswith("postgresql://") else url


def storage(url: str, heartbeat_s: int) -> optuna.storages.RDBStorage:
    """The study database, with heartbeats and a retry of trials whose process died."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    engine: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # several worker processes write one SQLite file: wait for the lock instead of failing
        engine["connect_args"] = {"timeout": 60}
        # pysqlite's own BEGIN is deferred and skipped before a SELECT: leave transactions to
        # the listener below (SQLAlchemy's documented recipe for serializable SQLite)
        engine["connect_args"]["isolation_level"] = None
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            opened = optuna.storages.RDBStorage(
                with_driver(url), engine_kwargs=engine, heartbeat_interval=heartbeat_s,
                grace_period=3 * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=1))
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        raise StorageError(f"cannot open the search storage {shown_url(url)} (set by "
                           f"SHRINKFLOW_SEARCH_STORAGE or search.storage): {reason}") from None
    if url.startswith("sqlite"):
        _begin_immediately(opened.engine)
    return opened


def _begin_immediately(engine: Any) -> None:
    """Every transaction on `engine` takes SQLite's write lock as it begins, so a read and the
    write that depends on it (a queued trial seen waiting, then started) are one atomic step
    across processes."""
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def parallel(cfg: SearchConfig) -> bool:
    """Do the trials run on Dask workers (several asked for, or a scheduler named)?"""
    return cfg.workers > 1 or bool(os.environ.get(SCHEDULER_VARIABLE))


def worker_env() -> dict[str, str]:
    """What local workers inherit: this process's Prefect API (without it each worker process
    would start a temporary Prefect server of its own, ~10 s each)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {"PREFECT_API_URL": str(client.api_url)}


def _reseeded(params: Params, offset: int) -> Params:
    search = params.search.model_copy(update={"seed": params.search.seed + offset})
    return params.model_copy(update={"search": search})


def run_on_dask(trials: Callable[[Path, Params, str, str, int], None], root: Path,
                params: Params, url: str, name: str) -> None:
    """`search.workers` copies of `trials(root, params, url, name, threads)` in parallel on Dask
    (`threads`: `search.threads_per_worker` torch threads each), through
    prefect-dask: a local cluster of single-threaded worker processes, or the scheduler
    DASK_SCHEDULER_ADDRESS names. Each opens the study itself and runs trials until the shared
    budget is reached. Worker k samples with seed `search.seed + k`: with one seed every worker
    would propose the same values at the same time and train each trial twice."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect_dask import DaskTaskRunner

    address = os.environ.get(SCHEDULER_VARIABLE)
    workers = params.search.workers
    runner = (DaskTaskRunner(address=address) if address else DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                        "dashboard_address": None, "env": worker_env()}))
    worker = task(trials, name="search-trials", cache_policy=NO_CACHE, persist_result=False)

    @flow(name="shrinkflow-search", task_runner=runner, persist_result=False)
    def search_workers() -> None:
        futures = [worker.submit(root, _reseeded(params, k), url, name,
                                 params.search.threads_per_worker) for k in range(workers)]
        for future in futures:
            future.result()

    search_workers()


def log_trial(trial: Any, objectives: Sequence[str]) -> None:
    """A trial on the active (nested) MLflow run: its values as params, its objectives, numeric
    attributes and per-epoch validation accuracy as metrics, its state as a tag."""
    import mlflow
    from mlflow.entities import Metric

    tracking.set_tags({"state": trial.state.name})
    mlflow.log_params({key: str(value) for key, value in trial.params.items()})
    stamp = int(time.time() * 1000)
    curve = [Metric("epoch_val_accuracy", value, stamp, int(step))
             for step, value in sorted(trial.intermediate_values.items())]
    values = dict(zip(objectives, trial.values or (), strict=False))
    attributes = {key: float(value) for key, value in trial.user_attrs.items()
                  if isinstance(value, int | float) and not isinstance(value, bool)}
    mlflow.MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=curve)
    mlflow.log_metrics({**attributes, **values})


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.4g}"
    return str(value)


def trials_table(opened: Any, columns: Sequence[str],
                 note: Callable[[Any], str] = lambda trial: "") -> list[str]:
    """A markdown table of every trial: number (and `note(trial)`), state, the `columns`
    (objectives first, by name; then user attributes such as epochs), then its values."""
    trials = opened.get_trials(deepcopy=False)
    keys = sorted({key for trial in trials for key in trial.params})
    names = list(columns)
    lines = ["| trial | state | " + " | ".join([*names, *keys]) + " |",
             "|" + "---|" * (2 + len(names) + len(keys))]
    for trial in trials:
        values = dict(zip(names, trial.values or (), strict=False))
        cells = [_shown(values.get(name, trial.user_attrs.get(name, "-"))) for name in names]
        lines.append(f"| {trial.number}{note(trial)} | {trial.state.name.lower()} | " + " | ".join(
            [*cells, *(_shown(trial.params.get(key, "")) for key in keys)]) + " |")
    return lines


def write_report(folder: Path, markdown: str, opened: Any, objectives: Sequence[str],
                 json_files: dict[str, Any] | None = None) -> None:
    """A study's report folder, swapped in whole: summary.md, the `json_files` (name: content)
    and (with a study) Optuna's plots; logged on the active stage run."""
    with io.atomic_dir(folder) as staging:
        io.write_text(staging / "summary.md", markdown)
        for name, content in (json_files or {}).items():
            io.write_json(staging / name, content)
        if opened is not None:
            from shrinkflow.search import plots

            plots.draw(opened, tuple(objectives), staging)
    tracking.log_artifact(folder, "report")

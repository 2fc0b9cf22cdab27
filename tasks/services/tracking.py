"""MLflow: the one tracking service of the pipeline.

One parent run per pipeline run and one nested run per stage. Run ids are passed explicitly
(MLflow's active run is thread-local and Prefect runs tasks in worker threads). The store is
`sqlite:///mlflow.db` in the project root unless MLFLOW_TRACKING_URI selects another (a server with
a SQL backend and S3 artifacts needs no code change).

Every run of a pipeline run (the parent, its stage runs, their candidates and trials) carries the
parent's id in the tag `shrinkflow.pipeline_run`, and every stage run and its nested runs the
stage run's id in `shrinkflow.stage_run`: the link a person opens is one short filter on a tag.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np

from shrinkflow.config import Params, flatten

PIPELINE_TAG = "shrinkflow.kind"
# the checkout a run belongs to: runs of several checkouts may share one store
PROJECT_TAG = "shrinkflow.project"
# the md5 of the model file a run made: how compare finds the run to log a file's timings on
MODEL_FILE_TAG = "shrinkflow.model_md5"
# the pipeline runs a run is part of, space-separated: the one that made it, then the cached
# pipeline runs that reused it (a stage run outside a pipeline: itself)
PIPELINE_RUN_TAG = "shrinkflow.pipeline_run"
# the stage run a run belongs to: a stage run's own id, its candidates' and trials' stage run
STAGE_RUN_TAG = "shrinkflow.stage_run"
MAX_TAG_VALUE = 8000  # MLflow's limit on a tag's value (mlflow.utils.validation)
# when the candidate run that is open in this thread (or task) began: its candidate's cost
_CANDIDATE_STARTED: ContextVar[float | None] = ContextVar("candidate_started", default=None)


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri(root))


def experiment_id(root: Path, name: str) -> str:
    """The experiment's id, created on first use; a local store keeps artifacts in mlartifacts/."""
    import mlflow

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    store = client(root)
    experiment = store.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # without an explicit location a SQLite store writes artifacts to ./mlruns of whatever
    # folder the process runs in; a server decides for itself
    location = None if uri.startswith("http") else (root / "mlartifacts").as_uri()
    return store.create_experiment(name, artifact_location=location)


def git_commit(root: Path) -> str | None:
    try:
        # the user's own git, from PATH
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root,  # nosec B607
                                capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _base_tags(root: Path, kind: str) -> dict[str, str]:
    tags = {PIPELINE_TAG: kind, PROJECT_TAG: str(root)}
    commit = git_commit(root)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _log_params(run_id: str, root: Path, flat: dict[str, Any]) -> None:
    from mlflow.entities import Param

    params = [Param(key, str(value)) for key, value in flat.items()]
    for start in range(0, len(params), 100):  # MLflow accepts at most 100 params per batch
        client(root).log_batch(run_id, params=params[start : start + 100])


# ---------------------------------------------------------------------------------------------
# Parent run (one per pipeline run)
# ---------------------------------------------------------------------------------------------
def start_pipeline_run(params: Params, root: Path, params_file: Path | None = None,
                       started_by: Any = None) -> str:
    """Open the parent run, log all of params.yaml (flattened) and return its id; `started_by`
    (a `tasks.services.triggers.Trigger`) names what started it, in the run's name and tags."""
    tags = {**_base_tags(root, "pipeline"), **(started_by.tags if started_by else {})}
    name = f"pipeline ({started_by.label})" if started_by else "pipeline"
    run = client(root).create_run(experiment_id(root, params.project.experiment),
                                   run_name=name, tags=tags)
    client(root).set_tag(run.info.run_id, PIPELINE_RUN_TAG, run.info.run_id)
    _log_params(run.info.run_id, root, flatten(params))
    if params_file is not None and params_file.is_file():
        client(root).log_artifact(run.info.run_id, str(params_file))
    return run.info.run_id


def finish_pipeline_run(root: Path, run_id: str, metrics: dict[str, float], tags: dict[str, str],
                        failed: bool = False) -> None:
    from mlflow.entities import Metric, RunTag

    store = client(root)
    now = int(1000 * time.time())
    store.log_batch(
        run_id,
        metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()],
        tags=[RunTag(key, str(value)) for key, value in tags.items()],
    )
    store.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def log_metrics_to(root: Path, run_id: str, metrics: dict[str, float]) -> None:
    """Metrics onto a run that is not the active one (e.g. a candidate's, from compare); a run
    the store no longer has (deleted, or made on another store) is skipped with a warning."""
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    now = int(1000 * time.time())
    try:
        client(root).log_batch(run_id, metrics=[Metric(key, float(value), now, 0)
                                                 for key, value in metrics.items()])
    except MlflowException as error:
        logging.getLogger("shrinkflow.tracking").warning("run %s not updated: %s", run_id,
                                                         error.message)


def log_artifact_to(root: Path, run_id: str, path: Path, artifact_path: str | None = None) -> None:
    store = client(root)
    if path.is_dir():
        store.log_artifacts(run_id, str(path), artifact_path)
    elif path.is_file():
        store.log_artifact(run_id, str(path), artifact_path)


def run_link(root: Path, run_id: str) -> str:
    """Where a person opens the run: the server's page, or the local UI started by `make ui`.

    A pipeline run opens the experiment's runs table filtered on its tag, which its stage runs
    and everything nested in them carry (and the runs of earlier pipeline runs that a cached
    run reused: `PipelineRun.record` tags them); a stage run with candidates or trials opens the
    table filtered on its own tag; both as one flat list by name, where candidates are selected
    and compared. A run without nested runs opens its own page. (MLflow 3.17 opens an
    experiment's own link on a GenAI overview of traces and tokens.)"""
    store = client(root)
    run = store.get_run(run_id)
    uri = tracking_uri(root)
    base = uri if uri.startswith("http") else "http://127.0.0.1:5000"
    experiment = run.info.experiment_id
    if run.data.tags.get(PIPELINE_TAG) == "pipeline":
        # a LIKE, not `=`: a reused run lists several pipeline runs, and MLflow searches a tag
        # neither against a list (IN) nor with OR; ids are 32 hex digits, so one never matches
        # across the space between two others
        search = f"tags.`{PIPELINE_RUN_TAG}` LIKE '%{run_id}%'"
    elif store.search_runs([experiment], f"tags.mlflow.parentRunId = '{run_id}'", max_results=1):
        search = f"tags.`{STAGE_RUN_TAG}` = '{run_id}'"
    else:
        return f"{base}/#/experiments/{experiment}/runs/{run_id}"
    query = urlencode({
        "workflowType": "machine_learning",  # the training runs table, not the GenAI tabs
        "searchFilter": search,
        # any order but the default (by start time) lists nested runs as rows of their own,
        # instead of folding them under their parent's collapsed row
        "orderByKey": "tags.`mlflow.runName`", "orderByAsc": "true"}, quote_via=quote)
    return f"{base}/#/experiments/{experiment}/runs?{query}"


def _nested_runs(store, run) -> list:
    """The runs nested under `run` at any depth, parents before children. One search (MLflow
    cannot search a parent against a list): they all started in its experiment while it ran."""
    during = f"attributes.start_time >= {run.info.start_time}"
    if run.info.end_time:
        during += f" and attributes.start_time <= {run.info.end_time}"
    children: dict[str, list] = {}
    token = None
    while True:
        page = store.search_runs([run.info.experiment_id], filter_string=during,
                                 max_results=1000, page_token=token)
        for later in page:
            parent = later.data.tags.get("mlflow.parentRunId")
            if parent:
                children.setdefault(parent, []).append(later)
        token = page.token
        if not token:
            break
    nested, level = [], [run]
    while level:
        level = [child for parent in level for child in children.get(parent.info.run_id, [])]
        nested += level
    return nested


def _with_pipeline_run(listed: str, run_id: str) -> str:
    """`listed` (a PIPELINE_RUN_TAG value) with `run_id` added. Past MLflow's limit on a tag's
    value (some 240 reuses of one run) the oldest reusers give way: the maker stays first."""
    ids = listed.split()
    if run_id in ids:
        return listed
    ids.append(run_id)
    while len(" ".join(ids)) > MAX_TAG_VALUE and len(ids) > 2:
        del ids[1]
    return " ".join(ids)


def adopt_stage_run(root: Path, pipeline_run_id: str, stage_run_id: str) -> None:
    """Make a stage run of an earlier pipeline run, and the runs nested in it, part of pipeline
    run `pipeline_run_id` too (a cached stage reused it), so that run's link lists them; a run
    the store no longer has (deleted, or made on another store) is skipped with a warning."""
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    store = client(root)
    try:
        stage = store.get_run(stage_run_id)
        if pipeline_run_id in stage.data.tags.get(PIPELINE_RUN_TAG, "").split():
            return
        for run in [stage, *_nested_runs(store, stage)]:
            tags = {PIPELINE_RUN_TAG: _with_pipeline_run(
                run.data.tags.get(PIPELINE_RUN_TAG, ""), pipeline_run_id)}
            if STAGE_RUN_TAG not in run.data.tags:  # a run made before stage runs were tagged
                tags[STAGE_RUN_TAG] = stage_run_id
            store.log_batch(run.info.run_id,
                            tags=[RunTag(key, value) for key, value in tags.items()])
    except MlflowException as error:
        logging.getLogger("shrinkflow.tracking").warning(
            "stage run %s not tagged as part of pipeline run %s: %s", stage_run_id,
            pipeline_run_id, error.message)


class PipelineRun:
    """The open parent run: collects what the stages report and logs it when the run closes."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.root, self.run_id = root, run_id
        self.metrics: dict[str, float] = {}
        self.tags: dict[str, str] = {}

    def record(self, summary: dict[str, Any]) -> None:
        """Copy a stage's metrics (prefixed by stage) and its run id onto the parent run; a stage
        run an earlier pipeline run made (the stage came from the cache) joins this one."""
        adopt_stage_run(self.root, self.run_id, summary["run_id"])
        stage = summary["stage"]
        self.metrics.update({f"{stage}.{key}": value for key, value in summary["metrics"].items()})
        self.tags[f"{stage}.run_id"] = summary["run_id"]
        self.tags["dataset"] = summary["dataset"]


@contextmanager
def pipeline_run(params: Params, root: Path, params_file: Path | None = None,
                 started_by: Any = None) -> Iterator[PipelineRun]:
    """Open the parent run; close it as FINISHED, or FAILED if the block raises."""
    run = PipelineRun(root, start_pipeline_run(params, root, params_file, started_by))
    try:
        yield run
    except BaseException:
        finish_pipeline_run(root, run.run_id, run.metrics, run.tags, failed=True)
        raise
    finish_pipeline_run(root, run.run_id, run.metrics, run.tags)


# ---------------------------------------------------------------------------------------------
# Stage runs (nested under the parent)
# ---------------------------------------------------------------------------------------------
@contextmanager
def stage_run(stage: str, params: Params, root: Path, parent_run_id: str | None = None,
              section: Any = None) -> Iterator[Any]:
    """A run for one stage, nested under `parent_run_id` (the pipeline run) when given; logs the
    stage's section. Outside a pipeline run, the stage run is its own pipeline run (its tag)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(root))
    tags = {**_base_tags(root, "stage"), **({PIPELINE_RUN_TAG: parent_run_id} if parent_run_id else {})}
    with mlflow.start_run(experiment_id=experiment_id(root, params.project.experiment),
                          run_name=stage, nested=True, parent_run_id=parent_run_id,
                          tags=tags) as run:
        # its own id is known once it exists; candidate_run inherits what start_run was given
        mlflow.set_tags({STAGE_RUN_TAG: run.info.run_id,
                         **({} if parent_run_id else {PIPELINE_RUN_TAG: run.info.run_id})})
        if section is not None:
            log_section(stage, section)
        yield run


def log_section(stage: str, section: Any) -> None:
    """A params section on the active run, as `<stage>.<key>` params."""
    import mlflow

    mlflow.log_params({key: str(v) for key, v in flatten(section, f"{stage}.").items()})


def log_budget(result: Any) -> None:
    """The training budget a fit took from its rows (`TrainConfig.for_rows`: auto batch size,
    epochs scaled to the table), as params of the active run."""
    import mlflow

    mlflow.log_params({"train.epochs_budget": result.epochs, "train.batch_size_used": result.batch_size})


def log_epoch(epoch: Any) -> None:
    """fit's on_epoch_end: one point per epoch on the active run's curves (`epoch_val_accuracy`:
    `val_accuracy` is the finished model's)."""
    import mlflow

    mlflow.log_metrics({"train_loss": epoch.train_loss, "val_loss": epoch.val_loss,
                        "epoch_val_accuracy": epoch.val_accuracy, "lr": epoch.lr},
                       step=epoch.epoch)


@contextmanager
def candidate_run(name: str, tags: dict[str, Any] | None = None,
                  made_by: dict[str, Any] | None = None) -> Iterator[Any]:
    """A run for one candidate, nested under the active stage run (same thread), in the same
    experiment, checkout, pipeline run and stage run as that run. `made_by` (method, ratio,
    precision, temperature, ...; None values left out) becomes its params: what MLflow's compare
    view plots against."""
    import mlflow

    stage = mlflow.active_run()
    known = stage.data.tags  # as it was started: a stage run's own id, set later, may be missing
    inherited = {PIPELINE_TAG: "candidate", PROJECT_TAG: known.get(PROJECT_TAG, ""),
                 PIPELINE_RUN_TAG: known.get(PIPELINE_RUN_TAG) or stage.info.run_id,
                 STAGE_RUN_TAG: known.get(STAGE_RUN_TAG) or stage.info.run_id}
    # a tracking server takes strings only (a SQLite store converts on its own)
    tagged = {key: str(value) for key, value in {**inherited, **(tags or {})}.items()}
    started = _CANDIDATE_STARTED.set(time.perf_counter())
    try:
        with mlflow.start_run(run_name=name, nested=True, experiment_id=stage.info.experiment_id,
                              tags=tagged) as run:
            mlflow.log_params({key: str(value) for key, value in (made_by or {}).items()
                               if value is not None})
            yield run
    finally:
        _CANDIDATE_STARTED.reset(started)


def candidate_seconds() -> float:
    """Wall seconds since the innermost `candidate_run` began: what making its candidate cost
    (0.0 outside one)."""
    started = _CANDIDATE_STARTED.get()
    return 0.0 if started is None else time.perf_counter() - started


def tag_model_file(path: Path) -> None:
    """Mark the active run as the one that made the model file at `path` (by its md5)."""
    import mlflow

    from tasks.services.catalog import file_md5

    mlflow.set_tag(MODEL_FILE_TAG, file_md5(path))


def run_that_made(root: Path, experiment_id: str, path: Path) -> str | None:
    """The latest run of this checkout that made a file with `path`'s bytes (None if none did)."""
    from tasks.services.catalog import file_md5

    found = client(root).search_runs(
        [experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
        filter_string=f"tags.`{MODEL_FILE_TAG}` = '{file_md5(path)}' "
                      f"and tags.`{PROJECT_TAG}` = '{root}'")
    return found[0].info.run_id if found else None


def fail_orphaned_runs(root: Path, experiment: str) -> list[str]:
    """Mark FAILED the runs of this checkout still RUNNING: their process was killed (call it
    holding the project lock, so no live run of this checkout exists). Returns their ids."""
    store = client(root)
    found = store.get_experiment_by_name(experiment)
    if found is None:
        return []
    orphans = store.search_runs(
        [found.experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{PROJECT_TAG}` = '{root}'")
    for run in orphans:
        store.set_tag(run.info.run_id, "shrinkflow.ended", "its process died before the run "
                       "ended; marked failed by the next run of this checkout")
        store.set_terminated(run.info.run_id, status="FAILED")
    return [run.info.run_id for run in orphans]


def log_metrics(metrics: dict[str, float]) -> None:
    import mlflow

    mlflow.log_metrics(metrics)


def set_tags(tags: dict[str, Any]) -> None:
    import mlflow

    mlflow.set_tags({key: str(value) for key, value in tags.items()})


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    import mlflow

    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path)
    elif path.is_file():
        mlflow.log_artifact(str(path), artifact_path)


def log_dataset(x: np.ndarray, y: np.ndarray, name: str, source: Path, digest: str,
                context: str) -> None:
    """Record a split as a run input; its digest is the DVC md5 of the raw table."""
    import mlflow

    with warnings.catch_warnings():  # a local path matches two equivalent source types
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_numpy(x, targets=y, source=str(source), name=name,
                                         digest=digest[:36])
    mlflow.log_input(dataset, context=context)


def log_onnx_model(path: Path, input_example: Any, output_example: Any,
                   registered_model_name: str | None = None, threads: int | None = None) -> Any:
    """Log the ONNX file at `path` as an MLflow model with signature and input
    example (no pickle), registering it under `registered_model_name` when given; `threads`
    fixes the ONNX Runtime sessions MLflow opens for it (as `shrinkflow serve` opens its own).
    Returns MLflow's ModelInfo."""
    import mlflow
    import onnx
    import onnxruntime
    from mlflow.models import infer_signature
    from mlflow.types import Schema, TensorSpec

    signature = infer_signature(input_example, output_example)
    if getattr(input_example, "ndim", 0) == 4:  # images: the graph resizes any height and width
        signature.inputs = Schema([TensorSpec(input_example.dtype,
                                              (-1, -1, -1, input_example.shape[3]))])
    return mlflow.onnx.log_model(
        onnx.load(str(path)),
        name="model",
        signature=signature,
        input_example=input_example,
        registered_model_name=registered_model_name,
        # explicit requirements: skips MLflow's slow environment inference
        pip_requirements=[f"onnxruntime=={onnxruntime.__version__}",
                          f"onnx=={onnx.__version__}", f"mlflow=={mlflow.__version__}"],
        save_as_external_data=False,
        onnx_execution_providers=["CPUExecutionProvider"],
        onnx_session_options=None if threads is None else {
            "intra_op_num_threads": threads, "inter_op_num_threads": 1,
            "execution_mode": "sequential"},
    )

"""The shrinkflow pipeline as a Prefect flow: the stages of `tasks.services.dag`, each started as soon as the
stages whose outputs it reads are done, so independent branches run at once where there are the
cores for it (prune, distill and recipes after baseline; quantize and ensemble beside recipes).

Wiring only: which task starts when, where it runs and which MLflow run id each one gets. The
stages and what they read and write are declared in `tasks.services.dag`, the maths is in `shrinkflow/`,
the I/O, tracking and caching in `tasks/`.
"""

from __future__ import annotations

import logging
import os
import pickle  # nosec B403 - only to test that a logging filter can reach a worker
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.states import State
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner

from shrinkflow.config import Params, load_params
from shrinkflow.errors import UserError
from tasks.services import dag, runner, stage_tasks, summary, tracking, triggers, versions
from tasks.services.dag import STAGES
from tasks.services.environment import STAGES_AT_ONCE_VARIABLE
from tasks.services.lock import project_lock

# the loggers of a stage's console output: ours, and Prefect's (a task run's state, its error)
CONSOLE_LOGGERS = ("shrinkflow", "prefect")


def _cores() -> int:
    """The cores the run may use: OMP_NUM_THREADS where it is set (torch reads it too: one per
    test worker), else the machine's."""
    threads = os.environ.get("OMP_NUM_THREADS", "").split(",")[0]
    return int(threads) if threads.isdigit() and int(threads) > 0 else os.cpu_count() or 1


def at_once(cores: int | None = None) -> int:
    """The most stages running at the same time: as many as may (`tasks.services.dag.width`), with two
    cores each at least. On two cores, two stages with a thread each were no faster than one at
    a time with two (tiny params, measured), and a stage's process costs its start-up.
    SHRINKFLOW_STAGES_AT_ONCE sets it for this machine's cores (`cores` not given)."""
    chosen = os.environ.get(STAGES_AT_ONCE_VARIABLE, "").strip()
    if cores is None and chosen:
        if not chosen.isdigit() or int(chosen) < 1:
            raise UserError(f"{STAGES_AT_ONCE_VARIABLE}={chosen!r}: expected a whole number of "
                            "stages, 1 or more")
        return min(dag.width(), int(chosen))
    return max(1, min(dag.width(), (cores or _cores()) // 2))


def stage_threads(name: str, cores: int | None = None) -> int | None:
    """torch threads for stage `name`: the cores shared among the most stages that can run
    beside it (itself included), so stages running at once never ask for more than all cores;
    None (as they are) when stages run one at a time."""
    cores = cores or _cores()
    if at_once(cores) == 1:
        return None
    return max(1, cores // min(dag.width(name), at_once(cores)))


def _console() -> dict[str, tuple[int, list[logging.Filter]]]:
    """The level and filters this process gave each logger of `CONSOLE_LOGGERS` (`shrinkflow
    run`: ours at INFO, no traceback for a user error), those a worker process can receive."""
    def sendable(item: Any) -> bool:
        try:
            pickle.dumps(item)
        except (pickle.PicklingError, AttributeError, TypeError):
            return False
        return True

    loggers = [logger for name, logger in list(logging.root.manager.loggerDict.items())
               if name.split(".")[0] in CONSOLE_LOGGERS and isinstance(logger, logging.Logger)]
    return {logger.name: (logger.level, [item for item in logger.filters if sendable(item)])
            for logger in loggers if logger.level != logging.NOTSET or logger.filters}


def _log_as(console: dict[str, tuple[int, list[logging.Filter]]]) -> None:
    """In a worker process (Prefect has set its logging up): log as the flow's process does."""
    for name, (level, filters) in console.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for item in filters:
            logger.addFilter(item)


def _warm() -> int:
    """What a stage's process imports before its first line runs (this module, hence Prefect and
    the project's services; torch), done ahead of it."""
    import torch  # noqa: F401

    return os.getpid()


class _WarmProcessPool(ProcessPoolTaskRunner):
    """Prefect's process pool with all its workers started as soon as it opens. A worker starts
    in seconds (a new interpreter importing Prefect and torch); started on demand, the second one
    would start only when two stages are first ready together, and a short stage beside it would
    be done before it is (measured on the tiny test pipeline: no overlap at all)."""

    def __enter__(self) -> _WarmProcessPool:
        super().__enter__()
        # one task each: none is idle yet, so every submit starts a worker
        for _ in range(self._max_workers):
            self._executor.submit(_warm)
        return self


def stage_runner() -> ProcessPoolTaskRunner:
    """Worker processes of this machine for the stages, `at_once()` of them, logging as this
    process does. Processes, not the flow's threads: torch's random generator and thread
    count belong to the process, and its ONNX exporter is not thread-safe (two stages exporting
    at once in one process fail), so two stages in threads of one process would break each
    other's files or make a run that does not repeat. (DASK_SCHEDULER_ADDRESS keeps selecting
    where search trials run: a stage holding one of those workers would wait for trials that
    need it, and the stack's workers do not carry the service variables a stage needs.)"""
    return _WarmProcessPool(max_workers=at_once(), initializer=_log_as, initargs=(_console(),))


def _run_stages(processes: TaskRunner | None, params: Params, project: Path,
                parent: tracking.PipelineRun) -> dict[str, dict[str, Any]]:
    """Start each stage once its upstream stages are done, in declared order among those ready:
    in a worker process of `processes`, or in this process and thread (as the flow calls a task)
    when there are none (one stage at a time) or when its outputs are current, so that it comes
    from the cache without a worker started for it. Returns their summaries in declared order.
    After a failure no other stage starts, those running finish, then the failure is raised."""
    log = get_run_logger()
    done: dict[str, PrefectFuture | State] = {}
    running: dict[PrefectFuture, str] = {}
    summaries: dict[str, dict[str, Any]] = {}
    failures: list[Exception] = []

    def finish(name: str, outcome: PrefectFuture | State) -> None:
        done[name] = outcome
        try:
            summaries[name] = outcome.result()
        except Exception as error:  # the first failure is raised once the others finish
            failures.append(error)
            return
        parent.record(summaries[name])

    while True:
        ready = [] if failures else [
            name for name in STAGES if name not in done and name not in running.values()
            and all(other in done for other in dag.upstream(name))]
        if ready:  # start one, then look again: one run here has finished by then
            name = ready[0]
            # asked only now: whether its outputs are current reads the inputs it waited for
            current = runner.is_current(name, params, project)
            task = stage_tasks.stage_task(name, params, project, current)
            arguments = {"stage": name, "params": params, "root": project,
                         "parent_run_id": parent.run_id, "threads": stage_threads(name)}
            upstream = [done[other] for other in dag.upstream(name)]
            if processes is None or current:
                finish(name, task(**arguments, wait_for=upstream, return_state=True))
            else:
                log.info("starting %s (%d torch threads)", name, arguments["threads"])
                futures = [item for item in upstream if isinstance(item, PrefectFuture)]
                running[processes.submit(task, arguments, wait_for=futures)] = name
            continue
        if not running:
            break
        future = next(as_completed(list(running)))
        finish(running.pop(future), future)
    if failures:
        raise failures[0]
    return {name: summaries[name] for name in STAGES}


@flow(name="shrinkflow-pipeline")
def pipeline(params_file: str = "params.yaml", overlays: list[str] | None = None,
             overrides: list[str] | None = None, root: str = ".") -> dict[str, Any]:
    """Run every stage on the configuration in `params_file` (+ overlays and key=value overrides)."""
    log = get_run_logger()
    project = Path(root).resolve()
    params = load_params(project / params_file, overlays, overrides)
    with project_lock(project):
        runner.recover_outputs(project)
        orphans = tracking.fail_orphaned_runs(project, params.project.experiment)
        if orphans:
            log.warning("marked %d MLflow run(s) of an interrupted run as failed", len(orphans))
        recorded = versions.recordable(params_file, overlays, overrides)
        if recorded:
            versions.check_remote(project)
        started_by = triggers.current_trigger()  # schedule, commit, CI or manual: a tag of both runs
        log.info("pipeline run started by %s", started_by.label)
        with tracking.pipeline_run(params, project, project / params_file, started_by) as parent:
            with stage_runner() if at_once() > 1 else nullcontext() as processes:
                summaries = _run_stages(processes, params, project, parent)
            if recorded:
                versions.record_versions(project, list(STAGES))
                tracking.log_artifact_to(project, parent.run_id, project / "dvc.lock")
            else:
                log.warning("run with overlays/overrides: outputs are not recorded in dvc.lock "
                            "(use `dvc exp run -S key=value` to version an experiment)")
            links = {stage: tracking.run_link(project, summary["run_id"])
                     for stage, summary in summaries.items()}
            # a cached stage's run is an earlier one: `parent.record` made it part of this one
            links["pipeline"] = tracking.run_link(project, parent.run_id)
            summary.publish_summary(project, summaries, links)
    return {"run_id": parent.run_id, "links": links, "stages": summaries}

"""The stages as Prefect tasks: cached on `tasks.services.runner.stage_key`, retried on transient faults.

An unchanged re-run skips a stage; a changed param, input file or module re-runs that stage and
whatever reads its outputs. When the outputs on disk are not the ones a cache entry describes
(missing, made from other params, half-written), the entry is refreshed instead of served.
Results are stored as JSON, never pickled, and only transient faults (network, S3, a locked
database) are retried: bad data, a bad config or a missing upstream output fail at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext

from shrinkflow.config import Params
from tasks.services import dag
from tasks.services.faults import retry_when_transient
from tasks.services.runner import is_current, run_stage, stage_key

RETRIES = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": retry_when_transient}


@dataclass
class StageInputs(CachePolicy):
    """Cache key from the stage's params sections and the content of its inputs and code."""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any],
                    flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        return stage_key(inputs["stage"], inputs["params"], inputs["root"])


STAGE_TASKS: dict[str, Task] = {
    name: task(run_stage, name=name, cache_policy=TASK_SOURCE + StageInputs(),
               persist_result=True, result_serializer="json", **RETRIES)
    for name in dag.STAGES
}


def stage_task(stage: str, params: Params, root: Path, current: bool | None = None) -> Task:
    """The stage's task, told to refresh its cache when the outputs on disk are not the ones the
    cache entry describes: missing, made from other params or inputs, or half-written
    (`current`: whether they are, when the caller has asked `tasks.services.runner.is_current`)."""
    if current is None:
        current = is_current(stage, params, root)
    return STAGE_TASKS[stage] if current else STAGE_TASKS[stage].with_options(refresh_cache=True)

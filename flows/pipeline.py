"""The shrinkflow pipeline as a Prefect flow: prepare -> search -> baseline -> prune, distill ->
quantize -> ensemble -> compare -> deploy.

Wiring only: which task runs in which order and which MLflow run id each one gets. The stages and
their order are declared in `tasks.dag`, the maths is in `shrinkflow/`, the I/O, tracking and
caching in `tasks/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from shrinkflow.config import load_params
from tasks import stage_tasks, stages, summary, tracking, triggers, versions
from tasks.dag import STAGES
from tasks.lock import project_lock


@flow(name="shrinkflow-pipeline")
def pipeline(params_file: str = "params.yaml", overlays: list[str] | None = None,
             overrides: list[str] | None = None, root: str = ".") -> dict[str, Any]:
    """Run every stage on the configuration in `params_file` (+ overlays and key=value overrides)."""
    log = get_run_logger()
    project = Path(root).resolve()
    params = load_params(project / params_file, overlays, overrides)
    with project_lock(project):
        stages.recover_outputs(project)
        orphans = tracking.fail_orphaned_runs(project, params.project.experiment)
        if orphans:
            log.warning("marked %d MLflow run(s) of an interrupted run as failed", len(orphans))
        summaries: dict[str, dict[str, Any]] = {}
        recorded = versions.recordable(params_file, overlays, overrides)
        if recorded:
            versions.check_remote(project)
        started_by = triggers.current_trigger()  # schedule, commit, CI or manual: a tag of both runs
        log.info("pipeline run started by %s", started_by.label)
        with tracking.pipeline_run(params, project, project / params_file, started_by) as parent:
            for stage in STAGES:
                summaries[stage] = stage_tasks.stage_task(stage, params, project)(
                    stage, params, project, parent.run_id)
                parent.record(summaries[stage])
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

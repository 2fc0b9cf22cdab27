"""Prefect tasks around the stage functions: caching, retries, versioning and the run summary.

A stage's cache key is the hash of (its params sections, the content of everything it reads as
declared in `catalog.STAGE_DEPS`, the task's source). An unchanged re-run skips the stage; a changed
param or input file re-runs that stage and whatever reads its outputs. A stage whose outputs have
gone missing is re-run even on a cache hit. Results are stored as JSON, never pickled.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from pydantic import BaseModel

from shrinkflow.config import Params
from tasks import io
from tasks.catalog import Catalog, tree_digest

# params.yaml sections each stage reads; only these enter its cache key
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("prepare",),
    "baseline": ("baseline", "measure"),
    # fine-tuning reuses baseline.train/augment and the distillation loss's settings
    "prune": ("prune", "baseline", "measure", "distill.temperature", "distill.alpha"),
    "distill": ("distill", "baseline", "measure"),  # the student shares baseline.train/augment
    "quantize": ("quantize", "baseline", "measure"),  # QAT reuses baseline.train/augment
    "compare": ("compare", "measure"),
}
# stage functions by module path: imported only when a stage really runs, so a fully cached
# pipeline never pays for importing torch, pandas or Great Expectations
STAGE_FUNCTIONS: dict[str, str] = {
    "prepare": "tasks.prepare:run_prepare",
    "baseline": "tasks.baseline:run_baseline",
    "prune": "tasks.prune:run_prune",
    "distill": "tasks.distill:run_distill",
    "quantize": "tasks.quantize:run_quantize",
    "compare": "tasks.compare:run_compare",
}


def _param(params: Params, dotted: str) -> Any:
    """A params section or a single key ("distill.alpha"), as plain JSON data."""
    value: Any = params
    for part in dotted.split("."):
        value = getattr(value, part)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def stage_key(stage: str, params: Params, root: Path) -> str:
    """What a stage's outputs depend on: its params sections, its declared inputs' content and
    the project folder (two checkouts sharing a PREFECT_HOME must not share outputs)."""
    sections = {name: _param(params, name) for name in STAGE_SECTIONS[stage]}
    catalog = Catalog.at(root)
    digest = hashlib.sha256(json.dumps(sections, sort_keys=True).encode())
    digest.update(str(catalog.root).encode())
    digest.update(catalog.deps_digest(stage).encode())
    return f"{stage}-{digest.hexdigest()}"


def run_stage(stage: str, params: Params, root: Path, parent_run_id: str | None = None
              ) -> dict[str, Any]:
    """Run one stage function (the same one `shrinkflow stage NAME` and dvc.yaml call), then
    stamp its outputs with the key they were made from."""
    if stage not in STAGE_FUNCTIONS:
        raise KeyError(f"unknown stage {stage!r}; stages are {', '.join(STAGE_FUNCTIONS)}")
    key = stage_key(stage, params, Path(root))
    module, function = STAGE_FUNCTIONS[stage].split(":")
    summary = getattr(importlib.import_module(module), function)(params, Path(root), parent_run_id)
    io.write_text(Catalog.at(root).stamp_file(stage), key + "\n")
    return summary


@dataclass
class StageInputs(CachePolicy):
    """Cache key from the stage's params sections and the content of its declared inputs."""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any],
                    flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        return stage_key(inputs["stage"], inputs["params"], inputs["root"])


def _retry_on_io(task: Task, task_run: Any, state: Any) -> bool:
    """Retry a stage only on I/O failures; bad data or config fails at once."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:  # noqa: BLE001 - any other error is not transient
        return False
    return False


def _stage_task(stage: str) -> Task:
    return task(
        run_stage,
        name=stage,
        cache_policy=TASK_SOURCE + StageInputs(),
        persist_result=True,
        result_serializer="json",
        retries=2,
        retry_delay_seconds=2,
        retry_condition_fn=_retry_on_io,
    )


STAGE_TASKS: dict[str, Task] = {stage: _stage_task(stage) for stage in STAGE_FUNCTIONS}


def stage_task(stage: str, params: Params, root: Path) -> Task:
    """The stage's task, told to refresh its cache when the outputs on disk are not the ones the
    cache entry describes: missing, or made from other params/inputs (their stamp differs)."""
    catalog = Catalog.at(root)
    stamp = catalog.stamp_file(stage)
    current = (catalog.outputs_exist(stage) and stamp.is_file()
               and stamp.read_text().strip() == stage_key(stage, params, root))
    return STAGE_TASKS[stage] if current else STAGE_TASKS[stage].with_options(refresh_cache=True)


# ---------------------------------------------------------------------------------------------
# Versioning with DVC
# ---------------------------------------------------------------------------------------------
def _outputs_key(task_ctx: TaskRunContext, inputs: dict[str, Any]) -> str:
    catalog, stages = Catalog.at(inputs["root"]), inputs["stages"]
    digest = hashlib.sha256()
    for stage in stages:
        for path in catalog.stage_outputs(stage):
            digest.update(tree_digest(path).encode())
    return f"dvc-record-{digest.hexdigest()}"


def recordable(params_file: str, overlays: list[str] | None, overrides: list[str] | None) -> bool:
    """dvc.lock pairs outputs with params.yaml: a run on other params must not be recorded there."""
    return Path(params_file).name == "params.yaml" and not overlays and not overrides


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    # the interpreter's own DVC: works whether or not the venv's bin/ is on PATH
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True,
                          text=True, timeout=600)


@task(name="record-versions", cache_key_fn=_outputs_key, persist_result=True,
      result_serializer="json", retries=2, retry_delay_seconds=2)
def record_versions(root: Path, stages: list[str]) -> dict[str, Any]:
    """`dvc commit` the stages' outputs into dvc.lock and the DVC cache, then `dvc push`."""
    if not (Path(root) / ".dvc").is_dir():
        return {"recorded": False, "reason": "not a DVC repository"}
    commit = _dvc(root, "commit", "--force", *stages)
    if commit.returncode != 0:
        raise OSError(f"dvc commit failed: {commit.stderr.strip() or commit.stdout.strip()}")
    push = _dvc(root, "push", *stages)
    if push.returncode != 0:
        raise OSError(f"dvc push failed: {push.stderr.strip() or push.stdout.strip()}")
    return {"recorded": True, "pushed": push.stdout.strip().splitlines()[-1:] or []}


# ---------------------------------------------------------------------------------------------
# Run summary (Prefect markdown artifact + reports/summary.md)
# ---------------------------------------------------------------------------------------------
SUMMARY_METRICS = ("accuracy", "f1_macro", "params_count", "size_bytes", "flops",
                   "latency_ms_p50_b1", "throughput_sps_b256")


def summary_markdown(summaries: dict[str, dict[str, Any]], links: dict[str, str]) -> str:
    baseline = summaries["baseline"]["metrics"]
    lines = [f"# shrinkflow run on `{summaries['prepare']['dataset']}`", "",
             "| metric | torch fp32 | ONNX Runtime fp32 |", "|---|---:|---:|"]
    for name in SUMMARY_METRICS:
        onnx = baseline.get(f"onnx_{name}")
        lines.append(f"| {name} | {baseline[name]:.6g} | "
                     f"{'' if onnx is None else f'{onnx:.6g}'} |")
    lines += ["", "| stage | MLflow run |", "|---|---|"]
    lines += [f"| {stage} | [{summary['run_id']}]({links[stage]}) |"
              for stage, summary in summaries.items()]
    if "compare" in summaries:
        lines += ["", "## Candidates", "", summaries["compare"]["table"]]
    if "pipeline" in links:
        lines += ["", f"Pipeline run: {links['pipeline']} (open the UI with `make ui`)."]
    return "\n".join(lines) + "\n"


@task(name="publish-summary", retries=2, retry_delay_seconds=1)
def publish_summary(root: Path, summaries: dict[str, dict[str, Any]],
                    links: dict[str, str]) -> str:
    from prefect.artifacts import create_markdown_artifact

    markdown = summary_markdown(summaries, links)
    io.write_text(Catalog.at(root).summary_file, markdown)
    create_markdown_artifact(markdown, key="pipeline-summary", description="shrinkflow run")
    return markdown

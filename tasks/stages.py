"""Prefect tasks around the stage functions: caching, retries, versioning and the run summary.

A stage's cache key is the hash of its params sections, the content of its data inputs and of
every project module it imports (`tasks.dag.deps`), and the checkout's folder. An unchanged re-run
skips the stage; a changed param, input file or module re-runs that stage and whatever reads its
outputs. Outputs are stamped with the key they were made from, and the stamp is removed before a
stage starts writing: outputs that are missing, made from other params, or left by a run killed
half-way are never served from the cache. Results are stored as JSON, never pickled, and only
transient faults (network, S3, a locked database) are retried.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import Task, task
from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from pydantic import BaseModel

from shrinkflow.config import Params
from tasks import dag, io
from tasks.catalog import Catalog, file_md5, tree_digest
from tasks.faults import retry_when_transient

RETRIES = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": retry_when_transient}


def _param(params: Params, dotted: str) -> Any:
    """A params section or a single key ("distill.alpha"), as plain JSON data."""
    value: Any = params
    for part in dotted.split("."):
        value = getattr(value, part)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def stage_key(stage: str, params: Params, root: Path) -> str:
    """What a stage's outputs depend on: its params sections, the content of its data inputs and
    code, and the project folder (two checkouts sharing a PREFECT_HOME must not share outputs)."""
    catalog = Catalog.at(root)
    sections = {name: _param(params, name) for name in dag.stage(stage).params}
    digest = hashlib.sha256(json.dumps(sections, sort_keys=True).encode())
    digest.update(str(catalog.root).encode())
    for relative in dag.deps(stage, catalog.root):
        digest.update(relative.encode())
        digest.update(tree_digest(catalog.path(relative)).encode())
    return f"{stage}-{digest.hexdigest()}"


def is_current(stage: str, params: Params, root: Path) -> bool:
    """Are the outputs on disk the ones `params` and the current inputs and code make?"""
    catalog = Catalog.at(root)
    stamp = catalog.stamp_file(stage)
    return (all(catalog.path(path).exists() for path in dag.stage(stage).outputs)
            and stamp.is_file() and stamp.read_text().strip() == stage_key(stage, params, root))


def recover_outputs(root: Path) -> None:
    """Put back what a killed run left half-swapped (call it holding the project lock)."""
    catalog = Catalog.at(root)
    for item in dag.STAGES.values():
        for path in item.outputs:
            io.recover(catalog.path(path))


def run_stage(stage: str, params: Params, root: Path, parent_run_id: str | None = None
              ) -> dict[str, Any]:
    """Run one stage function (the same one `shrinkflow stage NAME` and dvc.yaml call), then
    stamp its outputs with the key they were made from."""
    key = stage_key(stage, params, Path(root))
    stamp = Catalog.at(root).stamp_file(stage)
    stamp.unlink(missing_ok=True)  # from here until the end the outputs match no key
    module, function = dag.stage(stage).function.split(":")
    summary = getattr(importlib.import_module(module), function)(params, Path(root), parent_run_id)
    io.write_text(stamp, key + "\n")
    return summary


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


def stage_task(stage: str, params: Params, root: Path) -> Task:
    """The stage's task, told to refresh its cache when the outputs on disk are not the ones the
    cache entry describes: missing, made from other params or inputs, or half-written."""
    current = is_current(stage, params, root)
    return STAGE_TASKS[stage] if current else STAGE_TASKS[stage].with_options(refresh_cache=True)


# ---------------------------------------------------------------------------------------------
# Versioning with DVC
# ---------------------------------------------------------------------------------------------
class DvcError(RuntimeError):
    """A DVC command failed; its message carries DVC's own output."""


def _local_remote(root: Path) -> Path | None:
    """The default DVC remote's folder when it is a local path; None for S3 and the like (or
    when none is configured)."""
    texts = [path.read_text() for path in (root / ".dvc" / "config", root / ".dvc" / "config.local")
             if path.is_file()]
    config = "\n".join(texts)
    default = re.findall(r"^\s*remote\s*=\s*(\S+)", config, flags=re.MULTILINE)
    if not default:
        return None
    section = re.search(rf"\[\s*'remote \"{re.escape(default[-1])}\"'\s*\]([^\[]*)", config)
    url = re.search(r"^\s*url\s*=\s*(\S+)", section.group(1), flags=re.MULTILINE) if section else None
    if url is None or "://" in url.group(1):
        return None
    return (root / ".dvc" / url.group(1)).resolve()


def _recorded_objects(lock: Path) -> list[str]:
    """md5 of every output recorded in dvc.lock (a folder's is its .dir listing)."""
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return [out["md5"] for item in stages.values() for out in item.get("outs", []) if "md5" in out]


def _remote_has(remote: Path, md5: str) -> bool:
    """Is the object (and, for a folder, every file it lists) in the local remote?"""
    path = remote / "files" / "md5" / md5[:2] / md5[2:]
    if not path.is_file():
        return False
    if md5.endswith(".dir"):
        return all(_remote_has(remote, entry["md5"]) for entry in json.loads(path.read_text()))
    return True


def versions_key(task_ctx: TaskRunContext | None, inputs: dict[str, Any]) -> str | None:
    """What a recording depends on: the outputs, dvc.lock as it is, and whether the remote still
    holds what dvc.lock lists. Anything lost re-runs the recording; a remote that cannot be checked
    cheaply (S3) is recorded every time (None: no caching)."""
    root, stages = Path(inputs["root"]), inputs["stages"]
    remote = _local_remote(root)
    if remote is None:
        return None
    catalog, digest = Catalog.at(root), hashlib.sha256()
    for stage in stages:
        for path in dag.stage(stage).outputs:
            digest.update(tree_digest(catalog.path(path)).encode())
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    digest.update(file_md5(lock).encode())
    for md5 in _recorded_objects(lock):
        digest.update(f"{md5}:{_remote_has(remote, md5)}".encode())
    return f"dvc-record-{digest.hexdigest()}"


def recordable(params_file: str, overlays: list[str] | None, overrides: list[str] | None) -> bool:
    """dvc.lock pairs outputs with params.yaml: a run on other params must not be recorded there."""
    return Path(params_file).name == "params.yaml" and not overlays and not overrides


def _dvc(root: Path, *args: str) -> str:
    # the interpreter's own DVC: works whether or not the venv's bin/ is on PATH
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        raise DvcError(f"dvc {args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


@task(name="record-versions", cache_key_fn=versions_key, persist_result=True,
      result_serializer="json", **RETRIES)
def record_versions(root: Path, stages: list[str]) -> dict[str, Any]:
    """`dvc commit` the stages' outputs into dvc.lock and the DVC cache, then `dvc push`."""
    if not (Path(root) / ".dvc").is_dir():
        return {"recorded": False, "reason": "not a DVC repository"}
    _dvc(root, "commit", "--force", *stages)
    pushed = _dvc(root, "push", *stages)
    return {"recorded": True, "pushed": pushed.strip().splitlines()[-1:] or []}


# ---------------------------------------------------------------------------------------------
# Run summary (Prefect markdown artifact + reports/summary.md)
# ---------------------------------------------------------------------------------------------
def summary_markdown(summaries: dict[str, dict[str, Any]], links: dict[str, str]) -> str:
    baseline = summaries["baseline"]["metrics"]
    lines = [f"# shrinkflow run on `{summaries['prepare']['dataset']}`", "",
             f"Teacher: validation accuracy {baseline['val_accuracy']:.4f}, test accuracy "
             f"{baseline['accuracy']:.4f}, {int(baseline['params_count']):,} parameters.", "",
             "| stage | MLflow run |", "|---|---|"]
    lines += [f"| {stage} | [{summary['run_id']}]({links[stage]}) |"
              for stage, summary in summaries.items()]
    if "compare" in summaries:
        lines += ["", "## Candidates", "", summaries["compare"]["table"]]
    if "pipeline" in links:
        lines += ["", f"Pipeline run: {links['pipeline']} (open the UI with `make ui`)."]
    return "\n".join(lines) + "\n"


@task(name="publish-summary", **RETRIES)
def publish_summary(root: Path, summaries: dict[str, dict[str, Any]],
                    links: dict[str, str]) -> str:
    from prefect.artifacts import create_markdown_artifact

    markdown = summary_markdown(summaries, links)
    io.write_text(Catalog.at(root).summary_file, markdown)
    create_markdown_artifact(markdown, key="pipeline-summary", description="shrinkflow run")
    return markdown

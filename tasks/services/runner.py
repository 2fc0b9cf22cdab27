"""Running one stage, and knowing whether its outputs are current: cache keys and stamps.

A stage's cache key is the hash of its params sections, the content of its data inputs and of
every project module it imports (`tasks.services.dag.deps`), the checkout's folder and the services its
outputs live in (the MLflow store deploy registers in). Outputs are stamped
with the key they were made from, and the stamp is removed before a stage starts writing: outputs
that are missing, made from other params, or left by a run killed half-way are never taken for
current. The same `run_stage` runs inside the Prefect flow (`tasks.services.stage_tasks`), behind
`shrinkflow stage NAME` (what dvc.yaml calls) and from Python; nothing here imports Prefect.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from shrinkflow.config import Params
from tasks.services import dag, io
from tasks.services.catalog import Catalog, tree_digest


def _param(params: Params, dotted: str) -> Any:
    """A params section or a single key ("distill.alpha"), as plain JSON data."""
    value: Any = params
    for part in dotted.split("."):
        value = getattr(value, part)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def params_json(stage: str, params: Params) -> str:
    """The params sections and keys a stage reads, as canonical JSON."""
    return json.dumps({name: _param(params, name) for name in dag.stage(stage).params},
                      sort_keys=True)


def stage_key(stage: str, params: Params, root: Path) -> str:
    """What a stage's outputs depend on: its params sections, the content of its data inputs and
    code, and the project folder (two checkouts sharing a PREFECT_HOME must not share outputs)."""
    catalog = Catalog.at(root)
    digest = hashlib.sha256(params_json(stage, params).encode())
    digest.update(str(catalog.root).encode())
    for variable in dag.stage(stage).services:
        digest.update(f"{variable}={os.environ.get(variable, '')}".encode())
    for relative in dag.deps(stage, catalog.root, params.user_modules, params.user_files):
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


def user_code_importable(params: Params, root: Path) -> None:
    """Let the user's model classes (`package.module:ClassName`) that `params` name import from
    the project root, as they would in a script run there (a process building networks calls
    this: a stage, a search worker, `shrinkflow check`)."""
    folder = str(Path(root).resolve())
    if params.user_modules and folder not in sys.path:
        sys.path.insert(0, folder)


def run_stage(stage: str, params: Params, root: Path, parent_run_id: str | None = None,
              threads: int | None = None) -> dict[str, Any]:
    """Run one stage function (the same one `shrinkflow stage NAME` and dvc.yaml call), then
    stamp its outputs with the key they were made from. `threads`: torch's intra-op threads
    while it runs (None: as they are), for a stage sharing the cores with others; they are
    the process's, so concurrent stages run in processes of their own (`flows.pipeline`)."""
    key = stage_key(stage, params, Path(root))
    stamp = Catalog.at(root).stamp_file(stage)
    stamp.unlink(missing_ok=True)  # from here until the end the outputs match no key
    user_code_importable(params, root)
    module, function = dag.stage(stage).function.split(":")
    run = getattr(importlib.import_module(module), function)
    if threads is None:
        summary = run(params, Path(root), parent_run_id)
    else:
        from shrinkflow.measure import torch_threads  # imports torch: only a stage that runs

        with torch_threads(threads):
            summary = run(params, Path(root), parent_run_id)
    io.write_text(stamp, key + "\n")
    return summary

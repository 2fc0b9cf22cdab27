"""What started a pipeline run, and whether a commit changed anything the pipeline computes from.

A run is started by a schedule (a Prefect deployment's cron), a commit (the git hook of
`shrinkflow hooks install`), CI, or a person (manual). The starter says so in SHRINKFLOW_TRIGGER
(and the commit in SHRINKFLOW_TRIGGER_REF); otherwise CI's own variables name CI, and a flow run
its deployment's scheduler made is a scheduled one. The run records it as MLflow tags, in its
name, and as a Prefect tag.

A commit starts a run only if it changed a stage's inputs the way its cache key sees them
(`tasks.services.runner.stage_key`): the params it reads (values: a new comment in params.yaml changes
nothing), the code it imports, and the data it reads that no stage makes, with the DVC pointer
(`.dvc` file or dvc.lock entry) of that data. A README edit starts nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from shrinkflow.config import ConfigError, load_params, safe_load
from shrinkflow.errors import UserError
from tasks.services import dag
from tasks.services.catalog import tree_digest
from tasks.services.runner import params_json

TRIGGER_VARIABLE = "SHRINKFLOW_TRIGGER"
REF_VARIABLE = "SHRINKFLOW_TRIGGER_REF"
KINDS = ("schedule", "commit", "ci", "manual")
TAG = "shrinkflow.trigger"
REF_TAG = "shrinkflow.trigger.ref"


@dataclass(frozen=True)
class Trigger:
    """What started a run: its kind, and the commit it is about (if any)."""

    kind: str  # one of KINDS
    ref: str | None = None  # a commit SHA

    @property
    def label(self) -> str:
        """'commit 1a2b3c4d', 'schedule', ...: what run names and logs show."""
        return f"{self.kind} {self.ref[:8]}" if self.ref else self.kind

    @property
    def tags(self) -> dict[str, str]:
        return {TAG: self.kind, **({REF_TAG: self.ref} if self.ref else {})}

    @property
    def environment(self) -> dict[str, str]:
        """The variables that pass this trigger to a run started in another process."""
        return {TRIGGER_VARIABLE: self.kind, **({REF_VARIABLE: self.ref} if self.ref else {})}


def current(environ: Mapping[str, str] = os.environ, scheduled: bool = False) -> Trigger:
    """The trigger of a run starting now: the starter's word, else CI's variables, else the
    scheduler's (`scheduled`: this flow run was made by a deployment's schedule), else manual."""
    kind = environ.get(TRIGGER_VARIABLE)
    if kind:
        if kind not in KINDS:
            raise UserError(f"{TRIGGER_VARIABLE}={kind!r}: expected one of {', '.join(KINDS)}")
        return Trigger(kind, environ.get(REF_VARIABLE) or None)
    if scheduled:
        return Trigger("schedule")
    if environ.get("GITHUB_ACTIONS") == "true" or environ.get("CI", "").lower() in ("true", "1"):
        return Trigger("ci", environ.get("GITHUB_SHA") or environ.get("CI_COMMIT_SHA") or None)
    return Trigger("manual")


def current_trigger() -> Trigger:
    """The trigger of the running flow (`current`, scheduled when its deployment's scheduler
    made it), tagged `trigger:<kind>` on its Prefect flow run; outside a flow run, `current()`.

    Here, below flows/, so that flows/pipeline.py need not import flows/triggers.py, which
    imports the pipeline to serve it: the import goes one way."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if flow_run.id is None:
        return current()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)
        trigger = current(scheduled=run.auto_scheduled)
        client.update_flow_run(run.id, tags=sorted({*run.tags, f"trigger:{trigger.kind}"}))
    return trigger


# ---------------------------------------------------------------------------------------------
# Did a commit change the pipeline's inputs?
# ---------------------------------------------------------------------------------------------
def _made_by_stages() -> set[str]:
    return {path for stage in dag.STAGES.values() for path in stage.outputs}


def _locked_inputs(root: Path) -> dict[str, str]:
    """dvc.lock's record of each stage's inputs (path -> md5), for data kept out of git."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (safe_load(lock.read_text()) or {}).get("stages", {})
    return {dep["path"]: str(dep.get("md5", "")) for stage in stages.values()
            for dep in stage.get("deps", [])}


def fingerprint(root: Path, overlays: Sequence[str] = (), overrides: Sequence[str] = ()
                ) -> dict[str, str]:
    """Per stage, a digest of its inputs that a commit can change (see the module's docstring),
    on params.yaml with `overlays` (paths relative to `root`) and `overrides` applied. Params
    that do not load count as changed for every stage."""
    try:
        params = load_params(root / "params.yaml", [root / overlay for overlay in overlays],
                             list(overrides))
    except (ConfigError, FileNotFoundError, OSError) as error:
        return {name: f"unreadable params: {error}" for name in dag.STAGES}
    made, locked = _made_by_stages(), _locked_inputs(root)
    prints = {}
    for name, stage in dag.STAGES.items():
        digest = hashlib.sha256(params_json(name, params).encode())
        # what its cache key reads, less what stages make
        for relative in dag.deps(name, root, params.user_modules, params.user_files):
            if relative in made:
                continue
            digest.update(f"{relative}={tree_digest(root / relative)}".encode())
            if relative in stage.inputs:  # data: its DVC pointer too
                digest.update(f"{tree_digest(root / f'{relative}.dvc')}:"
                              f"{locked.get(relative, '')}".encode())
        prints[name] = digest.hexdigest()
    return prints


def git(root: Path, *args: str) -> str:
    """`git ARGS` in `root`: its output, or a UserError with git's message."""
    # the user's own git, from PATH
    result = subprocess.run(["git", *args], cwd=root, capture_output=True,  # nosec B603 B607
                            text=True, timeout=60)
    if result.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed in {root}: {result.stderr.strip()}")
    return result.stdout


def _tree_at(root: Path, commit: str, destination: Path) -> Path:
    """The files git holds at `commit`, written under `destination`."""
    destination.mkdir(parents=True)
    # the user's own git and tar, from PATH
    archive = subprocess.run(["git", "archive", "--format=tar", commit],  # nosec B603 B607
                             cwd=root, capture_output=True, timeout=120, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive,  # nosec B603 B607
                   check=True, timeout=120)
    return destination


def changed_stages(root: Path, commit: str = "HEAD", overlays: Sequence[str] = (),
                   overrides: Sequence[str] = ()) -> list[str]:
    """The stages whose inputs `commit` changed against its first parent (every stage for a
    first commit), compared on the files git holds at each (see `fingerprint`)."""
    sha = git(root, "rev-parse", commit).strip()
    parents = git(root, "rev-list", "--parents", "-n", "1", sha).split()[1:]
    with tempfile.TemporaryDirectory(prefix="shrinkflow-commit-") as scratch:
        after, *before = [fingerprint(_tree_at(root, ref, Path(scratch) / ref), overlays,
                                      overrides) for ref in (sha, *parents[:1])]
    if not before:
        return list(dag.STAGES)
    return [name for name in dag.STAGES if before[0].get(name) != after[name]]

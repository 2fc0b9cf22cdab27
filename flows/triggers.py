"""Unattended runs: a cron schedule (a Prefect deployment declared in prefect.yaml) and a git hook
that starts a run when a commit changes the pipeline's inputs (`tasks.services.triggers` decides what
started a run, and records it on the running flow).

    shrinkflow schedule --cron "0 3 * * *"            serve the deployment from this machine
    shrinkflow schedule --cron "0 3 * * *" --pool P   register it with a Prefect server's work
                                                      pool P (run by `prefect worker start --pool P`)
    shrinkflow hooks install [--config F] [--set k=v] the post-commit hook
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from shrinkflow.errors import UserError
from tasks.services import triggers

DEPLOYMENTS_FILE = "prefect.yaml"
HOOK_MARK = "# installed by `shrinkflow hooks install`"
RUN_LOGS = Path(".shrinkflow") / "runs"  # where a hook's background runs write their output


# ---------------------------------------------------------------------------------------------
# The schedule: prefect.yaml's deployment, served here or registered with a work pool
# ---------------------------------------------------------------------------------------------
def deployment_spec(root: Path) -> dict[str, Any]:
    """The pipeline's deployment as declared in prefect.yaml."""
    path = root / DEPLOYMENTS_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing: it declares the pipeline's deployment")
    deployments = (yaml.safe_load(path.read_text()) or {}).get("deployments") or []
    if not deployments:
        raise UserError(f"{path}: no entry under `deployments`")
    return deployments[0]


def _cron(spec: dict[str, Any], cron: str | None) -> Any:
    """The deployment's schedule: `cron`, else prefect.yaml's, in prefect.yaml's time zone."""
    from prefect.schedules import Cron, validate_cron_string

    declared = (spec.get("schedules") or [{}])[0]
    chosen = cron or declared.get("cron")
    if not chosen:
        raise UserError(f"no cron schedule: pass --cron or set one in {DEPLOYMENTS_FILE}")
    try:
        validate_cron_string(chosen)
    except ValueError as error:
        raise UserError(f"--cron {chosen!r} is not a cron expression: {error}") from None
    return Cron(chosen, timezone=declared.get("timezone", "UTC"))


def schedule(root: Path, cron: str | None, pool: str | None, overlays: list[str],
             overrides: list[str]) -> str | None:
    """Serve the deployment (blocks until stopped), or register it with `pool`: returns its id.
    Its runs get `overlays` and `overrides` (--config, --set) on top of prefect.yaml's params."""
    from prefect import flow as prefect_flow

    spec = deployment_spec(root)
    parameters = {**(spec.get("parameters") or {}), "root": str(root),
                  **({"overlays": overlays} if overlays else {}),
                  **({"overrides": overrides} if overrides else {})}
    common = {"name": spec["name"], "schedule": _cron(spec, cron), "parameters": parameters,
              "tags": spec.get("tags") or [], "description": spec.get("description")}
    if pool is None:
        from flows.pipeline import pipeline

        pipeline.serve(**common)
        return None
    flow = prefect_flow.from_source(source=str(root), entrypoint=spec["entrypoint"])
    return str(flow.deploy(work_pool_name=pool, print_next_steps=False, **common))


# ---------------------------------------------------------------------------------------------
# The git hook
# ---------------------------------------------------------------------------------------------
def run_arguments(overlays: list[str], overrides: list[str]) -> list[str]:
    """`shrinkflow run`'s --config/--set options for these overlays and overrides."""
    return [*(part for overlay in overlays for part in ("--config", overlay)),
            *(part for override in overrides for part in ("--set", override))]


def hook_path(root: Path) -> Path:
    """Where git looks for the post-commit hook (core.hooksPath respected)."""
    return (root / triggers.git(root, "rev-parse", "--git-path", "hooks/post-commit").strip()
            ).resolve()


def install_hook(root: Path, overlays: list[str], overrides: list[str]) -> Path:
    """Write the post-commit hook; each run it starts gets these overlays and overrides."""
    path = hook_path(root)
    if path.exists() and HOOK_MARK not in path.read_text():
        raise UserError(f"{path} exists and is not shrinkflow's: add the line "
                        f"`shrinkflow hooks post-commit` to it yourself")
    shrinkflow = Path(sys.executable).parent / "shrinkflow"
    quoted = shlex.join([str(shrinkflow), "hooks", "post-commit",
                         *run_arguments(overlays, overrides)])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{HOOK_MARK}: a commit that changes the pipeline's inputs starts "
                    f"a run in the background\nexec {quoted}\n")
    path.chmod(0o755)
    return path


def uninstall_hook(root: Path) -> Path | None:
    path = hook_path(root)
    if not path.exists() or HOOK_MARK not in path.read_text():
        return None
    path.unlink()
    return path


def start_commit_run(root: Path, overlays: list[str], overrides: list[str]) -> str:
    """After a commit: start a pipeline run in the background if the commit changed its inputs;
    says what it did either way."""
    sha = triggers.git(root, "rev-parse", "HEAD").strip()
    changed = triggers.changed_stages(root, sha, overlays=overlays, overrides=overrides)
    if not changed:
        return (f"shrinkflow: commit {sha[:8]} changes no pipeline input (params, code the stages "
                "import, source data): no run")
    trigger = triggers.Trigger("commit", sha)
    log = root / RUN_LOGS / f"commit-{sha[:8]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # git's own variables (GIT_INDEX_FILE, ...) would steer the DVC commands the run makes
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    command = [str(Path(sys.executable).parent / "shrinkflow"), "run",
               *run_arguments(overlays, overrides)]
    with log.open("w") as output:
        started = subprocess.Popen(command, cwd=root, env={**env, **trigger.environment},  # nosec B603
                                   stdout=output, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return (f"shrinkflow: commit {sha[:8]} changes the inputs of {', '.join(changed)}: pipeline "
            f"run started in the background (pid {started.pid}, log {log.relative_to(root)})")

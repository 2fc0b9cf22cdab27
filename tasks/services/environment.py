"""Service defaults for an embedded, project-local run; must run before prefect/mlflow import.

Environment variables only select services (where the stores and servers are), never model
behaviour. Anything already set by the user wins. `SERVICES` declares, once, every variable that
points the project at shared services: the stack (infra/stack.py) writes them, .env.example lists
them and docker-compose.yml sets them.
"""

from __future__ import annotations

import os
from pathlib import Path

_S3_CREDENTIALS = "S3 credentials of the DVC remote (and of the MLflow server's artifacts)"
# variable -> what it selects (and the embedded default when it is unset)
SERVICES: dict[str, str] = {
    "MLFLOW_TRACKING_URI": "MLflow tracking server (default: sqlite:///mlflow.db in the project)",
    "PREFECT_API_URL": "Prefect server API (default: a temporary server for each run)",
    "SHRINKFLOW_SEARCH_STORAGE": "Optuna storage of the search studies (default: optuna.db)",
    "DASK_SCHEDULER_ADDRESS": "Dask scheduler the search trials run on (default: in this process)",
    "SHRINKFLOW_DVC_REMOTE": "s3://bucket/prefix that DVC pushes to (default: .dvc/config's remote)",
    "AWS_ENDPOINT_URL": "S3 endpoint of MinIO or another S3 server (unset for AWS S3)",
    "AWS_ACCESS_KEY_ID": _S3_CREDENTIALS,
    "AWS_SECRET_ACCESS_KEY": _S3_CREDENTIALS,
    "AWS_DEFAULT_REGION": "S3 region (any value for MinIO)",
}
STAGES_AT_ONCE_VARIABLE = "SHRINKFLOW_STAGES_AT_ONCE"
# variables read that describe a run, not a service: set by whoever starts it
RUN_CONTEXT: dict[str, str] = {
    "SHRINKFLOW_TRIGGER": "what started the run: schedule, commit, ci or manual (hook, scheduler)",
    "SHRINKFLOW_TRIGGER_REF": "the commit SHA or schedule the trigger refers to",
    "CI": "true on a CI runner: the run is tagged ci",
    "GITHUB_ACTIONS": "true on GitHub Actions: the run is tagged ci",
    "GITHUB_SHA": "the commit a GitHub Actions run builds",
    "CI_COMMIT_SHA": "the commit a GitLab CI run builds",
    "OMP_NUM_THREADS": "CPU threads the run may use (default: every core); independent stages run "
                       "side by side with 4 or more",
    STAGES_AT_ONCE_VARIABLE: "the most stages run side by side (default: one per two of those "
                             "threads); 1 runs them one at a time",
}
DVC_REMOTE_VARIABLE = "SHRINKFLOW_DVC_REMOTE"
S3_ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL"


def defaults(root: Path) -> dict[str, str]:
    """The embedded, project-local settings of a run in `root`."""
    return {
        # Prefect: project-local state; the ephemeral server needs ~25 s on a fresh PREFECT_HOME
        "PREFECT_HOME": str(root / ".prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_TO_API_ENABLED": "false",  # ~0.25 s per run; logs still reach the console
        "PREFECT_LOGGING_EXTRA_LOGGERS": "shrinkflow",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",  # cache records survive across runs
        # MLflow: embedded SQLite store in the project root
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # DVC and Great Expectations: no analytics calls from a pipeline run
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(root / ".dvc" / "site_cache"),
        "GX_ANALYTICS_ENABLED": "false",
    }


def configure(root: Path) -> None:
    """Fill in `defaults(root)` for whatever the environment leaves unset."""
    for key, value in defaults(root).items():
        os.environ.setdefault(key, value)

"""Service defaults for an embedded, project-local run; must run before prefect/mlflow import.

Environment variables only select services (where the stores and servers are), never model
behaviour. Anything already set by the user wins.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure(root: Path) -> None:
    defaults = {
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
    for key, value in defaults.items():
        os.environ.setdefault(key, value)

"""docker-compose.yml and .env.example, checked without Docker: the compose file describes the
same stack as infra/stack.py, sets every variable the pipeline reads for the runs inside it, and
.env.example lists every variable the code and the stack read."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tasks.services.environment import RUN_CONTEXT, SERVICES, defaults

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "infra"))
import stack  # noqa: E402  (infra/ holds scripts, not a package)

INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")
# how the code reads a variable: os.environ.get("X"), os.environ["X"], or a *_VARIABLE constant
READS = re.compile(r"""environ(?:\.get\(\s*|\[\s*)["']([A-Z][A-Z0-9_]+)["']"""
                   r"""|_VARIABLE\s*=\s*["']([A-Z][A-Z0-9_]+)""")
PWD = "/home/someone/shrinkflow"  # what a shell sets when `docker compose` runs in the checkout


def _env_example() -> dict[str, str]:
    """Every variable .env.example names (commented out or not), with its example value."""
    found = re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=(.*)$", (REPO / ".env.example").read_text(),
                       flags=re.MULTILINE)
    return dict(found)


def _interpolated(text: str, values: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} with `values` as the .env file."""
    def substitute(match: re.Match) -> str:
        name, operator, fallback = match.groups()
        if values.get(name):
            return values[name]
        assert not (operator or "").endswith("?"), f"compose requires {name}: not in .env.example"
        return fallback or ""

    return INTERPOLATION.sub(substitute, text.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    text = (REPO / "docker-compose.yml").read_text()
    return yaml.safe_load(_interpolated(text, {**_env_example(), "PWD": PWD}))


def test_compose_describes_the_same_services_as_the_local_stack(compose):
    services = set(compose["services"])
    assert {"postgres", "minio", "minio-init", "mlflow", "prefect-server", "prefect-worker",
            "dask-scheduler", "dask-worker"} <= services
    mlflow = " ".join(compose["services"]["mlflow"]["command"])
    assert "--backend-store-uri=postgresql+psycopg://" in mlflow and "@postgres:5432/mlflow" in mlflow
    assert "--artifacts-destination=s3://shrinkflow/mlflow" in mlflow
    prefect_db = compose["services"]["prefect-server"]["environment"]
    assert prefect_db["PREFECT_SERVER_DATABASE_CONNECTION_URL"].endswith("@postgres:5432/prefect")
    assert "mc mb --ignore-existing" in " ".join(compose["services"]["minio-init"]["command"])
    init_sql = (REPO / "infra/compose/postgres-init.sql").read_text()
    assert all(f"CREATE DATABASE {name};" in init_sql for name in stack.DATABASES)


def test_the_pipeline_inside_the_stack_gets_every_service_variable(compose):
    for name in ("prefect-worker", "dask-worker"):
        env = compose["services"][name]["environment"]
        missing = [key for key in SERVICES if not env.get(key)]
        assert not missing, f"{name} does not set {missing}"
        assert env["PYTHONPATH"] == PWD, "workers run the mounted checkout's code"
    # and each URL names a service of this file
    env = compose["services"]["prefect-worker"]["environment"]
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "SHRINKFLOW_SEARCH_STORAGE",
                "DASK_SCHEDULER_ADDRESS", "AWS_ENDPOINT_URL"):
        assert urlsplit(env[key]).hostname in compose["services"], f"{key}={env[key]}"
    assert env["SHRINKFLOW_DVC_REMOTE"].startswith("s3://shrinkflow/")


def test_ports_are_published_on_loopback_only(compose):
    published = [port for service in compose["services"].values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published), published


def test_every_variable_compose_reads_is_in_env_example():
    used = INTERPOLATION.findall((REPO / "docker-compose.yml").read_text())
    names = {name for name, _, _ in used} - {"PWD"}  # the shell's own
    assert names <= set(_env_example()), names - set(_env_example())


def test_every_variable_the_code_reads_is_declared_and_in_env_example():
    sources = [path for folder in ("shrinkflow", "serving", "tasks", "flows")
               for path in (REPO / folder).rglob("*.py")]
    read = {name for path in sources for match in READS.findall(path.read_text())
            for name in match if name}
    assert {"MLFLOW_TRACKING_URI", "SHRINKFLOW_DVC_REMOTE", "SHRINKFLOW_TRIGGER"} <= read, \
        "the scan finds the code's reads"
    declared = set(SERVICES) | set(RUN_CONTEXT)
    undeclared = read - declared - set(defaults(REPO))
    assert not undeclared, f"read but not declared in tasks/services/environment.py: {undeclared}"
    missing = (declared | set(stack.Settings.variables())) - set(_env_example())
    assert not missing, f".env.example does not list {missing}"


def test_the_local_stack_writes_every_service_variable(tmp_path):
    settings = stack.Settings(tmp_path)
    assert set(settings.project_env()) == set(SERVICES)
    written = stack.write_env_file(settings).read_text()
    assert all(f"\n{key}=" in written for key in SERVICES)
    assert settings.env_file.stat().st_mode & 0o077 == 0, "it holds a secret: owner only"

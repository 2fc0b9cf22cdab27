"""The service stack on this machine: one command starts it, one stops it.

    python infra/stack.py up | down | status      (make stack-up | stack-down | stack-status)

Every service binds 127.0.0.1 and keeps its state, logs and pid under the stack folder (.stack/
in the project, or STACK_DIR):

    postgres  PostgreSQL (Debian's server binaries): databases mlflow, optuna and prefect
    s3        moto's S3 server with the bucket STACK_BUCKET (objects live in its memory: they
              are gone once the stack stops; MinIO or AWS S3 keep them, see docker-compose.yml)
    mlflow    MLflow tracking server: PostgreSQL backend, artifacts in s3://<bucket>/mlflow
    prefect   Prefect server (PostgreSQL) with the process work pool `shrinkflow` and a worker
    dask      Dask scheduler with STACK_DASK_WORKERS single-threaded workers

`up` writes .stack/stack.env: the variables of tasks.services.environment.SERVICES that point the project
at these services (`set -a; . .stack/stack.env; set +a`, then `make run`). Ports come from
STACK_<SERVICE>_PORT. A service that fails to start stops the ones started before it, and its log
is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # this interpreter's bin/: mlflow, prefect, dask, moto_server
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
PG_USER = "postgres"
DATABASES = ("mlflow", "optuna", "prefect")
POOL = "shrinkflow"  # the work pool prefect.yaml's deployment names
STARTUP_TIMEOUT_S = 120
DEFAULT_PORTS = {"postgres": 54320, "s3": 9000, "mlflow": 5000, "prefect": 4200, "dask": 8786}


class StackError(RuntimeError):
    """A service could not start or stop; the message says which and why."""


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (it holds a secret), from its creation on."""
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(text)


def port_variable(service: str) -> str:
    return f"STACK_{service.upper()}_PORT"


@dataclass(frozen=True)
class Settings:
    """Where the stack lives and listens; from the environment, with the defaults beside."""

    home: Path  # state, logs and pids
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    bucket: str = "shrinkflow"  # one bucket: MLflow artifacts under mlflow/, DVC under dvc/
    dask_workers: int = 2  # one torch thread each: trials run in parallel, one per worker

    @staticmethod
    def variables() -> list[str]:
        """The environment variables the settings come from."""
        return ["STACK_DIR", "STACK_BUCKET", "STACK_DASK_WORKERS", *map(port_variable, DEFAULT_PORTS)]

    @classmethod
    def from_environment(cls, root: Path = ROOT) -> Settings:
        ports = {name: int(os.environ.get(port_variable(name), port))
                 for name, port in DEFAULT_PORTS.items()}
        return cls(Path(os.environ.get("STACK_DIR", root / ".stack")).resolve(), ports,
                   os.environ.get("STACK_BUCKET", "shrinkflow"),
                   int(os.environ.get("STACK_DASK_WORKERS", "2")))

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def database(self, name: str, driver: str = "postgresql") -> str:
        return f"{driver}://{PG_USER}@127.0.0.1:{self.ports['postgres']}/{name}"

    @property
    def env_file(self) -> Path:
        return self.home / "stack.env"

    def credentials(self) -> dict[str, str]:
        """The S3 keys, made once and kept in the stack folder (moto takes any; MinIO would not)."""
        stored = self.home / "credentials.json"
        if not stored.is_file():
            self.home.mkdir(parents=True, exist_ok=True)
            keys = {"AWS_ACCESS_KEY_ID": "shrinkflow", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20)}
            write_private(stored, json.dumps(keys))
        return json.loads(stored.read_text())

    def project_env(self) -> dict[str, str]:
        """The variables that point the project at this stack (tasks.services.environment.SERVICES)."""
        return {"MLFLOW_TRACKING_URI": self.url("mlflow"),
                "PREFECT_API_URL": f"{self.url('prefect')}/api",
                "SHRINKFLOW_SEARCH_STORAGE": self.database("optuna"),
                "DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{self.ports['dask']}",
                "SHRINKFLOW_DVC_REMOTE": f"s3://{self.bucket}/dvc",
                "AWS_ENDPOINT_URL": self.url("s3"),
                **self.credentials(),
                "AWS_DEFAULT_REGION": "us-east-1"}


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------
def answers(url: str) -> bool:
    """Does `url` answer 200 (not through any proxy)?"""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.home / "pids" / f"{name}.pid"


def _log_file(settings: Settings, name: str) -> Path:
    return settings.home / "logs" / f"{name}.log"


def _alive(pid: int) -> bool:
    # reap it if it is our own child (within `running`): a zombie still takes signals
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_pid(settings: Settings, name: str) -> int | None:
    path = _pid_file(settings, name)
    if not path.is_file():
        return None
    pid = int(path.read_text())
    return pid if _alive(pid) else None


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def _wait(name: str, ready: Callable[[], bool], settings: Settings, pid: int,
          crash: str | None = None) -> None:
    """Until `ready()`; fails when the process exits, or its log shows `crash` (a server whose
    worker process died while the parent lives on), or at the deadline."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    log = _log_file(settings, name)
    while not ready():
        crashed = crash is not None and log.is_file() and crash in log.read_text(errors="replace")
        if not _alive(pid) or crashed:
            raise StackError(f"{name} failed while starting; its log ({log}):\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise StackError(f"{name} not ready after {STARTUP_TIMEOUT_S} s; its log ({log}):\n"
                             f"{_tail(log)}")
        time.sleep(0.25)


def _spawn(settings: Settings, name: str, command: list[str], env: dict[str, str],
           ready: Callable[[], bool], crash: str | None = None) -> None:
    """Start `command` detached in its own process group (it outlives this command), log to
    logs/<name>.log, record its pid, and wait until `ready()`."""
    if _running_pid(settings, name):
        return
    log = _log_file(settings, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    _pid_file(settings, name).parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as output:  # a fresh log per start: readiness reads it
        # fixed argument lists, no shell
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output,  # nosec B603
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    _pid_file(settings, name).write_text(str(process.pid))
    _wait(name, ready, settings, process.pid, crash)


def _stop(settings: Settings, name: str) -> bool:
    """Stop a spawned service's process group: SIGTERM, then SIGKILL. False: it was not running."""
    pid = _running_pid(settings, name)
    _pid_file(settings, name).unlink(missing_ok=True)
    if pid is None:
        return False
    for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _alive(pid):
            return True
    return True


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    """A service's environment: this one without the project's service variables (a server
    must not point at itself), with the stack's bin/ first and no telemetry."""
    from tasks.services.environment import SERVICES

    env = {key: value for key, value in os.environ.items() if key not in SERVICES}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1",
            **extra}


# ---------------------------------------------------------------------------------------------
# PostgreSQL: run as the postgres user when this is root (the server refuses to run as root)
# ---------------------------------------------------------------------------------------------
def _pg_bin() -> Path:
    import glob

    found = sorted(glob.glob(PG_BIN_GLOB), key=lambda path: int(Path(path).parent.name))
    if not found or not (Path(found[-1]) / "pg_ctl").exists():
        raise StackError(f"no PostgreSQL server binaries ({PG_BIN_GLOB}/pg_ctl): install "
                         "Debian's postgresql package, or use docker-compose.yml")
    return Path(found[-1])


def _as_pg_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *command] if os.geteuid() == 0 else command


def _pg(command: list[str], timeout: int = 120) -> str:
    done = subprocess.run(_as_pg_user(command), capture_output=True, text=True,  # nosec B603
                          timeout=timeout, check=False)
    if done.returncode:
        raise StackError(f"{Path(command[0]).name} failed ({done.returncode}): "
                         f"{done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _pg_folder(settings: Settings) -> Path:
    folder = settings.home / "postgres"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        if os.geteuid() == 0:
            import pwd

            account = pwd.getpwnam(PG_USER)
            os.chown(folder, account.pw_uid, account.pw_gid)
    if os.geteuid() == 0 and subprocess.run(_as_pg_user(["test", "-w", str(folder)]),  # nosec B603
                                            check=False).returncode:
        raise StackError(f"the {PG_USER} user cannot reach {folder}: put the stack where every "
                         "user may enter each parent folder (STACK_DIR)")
    return folder


def start_postgres(settings: Settings) -> None:
    binaries, folder = _pg_bin(), _pg_folder(settings)
    data, port = folder / "data", settings.ports["postgres"]
    if not (data / "PG_VERSION").is_file():
        _pg([str(binaries / "initdb"), "-D", str(data), "-U", PG_USER, "-A", "trust",
             "--no-sync", "-E", "UTF8"])
    status = subprocess.run(_as_pg_user([str(binaries / "pg_ctl"), "-D", str(data), "status"]),
                            capture_output=True, check=False)  # nosec B603
    if status.returncode != 0:
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}"
        _pg([str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l",
             str(folder / "server.log"), "-w", "-t", "60", "start"])
    present = _pg([str(binaries / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER,
                   "-Atc", "SELECT datname FROM pg_database"]).split()
    for name in DATABASES:
        if name not in present:
            _pg([str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, name])


def stop_postgres(settings: Settings) -> bool:
    data = settings.home / "postgres" / "data"
    if not (data / "postmaster.pid").is_file():
        return False
    _pg([str(_pg_bin() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
    return True


# ---------------------------------------------------------------------------------------------
# the services, in start order
# ---------------------------------------------------------------------------------------------
def start_s3(settings: Settings) -> None:
    _spawn(settings, "s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p",
                            str(settings.ports["s3"])],
           _env(settings), lambda: answers(f"{settings.url('s3')}/moto-api/"))
    import boto3

    keys = settings.credentials()
    s3 = boto3.client("s3", endpoint_url=settings.url("s3"), region_name="us-east-1",
                      aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"])
    if settings.bucket not in {bucket["Name"] for bucket in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=settings.bucket)


def start_mlflow(settings: Settings) -> None:
    command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1",
               "--port", str(settings.ports["mlflow"]), "--workers", "1",
               "--backend-store-uri", settings.database("mlflow", "postgresql+psycopg"),
               "--artifacts-destination", f"s3://{settings.bucket}/mlflow", "--serve-artifacts"]
    env = _env(settings, MLFLOW_S3_ENDPOINT_URL=settings.url("s3"), AWS_DEFAULT_REGION="us-east-1",
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **settings.credentials())
    # its uvicorn worker dies on a bad store while `mlflow server` itself keeps running
    _spawn(settings, "mlflow", command, env, lambda: answers(f"{settings.url('mlflow')}/health"),
           crash="Traceback (most recent call last)")


def _prefect_env(settings: Settings) -> dict[str, str]:
    return _env(settings, PREFECT_HOME=str(settings.home / "prefect"),
                PREFECT_SERVER_ANALYTICS_ENABLED="false",
                PREFECT_SERVER_DATABASE_CONNECTION_URL=settings.database("prefect", "postgresql+asyncpg"))


def _prefect(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "prefect"), *args], env=env, capture_output=True,  # nosec B603
                          text=True, timeout=120, check=False)


def start_prefect(settings: Settings) -> None:
    """The server, the process work pool and a worker that runs the pool's flow runs in the
    project, with the stack's variables (so scheduled runs use the stack too)."""
    api = f"{settings.url('prefect')}/api"
    _spawn(settings, "prefect", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                 "--port", str(settings.ports["prefect"])],
           _prefect_env(settings), lambda: answers(f"{api}/health"))
    project = {**_prefect_env(settings), **settings.project_env()}
    if _prefect(project, "work-pool", "inspect", POOL).returncode:  # none yet
        created = _prefect(project, "work-pool", "create", POOL, "--type", "process")
        if created.returncode:
            raise StackError(f"prefect work-pool create {POOL} failed: "
                             f"{created.stderr.strip() or created.stdout.strip()}")
    log = _log_file(settings, "prefect-worker")
    _spawn(settings, "prefect-worker", [str(BIN / "prefect"), "worker", "start", "--pool", POOL,
                                        "--name", f"{POOL}-stack"],
           project, lambda: "started" in (log.read_text(errors="replace") if log.is_file() else ""))


def start_dask(settings: Settings) -> None:
    """The scheduler, and workers that import the project's code from its folder and report to
    the stack's Prefect API."""
    address = settings.project_env()["DASK_SCHEDULER_ADDRESS"]
    _spawn(settings, "dask", [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1",
                              "--port", str(settings.ports["dask"]), "--no-dashboard"],
           _env(settings), lambda: not port_free(settings.ports["dask"]))
    env = _env(settings, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               PREFECT_API_URL=settings.project_env()["PREFECT_API_URL"])
    _spawn(settings, "dask-workers", [str(BIN / "dask"), "worker", address, "--nworkers",
                                      str(settings.dask_workers), "--nthreads", "1",
                                      "--no-dashboard", "--host", "127.0.0.1"],
           env, lambda: _dask_workers(address) >= settings.dask_workers)


def _dask_workers(address: str) -> int:
    from distributed import Client

    try:
        with Client(address, timeout=5) as client:
            return len(client.scheduler_info()["workers"])
    except OSError:
        return 0


@dataclass(frozen=True)
class Service:
    name: str
    start: Callable[[Settings], None]
    stop: Callable[[Settings], bool]
    processes: tuple[str, ...] = ()  # the spawned processes it owns, for status


def _stopper(*names: str) -> Callable[[Settings], bool]:
    return lambda settings: any([_stop(settings, name) for name in reversed(names)])


SERVICES = (
    Service("postgres", start_postgres, stop_postgres),
    Service("s3", start_s3, _stopper("s3"), ("s3",)),
    Service("mlflow", start_mlflow, _stopper("mlflow"), ("mlflow",)),
    Service("prefect", start_prefect, _stopper("prefect", "prefect-worker"),
            ("prefect", "prefect-worker")),
    Service("dask", start_dask, _stopper("dask", "dask-workers"), ("dask", "dask-workers")),
)


# ---------------------------------------------------------------------------------------------
# the commands
# ---------------------------------------------------------------------------------------------
def _check_ports(settings: Settings) -> None:
    taken = [f"{name} ({port}, {port_variable(name)})" for name, port in settings.ports.items()
             if not port_free(port) and not _owned(settings, name)]
    if taken:
        raise StackError("ports already in use by something else: " + ", ".join(taken))


def _owned(settings: Settings, name: str) -> bool:
    if name == "postgres":
        return (settings.home / "postgres" / "data" / "postmaster.pid").is_file()
    return _running_pid(settings, name) is not None


def write_env_file(settings: Settings) -> Path:
    lines = [f"{key}={value}" for key, value in settings.project_env().items()]
    write_private(settings.env_file, "# written by `make stack-up`: `set -a; . .stack/stack.env; "
                  "set +a`\n" + "\n".join(lines) + "\n")
    return settings.env_file


def up(settings: Settings, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Start every service not yet running; on a failure stop what this call started."""
    settings.home.mkdir(parents=True, exist_ok=True)
    _check_ports(settings)
    started: list[Service] = []
    try:
        for service in SERVICES:
            began = time.monotonic()
            service.start(settings)
            started.append(service)
            echo(f"  {service.name:<9} up ({time.monotonic() - began:4.1f} s)")
    except BaseException:
        for service in reversed(started):
            service.stop(settings)
        raise
    write_env_file(settings)
    return settings.project_env()


def down(settings: Settings, echo: Callable[[str], None] = print) -> None:
    for service in reversed(SERVICES):
        echo(f"  {service.name:<9} {'stopped' if service.stop(settings) else 'was not running'}")


def status(settings: Settings) -> dict[str, bool]:
    state = {service.name: all(_running_pid(settings, name) for name in service.processes)
             for service in SERVICES if service.processes}
    return {"postgres": _owned(settings, "postgres"), **state}


@contextmanager
def running(settings: Settings) -> Iterator[dict[str, str]]:
    """The stack up for the block (tests): yields the project's variables, stops it after."""
    try:
        yield up(settings, echo=lambda line: None)
    finally:
        down(settings, echo=lambda line: None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "status"))
    command = parser.parse_args(argv).command
    settings = Settings.from_environment()
    try:
        if command == "up":
            print(f"starting the stack in {settings.home}")
            env = up(settings)
            print(f"\nMLflow UI     {env['MLFLOW_TRACKING_URI']}\nPrefect UI    "
                  f"{settings.url('prefect')}\nvariables     {settings.env_file}\n\n"
                  f"point the project at it:  set -a; . {settings.env_file}; set +a; make run")
        elif command == "down":
            down(settings)
        else:
            for name, alive in status(settings).items():
                print(f"  {name:<9} {'up' if alive else 'down'}")
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # tasks.services.environment, when run as a script
    sys.exit(main())

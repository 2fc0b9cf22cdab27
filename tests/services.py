"""Real services for tests: a process on 127.0.0.1 for the length of a block, moto's S3 server,
and AWS credentials that reach nothing but it.

Each service binds a free port, is waited for with a deadline and is stopped (its whole process
group) when the block ends, whether the test passed or not.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the test interpreter's bin/: mlflow, moto_server, dvc
STARTUP_TIMEOUT_S = 60
sys.path.insert(0, str(REPO / "infra"))
from stack import answers  # noqa: E402  (infra/ holds scripts, not a package)

__all__ = ["answers", "aws_test_credentials", "free_port", "s3_server", "service", "service_env",
           "skip_or_fail"]


def skip_or_fail(reason: str, variable: str) -> None:
    """Skip the test for want of `reason`, or fail it where it must run: in CI (CI=true) or when
    `variable` is 1."""
    if os.environ.get("CI", "").lower() in ("true", "1") or os.environ.get(variable) == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def service(command: list[str], cwd: Path, env: dict[str, str], ready: Callable[[], bool],
             log: Path) -> Iterator[subprocess.Popen]:
    """Start `command` in its own process group, wait until `ready()`, stop the group on exit."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"{command[0]} exited with {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{command[0]} not ready after {STARTUP_TIMEOUT_S} s:\n"
                            f"{log.read_text()}")
            time.sleep(0.25)
        yield process
    finally:
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue


def service_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)  # the server's store comes from its flags only
    return env


@contextmanager
def s3_server(folder: Path, port: int | None = None) -> Iterator[str]:
    """moto's S3 server (on `port`, else a free one); yields its endpoint URL."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with service(command, folder, service_env(), lambda: answers(f"{url}/moto-api/"),
                 folder / f"moto-{port}.log"):
        yield url


@contextmanager
def forwarding(port: int, target: int) -> Iterator[None]:
    """Connections to 127.0.0.1:`port` relayed to 127.0.0.1:`target` while the block runs: a
    service that becomes reachable at a chosen moment, already set up behind it."""
    import socketserver
    import threading

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        with suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    class Relay(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with socket.create_connection(("127.0.0.1", target)) as upstream:
                back = threading.Thread(target=pipe, args=(upstream, self.request), daemon=True)
                back.start()
                pipe(self.request, upstream)
                back.join()

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", port), Relay) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield
        finally:
            server.shutdown()


def aws_test_credentials(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Dummy credentials (moto accepts any) and no AWS configuration from the user's home."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                       "AWS_CONFIG_FILE": str(folder / "aws-config"),
                       "AWS_SHARED_CREDENTIALS_FILE": str(folder / "aws-credentials"),
                       "DVC_NO_ANALYTICS": "1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)

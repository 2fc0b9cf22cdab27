"""A temporary Prefect API for one command, started in the background while the command works.

Without PREFECT_API_URL, Prefect starts a temporary server itself when the first flow runs: it
imports the whole server in this process first (~5 s here), then starts it in a subprocess and
waits (~6 s). Most of that is start-up work that has nothing to wait for, and on a cached re-run it
was most of the run. So the command starts the same server (Prefect's own app under uvicorn,
exactly as Prefect launches it) as the very first thing, goes on importing, checking the cache and
opening the MLflow store meanwhile, and only waits for the server right before the flow starts.
With PREFECT_API_URL set (a running Prefect server), nothing is started.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_PORT_IN_USE_EXIT = 3  # uvicorn's exit code when it cannot bind
_PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the command dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the server may outlive a kill
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _start(port: int) -> subprocess.Popen:
    prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent), "--factory",
         "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "error", "--lifespan", "on"],
        env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509 - called before any thread starts


def _healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(f"{url}/health", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class TemporaryServer:
    """A Prefect API server process; `wait()` blocks until it answers."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.port = _free_port()
        self.process = _start(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not _healthy(self.url):
            if self.process.poll() == _PORT_IN_USE_EXIT:  # someone took the port meanwhile
                self.port = _free_port()
                self.process = _start(self.port)
            elif self.process.poll() is not None:
                raise RuntimeError(f"the temporary Prefect server exited with code "
                                   f"{self.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the temporary Prefect server did not answer within "
                                   f"{self.timeout_s:.0f} s (PREFECT_SERVER_EPHEMERAL_STARTUP_"
                                   "TIMEOUT_SECONDS)")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def prefect_api() -> Iterator[TemporaryServer | None]:
    """Point Prefect at PREFECT_API_URL when set; else start a temporary server for the block
    (call `.wait()` on it before the first flow) and stop it afterwards."""
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    server = TemporaryServer(float(os.environ.get(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")))
    os.environ["PREFECT_API_URL"] = server.url  # before prefect reads its settings
    try:
        yield server
    finally:
        del os.environ["PREFECT_API_URL"]
        server.stop()

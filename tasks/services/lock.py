"""One run at a time per checkout: a second `shrinkflow run` (or `stage`) waits for the first.

Two runs writing the same outputs, stamps and dvc.lock at once would interleave their files. The
lock is an advisory `flock` on `.shrinkflow/lock`: the kernel releases it when the holder exits,
however it exits (SIGKILL included), so a killed run never leaves a stale lock behind. The file
says who holds it, and a waiting run prints that once. Separate checkouts have separate locks and
never wait for each other, even when they share one MLflow store. The lock is re-entrant within
a process (the CLI takes it, then the flow it calls takes it again).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.services.catalog import Catalog

log = logging.getLogger("shrinkflow.lock")
_held: dict[Path, int] = {}  # lock file -> depth, for re-entry within this process
_guard = threading.Lock()


def _holder() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def describe_holder(path: Path) -> str:
    """Who holds the lock at `path`, in words (as far as its file says)."""
    try:
        holder = json.loads(path.read_text())
        return (f"pid {holder['pid']} on {holder['host']} (`{holder['command']}`, "
                f"since {holder['since']})")
    except (OSError, ValueError, KeyError):
        return "another run"


@contextmanager
def project_lock(root: Path) -> Iterator[None]:
    """Hold the checkout's lock for the block; wait (saying for whom) while another run has it."""
    path = Catalog.at(root).lock_file
    with _guard:
        if path in _held:
            _held[path] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _guard:
                _held[path] -= 1
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for the run in %s to finish: held by %s", Catalog.at(root).root,
                        describe_holder(path))
            fcntl.flock(handle, fcntl.LOCK_EX)
            log.warning("the other run finished; going on")
        os.ftruncate(handle, 0)
        os.pwrite(handle, json.dumps(_holder()).encode(), 0)
        with _guard:
            _held[path] = 1
        try:
            yield
        finally:
            with _guard:
                del _held[path]
            os.ftruncate(handle, 0)
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        os.close(handle)

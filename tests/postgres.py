"""A real PostgreSQL server for tests: a throw-away cluster on a free port of 127.0.0.1.

The server binaries of the machine image are used (`initdb`, `pg_ctl`); they refuse to run as
root, so they run as the `postgres` user on a data folder it owns. Trust authentication on
127.0.0.1 only, fsync off (a test database need not survive a power cut).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
USER = "postgres"


def server_binaries() -> Path | None:
    """The newest installed PostgreSQL server's bin/ folder, or None."""
    found = sorted(glob.glob(PG_BIN_GLOB), key=lambda path: int(Path(path).parent.name))
    return Path(found[-1]) if found and (Path(found[-1]) / "pg_ctl").exists() else None


def missing_reason() -> str | None:
    """Why no server can be started here (None: one can)."""
    if server_binaries() is None:
        return f"no PostgreSQL server binaries ({PG_BIN_GLOB}/pg_ctl)"
    if shutil.which("runuser") is None or os.geteuid() != 0:
        return "starting PostgreSQL needs root and runuser (to run it as the postgres user)"
    try:
        import pwd

        pwd.getpwnam(USER)
    except KeyError:
        return f"no {USER!r} system user to run PostgreSQL as"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(*command: str) -> None:
    done = subprocess.run(["runuser", "-u", USER, "--", *command], capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode:
        raise RuntimeError(f"{Path(command[0]).name} failed ({done.returncode}): "
                           f"{done.stderr.strip() or done.stdout.strip()}")


@contextmanager
def running_postgres(database: str = "shrinkflow") -> Iterator[str]:
    """Start a server with an empty `database`; yields its SQLAlchemy URL. Its folder is a new
    one under the system temporary folder (the postgres user cannot reach a root-only one) and
    is removed afterwards."""
    import pwd

    binaries, port = server_binaries(), _free_port()
    account = pwd.getpwnam(USER)
    with tempfile.TemporaryDirectory(prefix="shrinkflow-postgres-") as name:
        folder = Path(name)
        os.chown(folder, account.pw_uid, account.pw_gid)
        data, log = folder / "data", folder / "server.log"
        _as_postgres(str(binaries / "initdb"), "-D", str(data), "-U", USER, "-A", "trust",
                     "--no-sync", "-E", "UTF8")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
        _as_postgres(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log),
                     "-w", "-t", "60", "start")
        try:
            _as_postgres(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                         USER, database)
            yield f"postgresql://{USER}@127.0.0.1:{port}/{database}"
        finally:
            _as_postgres(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")

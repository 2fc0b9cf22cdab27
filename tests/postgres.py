"""Can the service stack's PostgreSQL start here? infra/stack.py runs the machine image's server
binaries (`initdb`, `pg_ctl`) as the current user, or as the `postgres` user when that is root
(the server refuses to run as root)."""

from __future__ import annotations

import glob
import os
import shutil
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
    if os.geteuid() != 0:
        return None  # the server runs as this user
    if shutil.which("runuser") is None:
        return "as root, PostgreSQL runs as the postgres user through runuser, which is missing"
    try:
        import pwd

        pwd.getpwnam(USER)
    except KeyError:
        return f"as root, PostgreSQL runs as the {USER!r} system user, which does not exist"
    return None

"""Atomic writes: a killed run never leaves a half-written artifact.

Files are written next to their target under a temporary name and renamed into place; folders are
built in a temporary sibling folder and swapped in whole. Readers see the old version or the new
one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _publish_mode(path: Path) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give them the usual permissions."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `target`, on error it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        _publish_mode(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `target` as a whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield staging
        _publish_mode(staging)
        retired = target.with_name(f".{target.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        if target.exists():
            os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(target: Path, data: Any) -> Path:
    with atomic_file(target) as temporary:
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return target


def write_text(target: Path, text: str) -> Path:
    with atomic_file(target) as temporary:
        temporary.write_text(text)
    return target


def read_json(path: Path, produced_by: str) -> Any:
    """Read a stage output, saying which stage should have produced it when it is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the '{produced_by}' stage first")
    return json.loads(path.read_text())

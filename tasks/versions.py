"""Versioning with DVC: a finished pipeline run is recorded in dvc.lock and pushed to the remote.

A recording leaves a receipt: a fingerprint of the outputs, of dvc.lock and of which objects
dvc.lock lists the (local) remote holds, taken once the push is done. An unchanged re-run finds the
same fingerprint and records nothing; a lost dvc.lock or an emptied remote changes it, and the
recording runs again. A remote that cannot be checked cheaply (S3) is recorded on every run.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import dag, io
from tasks.catalog import Catalog, file_md5, tree_digest
from tasks.stage_tasks import RETRIES


class DvcError(RuntimeError):
    """A DVC command failed; its message carries DVC's own output."""


def _local_remote(root: Path) -> Path | None:
    """The default DVC remote's folder when it is a local path; None for S3 and the like (or
    when none is configured)."""
    texts = [path.read_text() for path in (root / ".dvc" / "config", root / ".dvc" / "config.local")
             if path.is_file()]
    config = "\n".join(texts)
    default = re.findall(r"^\s*remote\s*=\s*(\S+)", config, flags=re.MULTILINE)
    if not default:
        return None
    section = re.search(rf"\[\s*'remote \"{re.escape(default[-1])}\"'\s*\]([^\[]*)", config)
    url = re.search(r"^\s*url\s*=\s*(\S+)", section.group(1), flags=re.MULTILINE) if section else None
    if url is None or "://" in url.group(1):
        return None
    return (root / ".dvc" / url.group(1)).resolve()


def _recorded_objects(lock: Path) -> list[str]:
    """md5 of every output recorded in dvc.lock (a folder's is its .dir listing)."""
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return [out["md5"] for item in stages.values() for out in item.get("outs", []) if "md5" in out]


def _remote_has(remote: Path, md5: str) -> bool:
    """Is the object (and, for a folder, every file it lists) in the local remote?"""
    path = remote / "files" / "md5" / md5[:2] / md5[2:]
    if not path.is_file():
        return False
    if md5.endswith(".dir"):
        return all(_remote_has(remote, entry["md5"]) for entry in json.loads(path.read_text()))
    return True


def fingerprint(root: Path, stages: list[str]) -> str | None:
    """The outputs, dvc.lock as it is, and whether the remote holds what dvc.lock lists; None when
    there is no dvc.lock or the remote cannot be checked cheaply (S3)."""
    remote = _local_remote(root)
    if remote is None:
        return None
    catalog, digest = Catalog.at(root), hashlib.sha256()
    for stage in stages:
        for path in dag.stage(stage).outputs:
            digest.update(tree_digest(catalog.path(path)).encode())
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    digest.update(file_md5(lock).encode())
    for md5 in _recorded_objects(lock):
        digest.update(f"{md5}:{_remote_has(remote, md5)}".encode())
    return digest.hexdigest()


def recordable(params_file: str, overlays: list[str] | None, overrides: list[str] | None) -> bool:
    """dvc.lock pairs outputs with params.yaml: a run on other params must not be recorded there."""
    return Path(params_file).name == "params.yaml" and not overlays and not overrides


def _dvc(root: Path, *args: str) -> str:
    # the interpreter's own DVC: works whether or not the venv's bin/ is on PATH
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        raise DvcError(f"dvc {args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


@task(name="record-versions", cache_policy=NO_CACHE, **RETRIES)
def record_versions(root: Path, stages: list[str]) -> dict[str, Any]:
    """`dvc commit` the stages' outputs into dvc.lock and the DVC cache, then `dvc push`, unless
    the receipt of the last recording shows dvc.lock and the remote already hold them."""
    root = Path(root)
    if not (root / ".dvc").is_dir():
        return {"recorded": False, "reason": "not a DVC repository"}
    receipt = Catalog.at(root).stamp_file("record-versions")
    current = fingerprint(root, stages)
    if current is not None and receipt.is_file() and receipt.read_text().strip() == current:
        return {"recorded": False, "reason": "dvc.lock and the remote already hold these outputs"}
    receipt.unlink(missing_ok=True)
    _dvc(root, "commit", "--force", *stages)
    pushed = _dvc(root, "push", *stages)
    done = fingerprint(root, stages)
    if done is not None:
        io.write_text(receipt, done + "\n")
    return {"recorded": True, "pushed": pushed.strip().splitlines()[-1:] or []}

"""Versioning with DVC: a finished pipeline run is recorded in dvc.lock and pushed to the remote.

The remote is DVC's default one (a folder in the project unless .dvc/config says otherwise), or
the S3 prefix SHRINKFLOW_DVC_REMOTE names (endpoint and credentials from the environment), which
becomes the remote "shared" of the machine's own .dvc/config.local. An S3 remote is checked with
boto3 before anything is committed or pushed: a missing bucket or missing credentials stop the
recording with an error naming the remote, and an unreachable endpoint is retried with backoff.

A recording leaves a receipt: a fingerprint of the outputs, of dvc.lock and of which objects
dvc.lock lists the (local) remote holds, taken once the push is done. An unchanged re-run finds the
same fingerprint and records nothing; a lost dvc.lock or an emptied remote changes it, and the
recording runs again. A remote that cannot be checked cheaply (S3) is recorded on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from shrinkflow.config import safe_load
from shrinkflow.errors import UserError
from tasks.services import dag, io
from tasks.services.catalog import Catalog, file_md5, tree_digest
from tasks.services.environment import DVC_REMOTE_VARIABLE, S3_ENDPOINT_VARIABLE
from tasks.services.faults import retry_when_transient

SHARED_REMOTE = "shared"  # the remote SHRINKFLOW_DVC_REMOTE configures
# a push that fails on a transient fault is tried again after 1, 2, 4 and 8 s (+-50 %)
PUSH_RETRIES = {"retries": 4, "retry_delay_seconds": exponential_backoff(backoff_factor=1),
                "retry_jitter_factor": 0.5, "retry_condition_fn": retry_when_transient}


class DvcError(UserError):
    """A DVC command failed; its message carries DVC's own output."""


class RemoteError(UserError):
    """The DVC remote cannot take a push: the message names the remote and what is missing."""


class RemoteUnreachable(RemoteError, ConnectionError):
    """The remote's endpoint did not answer: worth a retry (a ConnectionError is transient)."""


@dataclass(frozen=True)
class Remote:
    name: str
    url: str  # as DVC resolves it: an absolute folder for a local remote
    endpoint: str | None = None  # an S3 server other than AWS's
    # credentials .dvc/config gives the remote itself (a profile, keys), as boto3 session options;
    # never printed
    session: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def folder(self) -> Path | None:
        """The remote's folder when it is a local one (None for S3 and the like)."""
        return None if "://" in self.url else Path(self.url)

    def __str__(self) -> str:
        at = f" at {self.endpoint}" if self.endpoint else ""
        return f"DVC remote {self.name!r} ({self.url}{at})"


def remote(root: Path) -> Remote | None:
    """Where a recording pushes to: SHRINKFLOW_DVC_REMOTE when set, else DVC's default remote
    (None when there is none, or no DVC repository)."""
    if not (root / ".dvc").is_dir():
        return None
    url = os.environ.get(DVC_REMOTE_VARIABLE)
    if url:
        if not url.startswith("s3://") or not urlparse(url).netloc:
            raise RemoteError(f"{DVC_REMOTE_VARIABLE}={url!r} is not an S3 URL (s3://bucket/prefix)")
        return Remote(SHARED_REMOTE, url, os.environ.get(S3_ENDPOINT_VARIABLE) or None)
    from dvc.config import Config

    config = Config(dvc_dir=str(root / ".dvc"))
    name = config["core"].get("remote")
    if not name:
        return None
    if name not in config["remote"]:
        raise RemoteError(f"DVC's default remote {name!r} is not defined in .dvc/config")
    section = config["remote"][name]
    own = {"profile_name": section.get("profile"), "aws_access_key_id": section.get("access_key_id"),
           "aws_secret_access_key": section.get("secret_access_key")}
    return Remote(name, section["url"], section.get("endpointurl"),
                  tuple((key, value) for key, value in own.items() if value))


def check_s3(target: Remote) -> None:
    """Can `target` take a push? Credentials exist and the bucket answers; raises RemoteError
    (RemoteUnreachable when the endpoint does not answer) otherwise."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket = urlparse(target.url).netloc
    session = boto3.session.Session(**dict(target.session))
    if session.get_credentials() is None:
        raise RemoteError(f"{target}: no S3 credentials; set AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
    try:
        # one attempt: the retries and their backoff are the task's (PUSH_RETRIES)
        once = Config(connect_timeout=10, read_timeout=30, retries={"total_max_attempts": 1})
        session.client("s3", endpoint_url=target.endpoint, config=once).head_bucket(Bucket=bucket)
    except NoCredentialsError as error:
        raise RemoteError(f"{target}: no S3 credentials ({error})") from error
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code"))
        if code in ("404", "NoSuchBucket"):
            raise RemoteError(f"{target}: bucket {bucket!r} does not exist") from error
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise RemoteError(f"{target}: these credentials may not use bucket {bucket!r} "
                              f"({code})") from error
        raise
    except BotoCoreError as error:  # endpoint connection errors and timeouts
        raise RemoteUnreachable(f"{target}: cannot reach the S3 endpoint ({error})") from error


def ready(root: Path | str) -> Remote | None:
    """The remote, checked (S3) and, for SHRINKFLOW_DVC_REMOTE, written into this machine's
    .dvc/config.local; before anything is committed or pushed."""
    target = remote(root)
    if target is not None and target.url.startswith("s3://"):
        check_s3(target)
    if target is not None and target.name == SHARED_REMOTE:
        from dvc.config import Config

        with Config(dvc_dir=str(root / ".dvc")).edit("local") as local:
            local["remote"][SHARED_REMOTE] = {
                "url": target.url, **({"endpointurl": target.endpoint} if target.endpoint else {})}
    return target


def _recorded_objects(lock: Path) -> list[str]:
    """md5 of every output recorded in dvc.lock (a folder's is its .dir listing)."""
    stages = (safe_load(lock.read_text()) or {}).get("stages", {})
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
    target = remote(root)
    folder = target.folder if target is not None else None
    if folder is None:
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
        digest.update(f"{md5}:{_remote_has(folder, md5)}".encode())
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


@task(name="record-versions", cache_policy=NO_CACHE, **PUSH_RETRIES)
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
    target = ready(root)
    receipt.unlink(missing_ok=True)
    _dvc(root, "commit", "--force", *stages)
    pushed = _dvc(root, "push", *_remote_option(target), *stages)
    done = fingerprint(root, stages)
    if done is not None:
        io.write_text(receipt, done + "\n")
    return {"recorded": True, "pushed": pushed.strip().splitlines()[-1:] or []}


# before the stages run: a remote that cannot take the push fails the run at once, not at its end
check_remote = task(ready, name="check-remote", cache_policy=NO_CACHE, persist_result=False,
                    **PUSH_RETRIES)


def _remote_option(target: Remote | None) -> list[str]:
    return ["--remote", target.name] if target is not None else []


def pull(root: Path) -> str:
    """`dvc pull` what dvc.lock lists from the remote (checked first, as for a push)."""
    return _dvc(root, "pull", *_remote_option(ready(root)))

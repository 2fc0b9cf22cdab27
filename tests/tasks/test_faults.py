"""tasks.services.faults: only faults that may pass on their own are retried."""

from __future__ import annotations

import errno
import sqlite3

import pytest

from shrinkflow.config import ConfigError
from shrinkflow.data import DataError
from tasks.services.faults import is_transient
from tasks.services.io import MissingInputError


def _raised_from(error: BaseException, cause: BaseException) -> BaseException:
    try:
        raise error from cause
    except BaseException as raised:  # noqa: BLE001 - building a chained exception
        return raised


@pytest.mark.parametrize("error", [
    ConnectionResetError("peer reset"),
    TimeoutError("read timed out"),
    OSError(errno.ECONNREFUSED, "Connection refused"),
    sqlite3.OperationalError("database is locked"),
    RuntimeError("dvc push failed: Unable to locate credentials ... Read timed out"),
    _raised_from(RuntimeError("API request failed"), ConnectionRefusedError()),
], ids=["reset", "timeout", "refused", "sqlite-locked", "dvc-timeout", "wrapped"])
def test_network_and_locking_faults_are_transient(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    MissingInputError("data/processed/train.npz not found: run the 'prepare' stage first"),
    FileNotFoundError(errno.ENOENT, "No such file", "models/baseline/model.pt"),
    PermissionError(errno.EACCES, "Permission denied"),
    DataError("column 'a' has NaN"),
    ConfigError("unknown key 'baseline.train.lrr'"),
    ValueError("shapes differ"),
    KeyError("val_accuracy"),
], ids=["missing-input", "missing-file", "permission", "data", "config", "value", "key"])
def test_deterministic_errors_are_not_retried(error):
    assert not is_transient(error)

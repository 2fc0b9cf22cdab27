"""Which failures are worth a retry: transient faults of the services around the pipeline.

A retry helps when the same call may succeed a moment later: a network hiccup, a throttled or
briefly unavailable S3 or tracking server, a SQLite store locked by another writer. It only wastes
time (and buries the message under repeated tracebacks) when the failure is deterministic: bad
data, a bad config, a missing upstream output, a bug. Those fail at once.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

# errno values of OSErrors that come and go (a missing file or a refused permission does not)
_TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET,
                               errno.ECONNREFUSED, errno.ECONNABORTED, errno.EHOSTUNREACH,
                               errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE})
# exception classes of network and storage clients, by name: importing those libraries just to
# classify an error would cost seconds at start-up
_TRANSIENT_CLASSES = frozenset({
    "requests.exceptions.ConnectionError", "requests.exceptions.Timeout",
    "requests.exceptions.ConnectTimeout", "requests.exceptions.ReadTimeout",
    "urllib3.exceptions.ProtocolError", "urllib3.exceptions.MaxRetryError",
    "urllib3.exceptions.NewConnectionError", "urllib3.exceptions.TimeoutError",
    "httpx.ConnectError", "httpx.ReadError", "httpx.WriteError", "httpx.ConnectTimeout",
    "httpx.ReadTimeout", "httpx.WriteTimeout", "httpx.PoolTimeout", "httpx.RemoteProtocolError",
    "botocore.exceptions.EndpointConnectionError", "botocore.exceptions.ConnectTimeoutError",
    "botocore.exceptions.ReadTimeoutError", "botocore.exceptions.ConnectionClosedError",
})
# what wrapped errors (an MLflow exception around SQLAlchemy's, DVC's stderr) say when the
# underlying fault is one of the above
_TRANSIENT_MESSAGES = ("database is locked", "database is busy", "connection refused",
                       "connection reset", "connection aborted", "timed out",
                       "temporarily unavailable", "service unavailable", "too many requests",
                       "slowdown", "throttl", "could not connect", "name resolution")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and the ones it was raised from or during, innermost last."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _qualified_names(error: BaseException) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(error).__mro__}


def is_transient(error: BaseException) -> bool:
    """True when `error` (or one it was raised from) is a fault that may pass on its own."""
    for item in _chain(error):
        if isinstance(item, (ConnectionError, TimeoutError)):
            return True
        if isinstance(item, OSError) and item.errno in _TRANSIENT_ERRNOS:
            return True
        if _qualified_names(item) & _TRANSIENT_CLASSES:
            return True
        if any(marker in str(item).lower() for marker in _TRANSIENT_MESSAGES):
            return True
    return False


def retry_when_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry_condition_fn: retry a failed task only on a transient fault."""
    try:
        state.result()
    except Exception as error:  # noqa: BLE001 - classified, not handled
        return is_transient(error)
    return False

"""Micro-batching: requests that arrive together share one ONNX Runtime call.

A small model spends most of a one-row call on fixed costs (the Python binding, thread hand-off,
output allocation), so under concurrent load one call on 32 rows costs little more than one on a
single row. `MicroBatcher` collects the rows of concurrent requests and runs them together:

  - the first request waiting opens a batch; later ones join it until it holds `max_batch` rows or
    `max_wait_ms` has passed since that first request arrived. Requests already queued when the
    time is up still join (up to `max_batch`): under load a batch never waits, it just grows.
    The wait is only paid while requests come together (the last batch answered more than one):
    a lone client's request runs at once instead of waiting for company that is not coming.
  - a request that would overflow the batch opens the next one; a request larger than `max_batch`
    runs alone. A request is never split, so all its rows get the same model version.
  - the batch runs on the model current when it starts (`current_model()`), in one worker thread,
    so the event loop keeps accepting requests meanwhile; each request gets its own slice back.
  - an error in the call reaches every request of that batch; a request whose row width does not
    fit the model (the model changed while it waited) gets `ModelChanged` alone.

`batches_run` counts model calls and `requests_run` the requests they answered: their ratio is the
batching actually achieved (reported by /health).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass

import numpy as np

from serving.model import ServedModel

log = logging.getLogger(f"shrinkflow.{__name__}")  # under "shrinkflow": the CLI logs it at INFO
Result = tuple[ServedModel, list[str], np.ndarray]  # (model used, labels, probabilities [n, K])


class ModelChanged(RuntimeError):
    """The model was swapped for one with another number of features while the request waited."""


class BatcherStopped(RuntimeError):
    """The batcher stopped (the server is shutting down) before the request was answered."""


@dataclass
class _Pending:
    rows: np.ndarray
    columns: tuple[str, ...] | None  # the model layout the rows were parsed for (None: any)
    future: asyncio.Future[Result]
    arrived: float  # event-loop time, the start of the wait when this request opens a batch


class MicroBatcher:
    """Runs the rows of concurrent `submit` calls in shared model calls; `start` before use,
    `stop` at shutdown (from the same event loop)."""

    def __init__(self, current_model: Callable[[], ServedModel], *, max_batch: int = 64,
                 max_wait_ms: float = 2.0) -> None:
        self.current_model = current_model
        self.max_batch = max_batch  # rows per model call; a bigger request still runs, alone
        self.max_wait = max_wait_ms / 1000  # latency a lone request pays hoping for company
        self.batches_run = 0
        self.requests_run = 0
        self._last_requests = 0  # requests in the last batch: more than one means concurrent load
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()  # replaced by `start`, in its loop
        self._batch: list[_Pending] = []  # being collected or run: failed by `stop` if cut short
        self._held: _Pending | None = None  # did not fit the last batch: opens the next one
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("MicroBatcher.start: already running")
        self._queue = asyncio.Queue()
        # one thread: batches run one after another, each with all of ORT's intra-op threads
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shrinkflow-predict")
        self._task = asyncio.create_task(self._loop(), name="shrinkflow-micro-batcher")

    async def stop(self) -> None:
        """Stop collecting; requests not answered yet fail with `BatcherStopped`."""
        task, executor = self._task, self._executor
        if task is None or executor is None:
            return
        self._task = self._executor = None
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        self._fail_waiting(BatcherStopped("the server is shutting down; send the request again"))
        await asyncio.to_thread(executor.shutdown)  # lets a call in progress finish off the loop

    async def submit(self, rows: np.ndarray, columns: tuple[str, ...] | None = None) -> Result:
        """(model used, labels, probabilities) for `rows` (float32 [n, F], or images), run with
        whatever other requests arrive meanwhile. `columns`: the model's `layout` the rows were
        parsed for (its feature names in order, or its image shape); a model of another layout
        (swapped in meanwhile) refuses them rather than misread them."""
        if self._task is None or self._task.done():
            raise BatcherStopped("the server is not running its model loop; send the request again")
        loop = asyncio.get_running_loop()
        pending = _Pending(rows, columns, loop.create_future(), loop.time())
        self._queue.put_nowait(pending)
        return await pending.future

    async def _loop(self) -> None:
        while True:
            try:
                await self._run(await self._collect())
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a bug here must not leave later requests waiting forever
                log.exception("micro-batcher: a batch failed unexpectedly")
                _fail(self._batch, error)
            self._batch = []

    async def _collect(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        first = self._held or await self._queue.get()
        self._held = None
        self._batch = [first]
        wait = self.max_wait if self._last_requests > 1 else 0.0
        size, deadline = len(first.rows), first.arrived + wait
        while size < self.max_batch:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        item = await self._queue.get()
                except TimeoutError:
                    break
            else:
                item = self._queue.get_nowait()
            if size + len(item.rows) > self.max_batch:
                self._held = item
                break
            self._batch.append(item)
            size += len(item.rows)
        return self._batch

    async def _run(self, batch: list[_Pending]) -> None:
        live = [item for item in batch if not item.future.done()]  # skip requests already cancelled
        if not live:
            return
        try:
            model = self.current_model()
        except Exception as error:  # e.g. no model loaded: every request of the batch hears it
            _fail(live, error)
            return
        fits = [_fits(item, model) for item in live]
        if not all(fits):
            _fail([item for item, ok in zip(live, fits, strict=True) if not ok], ModelChanged(
                f"the model changed to version {model.version} (inputs of shape {model.row_shape}) "
                "while the request waited; send it again"))
            live = [item for item, ok in zip(live, fits, strict=True) if ok]
            if not live:
                return
        self.batches_run += 1
        loop = asyncio.get_running_loop()
        try:
            labels, probabilities = await loop.run_in_executor(
                self._executor, _predict, model, [item.rows for item in live])
        except Exception as error:
            log.warning("model call on a batch of %d requests failed: %s", len(live), error)
            _fail(live, error)
            return
        self.requests_run += len(live)
        self._last_requests = len(live)
        start = 0
        for item in live:
            end = start + len(item.rows)
            if not item.future.done():
                item.future.set_result((model, labels[start:end], probabilities[start:end]))
            start = end

    def _fail_waiting(self, error: Exception) -> None:
        waiting = [*self._batch, *([self._held] if self._held else [])]
        self._batch, self._held = [], None
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        _fail(waiting, error)


def _fits(item: _Pending, model: ServedModel) -> bool:
    """Were the rows parsed for this model's layout (or, without one, of its row shape)?"""
    if item.columns is not None:
        return item.columns == model.layout
    return item.rows.shape[1:] == model.row_shape


def _predict(model: ServedModel, parts: list[np.ndarray]) -> tuple[list[str], np.ndarray]:
    """One model call on the concatenated rows (in the worker thread: concatenation is a copy)."""
    return model.predict(parts[0] if len(parts) == 1 else np.concatenate(parts))


def _fail(items: list[_Pending], error: Exception) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(error)

"""MicroBatcher: concurrent requests share model calls, each gets its own rows back, a big request
runs alone, errors reach the whole batch, and start/stop leave nothing behind."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.batching import BatcherStopped, MicroBatcher, ModelChanged
from serving.model import ServedModel
from tests.serving.conftest import ROWS, ort_outputs


class CountingModel:
    """A ServedModel stand-in that records the size of every batch it is called on."""

    def __init__(self, model: ServedModel, fail: Exception | None = None) -> None:
        self.model, self.fail = model, fail
        self.version, self.feature_names = model.version, model.feature_names
        self.layout, self.row_shape = model.layout, model.row_shape
        self.batch_sizes: list[int] = []

    def predict(self, rows: np.ndarray) -> tuple[list[str], np.ndarray]:
        self.batch_sizes.append(len(rows))
        if self.fail:
            raise self.fail
        return self.model.predict(rows)


@pytest.fixture
def counting(v1: bytes) -> CountingModel:
    return CountingModel(ServedModel.from_onnx(v1, "1", {}))


def requests(count: int) -> list[np.ndarray]:
    """`count` requests of 1 to 3 rows each, all different."""
    rng = np.random.default_rng(count)
    return [rng.standard_normal((1 + index % 3, ROWS.shape[1])).astype(np.float32) for index in range(count)]


async def submit_all(batcher: MicroBatcher, batches: list[np.ndarray]) -> list:
    await batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(rows) for rows in batches), return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_requests_share_one_call_and_get_their_own_rows(counting: CountingModel, v1: bytes):
    batches = requests(10)
    batcher = MicroBatcher(lambda: counting, max_batch=64, max_wait_ms=50)

    results = asyncio.run(submit_all(batcher, batches))

    assert counting.batch_sizes == [sum(map(len, batches))], "all 10 requests should share one call"
    assert (batcher.batches_run, batcher.requests_run) == (1, 10)
    for rows, (model, labels, probabilities) in zip(batches, results, strict=True):
        expected_labels, expected_probabilities = ort_outputs(v1, rows)
        assert model is counting
        assert labels == expected_labels, "each request should get the labels of its own rows"
        np.testing.assert_allclose(probabilities, expected_probabilities, rtol=1e-6)


def test_max_batch_is_respected_and_a_big_request_runs_alone(counting: CountingModel, v1: bytes):
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n, 4)).astype(np.float32) for n in (1, 10, 1, 2, 3)]
    batcher = MicroBatcher(lambda: counting, max_batch=4, max_wait_ms=20)

    results = asyncio.run(submit_all(batcher, batches))

    assert counting.batch_sizes == [1, 10, 3, 3], "the 10-row request should run alone, unsplit"
    assert results[1][1] == ort_outputs(v1, batches[1])[0]


def test_a_failed_call_fails_every_request_of_its_batch(v1: bytes):
    broken = CountingModel(ServedModel.from_onnx(v1, "1", {}), fail=ValueError("boom"))
    batcher = MicroBatcher(lambda: broken, max_wait_ms=50)

    results = asyncio.run(submit_all(batcher, requests(5)))

    assert len(broken.batch_sizes) == 1
    assert all(isinstance(result, ValueError) and str(result) == "boom" for result in results)


def test_each_batch_runs_on_the_model_current_when_it_starts(v1: bytes, v2: bytes):
    models = [ServedModel.from_onnx(v1, "1", {}), ServedModel.from_onnx(v2, "2", {})]
    current = {"model": models[0]}
    batcher = MicroBatcher(lambda: current["model"], max_wait_ms=0)

    async def scenario() -> list[str]:
        await batcher.start()
        first = await batcher.submit(ROWS)
        current["model"] = models[1]  # the alias moves between two requests
        second = await batcher.submit(ROWS)
        await batcher.stop()
        return [first[0].version, second[0].version, first[1] == ort_outputs(v1, ROWS)[0],
                second[1] == ort_outputs(v2, ROWS)[0]]

    assert asyncio.run(scenario()) == ["1", "2", True, True]


def test_rows_of_another_width_fail_alone_with_model_changed(counting: CountingModel, v1: bytes):
    # given a request parsed for a 3-feature model, queued with one for the current 4-feature model
    batcher = MicroBatcher(lambda: counting, max_wait_ms=50)

    results = asyncio.run(submit_all(batcher, [ROWS, ROWS[:, :3]]))

    assert results[0][1] == ort_outputs(v1, ROWS)[0], "the fitting request should still be answered"
    assert isinstance(results[1], ModelChanged) and "send it again" in str(results[1])
    assert counting.batch_sizes == [len(ROWS)]


def test_stop_fails_waiting_requests_and_leaves_no_task(counting: CountingModel):
    batcher = MicroBatcher(lambda: counting, max_wait_ms=60_000)  # the batch would wait a minute

    async def scenario() -> tuple[BaseException, int]:
        await batcher.start()
        await asyncio.gather(batcher.submit(ROWS), batcher.submit(ROWS))  # requests come together
        waiting = asyncio.create_task(batcher.submit(ROWS))  # so the next batch waits for company
        await asyncio.sleep(0.01)
        await batcher.stop()
        error = await asyncio.gather(waiting, return_exceptions=True)
        return error[0], len(asyncio.all_tasks())

    error, tasks = asyncio.run(scenario())

    assert isinstance(error, BatcherStopped)
    assert tasks == 1, "only the test's own task should be left after stop"
    assert not batcher.running and counting.batch_sizes == [2 * len(ROWS)]


def test_a_lone_request_does_not_wait_for_company(counting: CountingModel):
    batcher = MicroBatcher(lambda: counting, max_wait_ms=60_000)

    async def scenario() -> float:
        await batcher.start()
        started = asyncio.get_running_loop().time()
        await batcher.submit(ROWS)
        elapsed = asyncio.get_running_loop().time() - started
        await batcher.stop()
        return elapsed

    assert asyncio.run(scenario()) < 5, "one client alone should not wait max_wait_ms"


def test_submit_before_start_is_an_error(counting: CountingModel):
    with pytest.raises(BatcherStopped, match="not running"):
        asyncio.run(MicroBatcher(lambda: counting).submit(ROWS))


def test_rows_ordered_for_other_columns_of_the_same_width_fail_with_model_changed(
        counting: CountingModel):
    # given a request whose rows were ordered for a model with the same width but other columns
    batcher = MicroBatcher(lambda: counting, max_wait_ms=50)

    async def scenario():
        await batcher.start()
        renamed = tuple(reversed(counting.feature_names))
        results = await asyncio.gather(batcher.submit(ROWS, counting.feature_names),
                                       batcher.submit(ROWS, renamed), return_exceptions=True)
        await batcher.stop()
        return results

    fitting, other = asyncio.run(scenario())
    # then only the request ordered for this model's columns is answered
    assert not isinstance(fitting, Exception)
    assert isinstance(other, ModelChanged)
    assert counting.batch_sizes == [len(ROWS)]

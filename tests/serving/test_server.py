"""A real uvicorn server under concurrent load: the MLflow registry's champion alias moves half-way
without a failed request, and concurrent requests are micro-batched into fewer ONNX Runtime calls."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.app import create_app
from tests.serving.conftest import ROWS, DictSource, ort_outputs, serve

pytestmark = pytest.mark.integration  # a real uvicorn server under load

CLIENTS = 8
POLL_SECONDS = 0.05
SWAP_SECONDS = 3.0  # the load runs this long before the alias moves, and this long after
# a swap may lag the alias by one poll plus the registry's download and a new ONNX Runtime
# session (a thread, on a busy 2-core machine)
SWAP_ALLOWANCE = POLL_SECONDS + 2.0


async def hammer(url: str, seconds: float, halfway=None) -> tuple[list[tuple[float, float, dict]], list[str]]:
    """CLIENTS concurrent clients POST /predict continuously for `seconds`; `halfway()` runs at half
    time. Returns (sent time, received time, body) of each answer, and descriptions of failures."""
    answers, failures = [], []
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        stop_at = time.monotonic() + seconds

        async def client_loop() -> None:
            while time.monotonic() < stop_at:
                sent = time.monotonic()
                try:
                    response = await client.post("/predict", json={"inputs": ROWS.tolist()})
                except httpx.HTTPError as error:
                    failures.append(repr(error))
                    continue
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text}")
                    continue
                answers.append((sent, time.monotonic(), response.json()))

        async def at_halfway() -> None:
            await asyncio.sleep(seconds / 2)
            if halfway:
                halfway()

        await asyncio.gather(*(client_loop() for _ in range(CLIENTS)), at_halfway())
    return answers, failures


class CountingLoads:
    """A model source that records which versions the server loaded, around the real one."""

    def __init__(self, source) -> None:
        self.source, self.loads = source, []

    def current_version(self) -> str | None:
        return self.source.current_version()

    def load(self, version: str):
        self.loads.append(version)
        return self.source.load(version)


@pytest.fixture
def registered(v1: bytes, v2: bytes, tmp_path: Path) -> tuple[CountingLoads, dict[str, str]]:
    """Versions 1 and 2 of a tiny classifier in the session's MLflow Model Registry, `champion`
    on version 1: the source `shrinkflow serve` reads, counting its loads; and each version's
    run id."""
    import mlflow

    from tasks.services import registry

    name, runs = f"tiny-classifier-{tmp_path.name}", {}
    # its own experiment: the default one keeps artifacts in ./mlruns of the working folder
    experiment = mlflow.create_experiment(name, artifact_location=(tmp_path / "artifacts").as_uri())
    for version, model in (("1", v1), ("2", v2)):
        file = tmp_path / f"v{version}.onnx"
        file.write_bytes(model)
        with mlflow.start_run(experiment_id=experiment) as run:
            assert registry.register(tmp_path, name, file, ROWS, {"run_id": run.info.run_id}) == version
        runs[version] = run.info.run_id
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", "1")
    return CountingLoads(registry.RegistrySource(tmp_path, name, "champion")), runs


def test_alias_swap_under_load__no_failed_request(registered, v1: bytes, v2: bytes):
    source, runs = registered
    expected = {"1": ort_outputs(v1, ROWS), "2": ort_outputs(v2, ROWS)}
    moved = {}

    def move_alias() -> None:  # the registry's own alias, as a promotion or rollback moves it
        import mlflow

        moved["at"] = time.monotonic()
        mlflow.MlflowClient().set_registered_model_alias(source.source.name, "champion", "2")

    with serve(create_app(source, poll_seconds=POLL_SECONDS)) as url:
        answers, failures = asyncio.run(hammer(url, seconds=2 * SWAP_SECONDS, halfway=move_alias))
        info = httpx.get(f"{url}/model").json()

    assert failures == [], "no request should fail while the model is swapped"
    before = [body for _, received, body in answers if received < moved["at"]]
    after = [body for sent, _, body in answers if sent > moved["at"] + SWAP_ALLOWANCE]
    assert before and {body["model"]["version"] for body in before} == {"1"}, \
        "answers before the alias moved should come from version 1"
    assert after and {body["model"]["version"] for body in after} == {"2"}, \
        "requests sent once the new version could load should be answered by version 2"
    first_v2 = min(received for _, received, body in answers if body["model"]["version"] == "2")
    assert all(body["model"]["version"] == "2" for sent, _, body in answers if sent > first_v2), \
        "once version 2 answered, version 1 should never answer again"
    for _, _, body in answers:  # each answer is entirely the work of the version it names
        labels, probabilities = expected[body["model"]["version"]]
        assert body["labels"] == labels
        np.testing.assert_array_equal(np.asarray(body["probabilities"], dtype=np.float32), probabilities)
    assert info["version"] == "2" and info["run_id"] == runs["2"]
    assert source.loads == ["1", "2"], "each version should be loaded once, without a restart"


def test_concurrent_requests_are_micro_batched(source: DictSource):
    app = create_app(source, max_wait_ms=5)

    with serve(app) as url:
        answers, failures = asyncio.run(hammer(url, seconds=0.6))
        health = httpx.get(f"{url}/health").json()

    assert failures == []
    assert health["requests"] == len(answers) > CLIENTS
    assert health["batches"] < health["requests"], \
        f"{len(answers)} concurrent requests should share ONNX Runtime calls ({health['batches']} calls)"

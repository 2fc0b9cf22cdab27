"""The `serving` section of `make bench`: `shrinkflow serve` against `mlflow models serve`.

Both servers serve the same registered model (`models:/NAME@champion`) on 127.0.0.1 and get the
same requests: one raw test row per request to `/invocations` (the payload both accept), from a
bounded async load generator (httpx; `concurrency` requests in flight, each client sending its
next request when the previous answer arrives). The two are measured in turns over several rounds
(the order alternating), so drift on a noisy machine hits both alike; each round gives a ratio,
and the ratios' spread is reported with them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
LOCALHOST = "127.0.0.1"
ROUND_SECONDS = 3.0  # load per server, per concurrency, per round
ROUNDS = 3
CONCURRENCY = (1, 8)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


@contextmanager
def running(command: list[str], cwd: Path, port: int, ready_path: str,
            env: dict[str, str] | None = None, timeout_s: float = 120) -> Iterator[str]:
    """Start a server, wait until `ready_path` answers 200, yield its base URL, stop it."""
    import httpx

    environment = {**os.environ, **(env or {}), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"http://{LOCALHOST}:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited: {process.stdout.read()[-2000:]}")
            try:
                if httpx.get(url + ready_path, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(command)} did not answer within {timeout_s:.0f} s")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


async def _load(url: str, rows: np.ndarray, concurrency: int, seconds: float) -> dict[str, float]:
    import httpx

    payloads = [{"inputs": [row.tolist()]} for row in rows]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(offset: int, session: httpx.AsyncClient) -> None:
        nonlocal errors
        index = offset
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                response = await session.post(url + "/invocations",
                                              json=payloads[index % len(payloads)])
                errors += response.status_code != 200
            except httpx.HTTPError:  # a refused or dropped connection counts, and goes on
                errors += 1
            latencies.append(time.perf_counter() - started)
            index += concurrency

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=30) as session:
        await asyncio.gather(*(client(i, session) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    milliseconds = 1000 * np.asarray(latencies)
    return {"rps": len(latencies) / elapsed, "p50_ms": float(np.percentile(milliseconds, 50)),
            "p99_ms": float(np.percentile(milliseconds, 99)), "requests": len(latencies),
            "errors": errors}


def load(url: str, rows: np.ndarray, concurrency: int, seconds: float) -> dict[str, float]:
    """Requests per second and latency percentiles of one server under `concurrency` clients."""
    return asyncio.run(_load(url, rows, concurrency, seconds))


def _compare(urls: dict[str, str], rows: np.ndarray, concurrency: int) -> dict[str, object]:
    """Both servers in turns over ROUNDS rounds; medians of each figure, the rps ratio per round."""
    load(next(iter(urls.values())), rows, concurrency, 0.5)  # warm-up of the client side
    rounds: dict[str, list[dict[str, float]]] = {server: [] for server in urls}
    for number in range(ROUNDS):
        order = list(urls) if number % 2 == 0 else list(reversed(urls))
        for server in order:
            rounds[server].append(load(urls[server], rows, concurrency, ROUND_SECONDS))
    result: dict[str, object] = {"concurrency": concurrency}
    for server, measured in rounds.items():
        for key in ("rps", "p50_ms", "p99_ms"):
            result[f"{server}_{key}"] = round(statistics.median(m[key] for m in measured), 3)
        result[f"{server}_errors"] = sum(m["errors"] for m in measured)
    ratios = sorted(s["rps"] / m["rps"] for s, m in zip(rounds["shrinkflow"], rounds["mlflow"],
                                                        strict=True))
    result["rps_ratio"] = round(statistics.median(ratios), 3)
    result["rps_ratio_range"] = [round(ratios[0], 3), round(ratios[-1], 3)]
    return result


def serving(project: Path, name: str, rows: np.ndarray, env: dict[str, str]) -> dict[str, object]:
    """The serving section of shared/BENCH.md for the champion of `name` in `project`."""
    model = f"models:/{name}@champion"
    ours, theirs = free_port(), free_port()
    shrinkflow = [str(BIN / "shrinkflow"), "serve", "--name", name, "--port", str(ours)]
    mlflow = [str(BIN / "mlflow"), "models", "serve", "-m", model, "--env-manager", "local",
              "-h", LOCALHOST, "-p", str(theirs)]
    with running(shrinkflow, project, ours, "/health", env) as our_url, \
            running(mlflow, project, theirs, "/ping", env) as their_url:
        urls = {"shrinkflow": our_url, "mlflow": their_url}
        by_concurrency = {c: _compare(urls, rows, c) for c in CONCURRENCY}
    top = by_concurrency[max(CONCURRENCY)]
    return {"model": model, **top,
            **{f"c{c}": measured for c, measured in by_concurrency.items() if c != max(CONCURRENCY)},
            "round_seconds": ROUND_SECONDS, "rounds": ROUNDS}

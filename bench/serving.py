"""The `serving` section of `make bench`: `shrinkflow serve` against `mlflow models serve`.

Both servers serve the same registered model (`models:/NAME@champion`) on 127.0.0.1 and get the
same requests: one raw test row per request to `/invocations` (the payload both accept), from a
bounded async load generator: `concurrency` keep-alive connections, each sending its next request
when the previous answer arrives. The generator writes prepared HTTP/1.1 requests on asyncio
streams and reads back the status and body: about a tenth of a millisecond of CPU per request,
against about 1.5 ms for an httpx client, which costs more than either server and, on a 2-core
machine, measured itself instead of them. The two are measured in turns over several rounds
(the order alternating), so drift on a noisy machine hits both alike; each round gives a ratio,
and the ratios' spread is reported with them.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import numpy as np

BIN = Path(sys.executable).parent
LOCALHOST = "127.0.0.1"
ROUND_SECONDS = 3.0  # load per server, per concurrency, per round
ROUNDS = 3
CONCURRENCY = (1, 8)
RESPONSE_TIMEOUT_S = 30.0  # a response slower than this counts as an error


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


@contextmanager
def running(command: list[str], cwd: Path, port: int, ready_path: str,
            env: dict[str, str] | None = None, timeout_s: float = 120) -> Iterator[str]:
    """Start a server, wait until `ready_path` answers 200, yield its base URL, stop it.

    The server's output goes to a file, never to a pipe: a pipe nobody reads fills up (64 KiB)
    and then blocks a server that logs every request (uvicorn's access log does) mid-request.
    """
    environment = {**os.environ, **(env or {}), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    url = f"http://{LOCALHOST}:{port}"
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(command, cwd=cwd, env=environment, stdout=output,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            _wait_ready(process, output, url + ready_path, timeout_s)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_ready(process: subprocess.Popen, output: IO[str], url: str, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            output.seek(0)
            raise RuntimeError(f"{process.args[0]} exited: {output.read()[-2000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{' '.join(process.args)} did not answer within {timeout_s:.0f} s")
        time.sleep(0.3)


def _request(url: str, row: np.ndarray) -> bytes:
    """One keep-alive HTTP/1.1 POST of `row` to /invocations, as bytes on the wire."""
    parts = urlsplit(url)
    body = json.dumps({"inputs": [row.tolist()]}).encode()
    head = (f"POST /invocations HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _status(reader: asyncio.StreamReader) -> int:
    """Read one whole response; return its status code (both servers send Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            await reader.readexactly(int(value))
            return int(head[9:12])
    raise ConnectionError(f"a response without Content-Length: {head[:200]!r}")


async def _load(url: str, rows: np.ndarray, concurrency: int, seconds: float) -> dict[str, float]:
    parts = urlsplit(url)
    requests = [_request(url, row) for row in rows]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        nonlocal errors
        index = offset
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    writer.write(requests[index % len(requests)])
                    # awaited first: `errors += await ...` would read errors before the wait and
                    # write back over the other clients' counts
                    status = await asyncio.wait_for(_status(reader), RESPONSE_TIMEOUT_S)
                except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError):
                    errors += 1  # a dropped or stalled connection counts; the client reconnects
                    writer.close()
                    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                else:
                    if status == 200:  # only answered requests count as served
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors += 1
                index += concurrency
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    milliseconds = 1000 * np.asarray(latencies or [np.nan])  # nothing answered: no latency
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


def _check_same_answers(urls: dict[str, str], rows: np.ndarray) -> None:
    """Both servers label the rows alike: the same model is being measured, answering right."""
    import httpx

    answers = {server: httpx.post(f"{url}/invocations", json={"inputs": rows.tolist()},
                                  timeout=RESPONSE_TIMEOUT_S).json()["predictions"]["label"]
               for server, url in urls.items()}
    if len({tuple(labels) for labels in answers.values()}) != 1:
        raise RuntimeError(f"the servers label the {len(rows)} rows differently: the benchmark "
                           f"would not compare like with like")


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
        _check_same_answers(urls, rows)
        by_concurrency = {c: _compare(urls, rows, c) for c in CONCURRENCY}
    top = by_concurrency[max(CONCURRENCY)]
    return {"model": model, **top,
            **{f"c{c}": measured for c, measured in by_concurrency.items() if c != max(CONCURRENCY)},
            "round_seconds": ROUND_SECONDS, "rounds": ROUNDS}

"""The serving benchmark's harness: servers that log a lot keep answering, and the load generator
counts every request and every failed one."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.serving import free_port, load, running

pytestmark = pytest.mark.integration  # real servers and a load generator

CHATTY_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        sys.stdout.write("x" * 100_000 + "\\n")  # a log line per request, far over a pipe's 64 KiB
        sys.stdout.flush()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def test_a_server_that_logs_every_request_keeps_answering(tmp_path: Path):
    # its output goes to a file: a pipe nobody reads would block it on the first request
    port = free_port()
    with running([sys.executable, "-c", CHATTY_SERVER, str(port)], tmp_path, port, "/") as url:
        for _ in range(5):
            assert httpx.get(url, timeout=5).status_code == 200


def test_a_server_that_exits_is_reported_with_its_output(tmp_path: Path):
    port = free_port()
    command = [sys.executable, "-c", "print('cannot start: no model'); raise SystemExit(3)"]
    with pytest.raises(RuntimeError, match="cannot start: no model"), \
            running(command, tmp_path, port, "/health"):
        pass


class _Counting(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the load generator expects
    wbufsize = 1 << 16  # the head and body leave in one write (no 40 ms Nagle delay)
    received: list[bytes] = []
    failing = b"never"  # a body containing this gets a 500

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(body)
        failing = self.failing in body
        answer = b'{"predictions": {"label": ["0"]}}'
        self.send_response(500 if failing else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def counting_server() -> Iterator[tuple[str, type[_Counting]]]:
    handler = type("Handler", (_Counting,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_load_counts_every_answered_request(counting_server):
    url, handler = counting_server
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    measured = load(url, rows, concurrency=4, seconds=0.5)
    assert measured["errors"] == 0
    assert measured["requests"] == len(handler.received) > 4
    assert measured["p50_ms"] <= measured["p99_ms"]
    assert b'{"inputs": [[0.0, 1.0, 2.0, 3.0]]}' in handler.received  # one raw row per request


def test_load_counts_error_answers(counting_server):
    url, handler = counting_server
    handler.failing = b"[[1.0"
    measured = load(url, np.eye(2, dtype=np.float32), concurrency=2, seconds=0.5)
    failed = [body for body in handler.received if handler.failing in body]
    assert measured["errors"] == len(failed) > 0
    # then only the answered requests count as served (requests/s is this count over the time)
    assert measured["requests"] == len(handler.received) - len(failed) > 0

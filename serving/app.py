"""The HTTP model server: FastAPI routes over a live, hot-swapped model and a micro-batcher.

Endpoints:
  POST /predict      {"labels", "probabilities", "classes", "model": {"name", "version"}};
                     an image model also takes {"images": ["<base64 PNG or JPEG>", ...]}
  POST /invocations  the request and response formats of `mlflow models serve`
                     ({"predictions": {"label": [...], "probabilities": [[...]]}})
  GET  /health       200 {"status": "ok", "version", ...} once a model is loaded, else 503
                     (also at /ping, the path MLflow's and SageMaker's probes use)
  GET  /model        the served version's info from the source, its feature names and classes

The lifespan loads the version the source points to (the app also starts without one, and is not
ready until the source has one), starts the batcher and a poller that follows the source's alias
(`serving.reload`). Bodies are read here, not by FastAPI, so their size is checked
before a byte is parsed. Every answer, errors included, is JSON: a client mistake is a 4xx with
{"error": message}; a 500 only ever means a bug.

Nothing here imports mlflow, prefect or torch: the registry is behind a `ModelSource`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serving.batching import BatcherStopped, MicroBatcher, ModelChanged, Result
from serving.model import ModelSource
from serving.payload import BadRequest, parse_body, parse_images
from serving.reload import LiveModel, NoModel
from shrinkflow.images import MAX_PIXELS

log = logging.getLogger(f"shrinkflow.{__name__}")  # under "shrinkflow": the CLI logs it at INFO


def create_app(source: ModelSource, *, max_batch: int = 64, max_wait_ms: float = 2.0,
               max_request_rows: int = 1024, max_body_bytes: int = 4_000_000, poll_seconds: float = 5.0,
               max_image_pixels: int = MAX_PIXELS) -> FastAPI:
    """A server of `source`'s current model.

    Args:
        source: says which version is current and loads it (with its own ONNX Runtime threads).
        max_batch: rows per ONNX Runtime call when concurrent requests are batched together.
        max_wait_ms: how long a request waits for others to join its batch; 0 still batches
            whatever is already queued.
        max_request_rows: rows (or images) one request may send (413 beyond).
        max_body_bytes: size of one request body (413 beyond, checked before parsing).
        max_image_pixels: pixels of one image sent to an image model (413 beyond, checked from
            the image's header before it is decoded).
        poll_seconds: how often the source is asked whether its alias moved.
    """
    live = LiveModel(source)
    batcher = MicroBatcher(live.get, max_batch=max_batch, max_wait_ms=max_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await live.refresh()
        if live.model is None:
            log.warning("no model to serve yet; polling the source every %s s", poll_seconds)
        await batcher.start()
        poller = asyncio.create_task(live.poll(poll_seconds), name="shrinkflow-model-poller")
        try:
            yield
        finally:
            poller.cancel()
            with suppress(asyncio.CancelledError):
                await poller
            await batcher.stop()

    app = FastAPI(title="shrinkflow model server", lifespan=lifespan)
    app.state.live, app.state.batcher = live, batcher
    _add_error_handlers(app)

    async def score(request: Request) -> Result:
        model = live.get()
        _check_content_type(request)
        body = await _read_body(request, max_body_bytes)
        if model.image_shape is not None:
            rows = parse_images(body, model.image_shape, max_images=max_request_rows,
                                max_bytes=max_body_bytes, max_pixels=max_image_pixels)
        else:
            rows = parse_body(body, model.feature_names, text=model.text_columns,
                              nullable=model.nullable, max_rows=max_request_rows,
                              max_bytes=max_body_bytes)
        served, labels, probabilities = await batcher.submit(rows, model.layout)
        _check_finite(probabilities)
        return served, labels, probabilities

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        model, labels, probabilities = await score(request)
        return JSONResponse({"labels": labels, "probabilities": probabilities.tolist(),
                             "classes": list(model.classes),
                             "model": {"name": model.name, "version": model.version}})

    @app.post("/invocations")
    async def invocations(request: Request) -> JSONResponse:
        _, labels, probabilities = await score(request)
        return JSONResponse({"predictions": {"label": labels, "probabilities": probabilities.tolist()}})

    @app.get("/health")
    @app.get("/ping")
    async def health() -> JSONResponse:
        model = live.model
        if model is None:
            return JSONResponse({"status": "unavailable", "version": None,
                                 "error": "no model loaded yet"}, status_code=503)
        return JSONResponse({"status": "ok", "version": model.version, "batches": batcher.batches_run,
                             "requests": batcher.requests_run})

    @app.get("/model")
    async def model_info() -> dict:
        model = live.get()
        return {**model.info, "version": model.version, "feature_names": list(model.feature_names),
                "image_shape": list(model.image_shape) if model.image_shape else None,
                "text_columns": [name for name in model.feature_names if name in model.text_columns],
                "nullable": model.nullable, "classes": list(model.classes)}

    return app


def _check_content_type(request: Request) -> None:
    """JSON or no declared type; anything else (a form, CSV) is refused, like MLflow does."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise BadRequest(415, f"Content-Type {media!r} is not accepted: send a JSON body with "
                              f"'Content-Type: application/json'")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the body has {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():  # also bounds a chunked body, which declares no length
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"the body has more than {limit} bytes (the limit)")
    return bytes(body)


def _check_finite(probabilities: np.ndarray) -> None:
    """Finite inputs far beyond the training range can overflow the logits into NaN."""
    bad = np.flatnonzero(~np.isfinite(probabilities).all(axis=1))
    if bad.size:
        raise BadRequest(422, f"the model's probabilities for row {bad[0]} are not finite: its inputs are "
                              f"probably far outside the range the model was trained on")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, error: BadRequest) -> JSONResponse:
        return _error(error.status, error.message)

    @app.exception_handler(NoModel)
    @app.exception_handler(ModelChanged)
    @app.exception_handler(BatcherStopped)
    async def unavailable(request: Request, error: Exception) -> JSONResponse:
        return _error(503, str(error), headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, item.get('loc', ())))}: {item.get('msg')}"
                             for item in error.errors())
        return _error(422, f"invalid request: {problems}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
        return _error(500, f"internal error ({type(error).__name__}); see the server log")

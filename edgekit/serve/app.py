"""The Starlette app: ``make_app(model, config)`` -> an ASGI app (uvicorn, Ray Serve, or a test client).

Routes: ``POST /predict``, ``POST /predict/batch``, ``GET /health``, ``GET /metrics``. Every answer
is JSON (``/metrics``: Prometheus text); every refusal is {"error": one sentence}; an unexpected
exception answers 500 and is logged with its traceback, and the server goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgekit.serve.cache import make_cache
from edgekit.serve.config import ServeConfig
from edgekit.serve.engine import MicroBatcher, Overloaded, SegmentEngine
from edgekit.serve.metrics import CONTENT_TYPE, ServeMetrics
from edgekit.serve.protocol import RequestError, parse_batch, parse_json, parse_segments, prediction_json
from edgekit_device.segments import SegmentError

log = logging.getLogger("edgekit.serve")
PID_HEADER = "x-edgekit-pid"
CONFIG_ENV = "EDGEKIT_SERVE_CONFIG"   # uvicorn workers: {"model": path, "config": ServeConfig}


def load_model(model, late_layers: int | None = None):
    """A ``SegmentModel`` as is; a path -> ``load_segment_model`` (checkpoint: PyTorch, bundle: no torch).

    ``late_layers`` splits a plain classifier checkpoint (its segment embedding untrained: for timing)."""
    if isinstance(model, (str, os.PathLike)):
        if (Path(model) / "manifest.json").is_file() and late_layers is None:
            # a bundle runs without torch: do not import edgekit.late_interaction (it imports torch)
            from edgekit_device.segments import SegmentBundle

            return SegmentBundle(Path(model))
        from edgekit.late_interaction import load_segment_model

        return load_segment_model(model, late_layers=late_layers)
    return model


class Server:
    """The model, its cache, the micro-batcher and the metrics of one process (or one Ray replica)."""

    def __init__(self, model, config: ServeConfig | None = None, cache=None):
        self.config = (config or ServeConfig()).check()
        self.model = load_model(model, self.config.late_layers)
        self.labels = [str(label) for label in self.model.labels]
        self.cache = cache if cache is not None else make_cache(
            self.config.cache, self.config.cache_bytes, timeout_s=self.config.redis_timeout_s,
            retry_max_s=self.config.redis_retry_max_s)
        self.engine = SegmentEngine(self.model, self.cache)
        self.metrics = ServeMetrics(self)
        self.batcher = MicroBatcher(self.engine.run, self.config.max_batch, self.config.max_wait_ms,
                                    self.config.max_queue, on_batch=self.metrics.observe_batch)

    # -- helpers

    async def _body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it passes ``max_body_bytes`` (never read whole first)."""
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise RequestError(400, f"Content-Length {declared!r} is not a byte count.")
            if int(declared) > limit:
                raise RequestError(413, f"the request body has {int(declared)} bytes, more than the server's limit "
                                        f"of {limit}; send fewer segments or split the batch.")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise RequestError(413, f"the request body is larger than the server's limit of {limit} bytes; "
                                        "send fewer segments or split the batch.")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _answer(self, requests: list[list[str]]) -> list[dict]:
        try:
            results = await self.batcher.submit_many(requests)
        except Overloaded:
            raise RequestError(503, f"the server is busy ({self.config.max_queue} requests waiting, --max-queue); "
                                    "retry shortly.") from None
        out = []
        for i, r in enumerate(results):
            if isinstance(r, SegmentError):
                where = f"request {i}: " if len(requests) > 1 else ""
                raise RequestError(422, f"{where}{r}")
            if isinstance(r, Exception):
                raise r
            out.append(prediction_json(r, self.labels))
        return out

    async def _timed(self, endpoint: str, handler, request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except RequestError as e:
            headers = {"Retry-After": "1"} if e.status == 503 else None
            response = JSONResponse({"error": e.message}, status_code=e.status, headers=headers)
        except Exception:
            log.exception("%s failed", endpoint)
            response = JSONResponse({"error": "internal error while answering; the server log has the details."},
                                    status_code=500)
        self.metrics.observe_request(endpoint, response.status_code, time.perf_counter() - started)
        response.headers[PID_HEADER] = str(os.getpid())  # which worker or replica answered (load balancing)
        return response

    # -- endpoints

    async def predict(self, request: Request) -> Response:
        async def handle(request):
            value = parse_json(await self._body(request))
            segments = parse_segments(value, self.model.max_segments, self.config.max_segment_chars)
            return JSONResponse((await self._answer([segments]))[0])
        return await self._timed("/predict", handle, request)

    async def predict_batch(self, request: Request) -> Response:
        async def handle(request):
            value = parse_json(await self._body(request))
            requests = parse_batch(value, self.config.max_queue, self.model.max_segments,
                                   self.config.max_segment_chars)
            results = await self._answer(requests)
            return JSONResponse({"results": results, "cache": {
                "hits": sum(r["cache"]["hits"] for r in results),
                "misses": sum(r["cache"]["misses"] for r in results)}})
        return await self._timed("/predict/batch", handle, request)

    async def health(self, request: Request) -> Response:
        async def handle(request):
            return JSONResponse({"status": "ok", "pid": os.getpid(), "model_hash": self.model.model_hash, "labels": self.labels,
                                 "max_segments": self.model.max_segments,
                                 "max_segment_tokens": self.model.max_segment_tokens,
                                 "cache": self.cache.describe(), "queue": self.batcher.depth})
        return await self._timed("/health", handle, request)

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def http_error(self, request: Request, exc: HTTPException) -> Response:
        """404 / 405 from routing, as JSON with a sentence like every other refusal."""
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path}; use POST /predict, POST /predict/batch, GET /health, GET /metrics."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see GET /health for the endpoints."
        else:
            message = str(exc.detail)
        self.metrics.observe_request("other", exc.status_code, 0.0)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app):
            self.batcher.start()
            try:
                yield
            finally:
                await self.batcher.stop()
                self.cache.close()

        routes = [Route("/predict", self.predict, methods=["POST"]),
                  Route("/predict/batch", self.predict_batch, methods=["POST"]),
                  Route("/health", self.health, methods=["GET"]),
                  Route("/metrics", self.metrics_endpoint, methods=["GET"])]
        app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: self.http_error})
        app.state.server = self
        return app


def make_app(model, config: ServeConfig | None = None, cache=None) -> Starlette:
    """The ASGI app serving ``model`` (a ``SegmentModel``, a late-interaction checkpoint, or a bundle directory).

    ``app.state.server`` is the ``Server`` (its ``engine.encoded_segments``, ``cache``, ``metrics``)."""
    return Server(model, config, cache).app()


def app_from_env() -> Starlette:
    """The app a uvicorn worker process builds (``--workers N``): model and config from ``EDGEKIT_SERVE_CONFIG``."""
    import json

    spec = json.loads(os.environ[CONFIG_ENV])
    config = ServeConfig.from_json(json.dumps(spec["config"]))
    configure_logging(config.log_level)
    return make_app(spec["model"], config)


def configure_logging(level: str) -> None:
    """edgekit.serve's log lines (cache outages, failed batches) on stderr beside uvicorn's."""
    logger = logging.getLogger("edgekit.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())

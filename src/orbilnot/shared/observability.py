"""Logs, request ids, metrics and health: the same for every process.

- One JSON object per log line (or plain text for a local console), carrying the request id of
  the HTTP request being served, so a request can be followed from the gateway to a service, and
  with tracing on, the current span's `trace_id` and `span_id` (shared/tracing.py).
- `/health/live`, `/health/ready` and `/metrics` at the root of every app.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orbilnot.shared import tracing

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()  # as ASGI gives header names
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

HTTP_REQUESTS = Counter("orbilnot_http_requests_total", "HTTP requests served", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "orbilnot_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

FLOW_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
"""Buckets of the flow's latencies (order created → decided, → notified): milliseconds when the
saga flows, minutes when a backlog builds."""

ORDER_CREATED_AT_HEADER = "orbilnot-order-created-at"
"""Kafka header on billing's result of a CREATED event: the order's CREATED occurredAt (ISO 8601)."""

REJECTED = Counter(
    "orbilnot_rejected_requests_total",
    "Requests refused at the edge or by validation, by a fixed set of reasons",
    ["service", "reason"],
)
REJECTION_REASONS = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    408: "too_slow",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    429: "rate_limited",
    431: "too_large",
}
"""The statuses that mean "refused" and the reason each is counted under. A status, never input,
picks the label, so the label values stay this bounded set."""

READY = Gauge("orbilnot_ready", "1 when the last readiness check passed, else 0", ["service"])

_service = "unknown"


def name_process(service: str) -> None:
    """Say which process this is (`orbilnot serve <service>`): the `service` label of the
    metrics that carry one. Called once at start-up, before the app serves."""
    global _service
    _service = service


def count_rejection(status: int) -> None:
    """Count a response of `status` as a rejection, if it is one (REJECTION_REASONS)."""
    reason = REJECTION_REASONS.get(status)
    if reason is not None:
        REJECTED.labels(_service, reason).inc()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["requestId"] = request_id
        ids = tracing.current_ids()  # None unless tracing is on and a span is current
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO", fmt: str = "json", service: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    else:
        prefix = f"{service} " if service else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Kafka clients and the access log are chatty at INFO; our own events say what matters.
    for noisy in ("aiokafka", "kafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class RequestContextMiddleware:
    """Pure ASGI middleware: request id in and out, metrics per route.

    Written as raw ASGI (not BaseHTTPMiddleware) so streamed bodies pass through untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The metrics' children by (method, route, status), a set as bounded as their labels:
        # looking a child up by its labels takes a lock and builds its key on every request.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = b""
        for name, value in scope.get("headers") or ():
            if name == _REQUEST_ID_KEY:
                incoming = value  # the last one, if sent twice
        request_id = incoming.decode("latin-1")[:128] if incoming else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_code = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *[(k, v) for k, v in message["headers"] if k.lower() != b"x-request-id"],
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # The matched route's name (FastAPI: the endpoint's, e.g. `place_order`), else its
            # path (the gateway's prefix routes): a bounded label, never the full URL.
            route = scope.get("route")
            route_name = getattr(route, "name", None) or getattr(route, "path", None) or "unmatched"
            key = (scope.get("method", ""), route_name, status_code)
            children = self._children.get(key)
            if children is None:
                method = key[0]
                children = (
                    HTTP_REQUESTS.labels(method, route_name, str(status_code)),
                    HTTP_LATENCY.labels(method, route_name),
                )
                self._children[key] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - started)
            # An upstream's answer that the gateway only passes on was counted by that service.
            if status_code >= 400 and not scope.get(FORWARDED):
                count_rejection(status_code)
            request_id_var.reset(token)


FORWARDED = "orbilnot.forwarded"
"""Set in the ASGI scope of a request whose answer comes from an upstream (the gateway's proxy)."""

ReadinessCheck = Callable[[], Awaitable[Mapping[str, bool | str]]]
"""One entry per dependency or loop: True when fine, False or a sentence saying what is wrong."""
# Answers a refusal for a request that may not read /metrics, or None to let it through.
MetricsGuard = Callable[[Request], Awaitable[Response | None]]


def health_routes(
    readiness: ReadinessCheck | None = None,
    before_scrape: Callable[[], Awaitable[None]] | None = None,
    metrics_guard: MetricsGuard | None = None,
) -> list[Route]:
    """Routes for `/health/live`, `/health/ready` and `/metrics`.

    `readiness` returns one entry per dependency; anything but True answers 503 with the details.
    `before_scrape` refreshes gauges that are measured when asked for (backlog ages).
    Health is always open; `metrics_guard` may restrict /metrics (METRICS_REQUIRE_AUTH).
    """

    async def live(_: Request) -> Response:
        return JSONResponse({"status": "UP"})

    async def ready(_: Request) -> Response:
        checks = await readiness() if readiness else {}
        ok = all(value is True for value in checks.values())
        READY.labels(_service).set(1 if ok else 0)  # each evaluation, so changes() sees a flap
        return JSONResponse({"status": "UP" if ok else "DOWN", "checks": checks}, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        refusal = await metrics_guard(request) if metrics_guard else None
        if refusal is not None:
            return refusal
        if before_scrape is not None:
            await before_scrape()
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/health/live", live, methods=["GET"], include_in_schema=False),
        Route("/health/ready", ready, methods=["GET"], include_in_schema=False),
        Route("/metrics", metrics, methods=["GET"], include_in_schema=False),
    ]


class StripTrailingSlashMiddleware:
    """Serve `/x/` exactly as `/x` (SPEC §2: never answer with a redirect)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if len(path) > 1 and path.endswith("/"):
                # In place, not a copy: the router records the matched route in this scope, and
                # the request-metrics middleware outside reads it from there.
                scope["path"] = path.rstrip("/") or "/"
                raw = scope.get("raw_path")
                if raw:
                    scope["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)

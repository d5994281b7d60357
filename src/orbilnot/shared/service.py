"""What every service process is made of, and the one place its web app is assembled.

`ServiceKernel` holds the process's connections and background loops (relays, processors,
consumers). It is built from the settings in the app's lifespan, never at import time, and it
starts Kafka work in the background so the process comes up (and answers 503 on /health/ready)
even while the broker is still starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import Gauge
from pydantic import BaseModel
from sqlalchemy import Column, ColumnElement, Select, Table, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.exceptions import HTTPException

from orbilnot.shared import tracing
from orbilnot.shared.auth import Authenticator, current_caller
from orbilnot.shared.config import ServiceSettings
from orbilnot.shared.consumer import IdempotentConsumer, Parker
from orbilnot.shared.db import create_engine, database_is_up, is_connection_problem
from orbilnot.shared.errors import Conflict, NotFound
from orbilnot.shared.kafka import ProducerHandle, ensure_topics, wait_for_group_coordinator
from orbilnot.shared.observability import (
    RequestContextMiddleware,
    StripTrailingSlashMiddleware,
    health_routes,
)
from orbilnot.shared.relay import OnAttempt, OutboxRelay
from orbilnot.shared.retry import backoff
from orbilnot.shared.worker import Step, Worker

log = logging.getLogger(__name__)

Event = TypeVar("Event", bound=BaseModel)

BACKLOG_ROWS = Gauge("orbilnot_backlog_rows", "Rows waiting in an outbox or inbox, at the last scrape", ["queue"])
BACKLOG_OLDEST_AGE = Gauge(
    "orbilnot_backlog_oldest_age_seconds", "Age of the oldest row waiting in an outbox or inbox", ["queue"]
)


class ServiceKernel:
    def __init__(self, settings: ServiceSettings, *, service: str) -> None:
        self.settings = settings
        self.service = service
        self.engine = create_engine(settings, application_name=f"orbilnot-{service}")
        tracing.instrument_engine(self.engine)
        # Readiness asks the database through a connection of its own: under load every pooled
        # connection is in use, and a probe waiting for one would mark a busy pod unready (and
        # then the next one, as the load moves over). One more connection per pod, counted in the
        # chart's connection budget.
        self._health_engine = create_engine(settings, application_name=f"orbilnot-{service}-health", pool_size=1)
        self.kafka = settings.kafka_connection()
        self.producer = ProducerHandle(self.kafka, client_id=f"orbilnot-{service}")
        self._workers: list[Worker] = []
        self._relays: list[OutboxRelay] = []
        self._backlogs: list[tuple[str, Select[int, Any]]] = []
        self._consumers: list[IdempotentConsumer[Any]] = []
        self._topics = [
            settings.order_event_topic,
            settings.payment_event_topic,
            f"{settings.order_event_topic}.dlt",
            f"{settings.payment_event_topic}.dlt",
        ]
        self._kafka_task: asyncio.Task[None] | None = None

    # -- wiring (called by each service's composition root) ---------------------------------

    def relay(self, name: str, outbox: Table, *, on_attempt: OnAttempt | None = None) -> OutboxRelay:
        relay = OutboxRelay(
            name,
            outbox,
            engine=self.engine,
            producer=self.producer,
            batch_size=self.settings.relay_batch_size,
            poll_interval_s=self.settings.safety_net_poll_s,
            on_attempt=on_attempt,
            retention=timedelta(hours=hours) if (hours := self.settings.outbox_retention_hours) else None,
        )
        self._workers.append(relay.worker)
        self._relays.append(relay)
        # A row the broker refused is no backlog: it waits for an operator, counted apart.
        self.backlog(name, outbox.c.created_at, outbox.c.published_at.is_(None) & outbox.c.refused_at.is_(None))
        return relay

    @property
    def consumers(self) -> Sequence[IdempotentConsumer[Any]]:
        return self._consumers

    def backlog(self, name: str, created_at: Column[Any], waiting: ColumnElement[bool]) -> None:
        """Report how many rows wait (`waiting`) and how old the oldest is, at each scrape."""
        self._backlogs.append((name, select(func.count(), func.min(created_at)).where(waiting)))

    def wake_relays(self) -> None:
        """Say, right after a commit, that there may be something new to publish."""
        for relay in self._relays:
            relay.wake()

    def worker(self, name: str, step: Step) -> Worker:
        worker = Worker(name, step, poll_interval_s=self.settings.safety_net_poll_s)
        self._workers.append(worker)
        return worker

    def consumer(
        self,
        topic: str,
        model: type[Event],
        handle: Callable[[AsyncConnection, Sequence[Event]], Awaitable[None]],
        *,
        park: Parker[Event] | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> IdempotentConsumer[Event]:
        consumer = IdempotentConsumer(
            topic=topic,
            group_id=f"orbilnot-{self.service}",
            model=model,
            handle=handle,
            park=park,
            service=self.service,
            engine=self.engine,
            producer=self.producer,
            kafka=self.kafka,
            client_id=f"orbilnot-{self.service}",
            batch_size=self.settings.consumer_batch_size,
            after_commit=after_commit,
        )
        self._consumers.append(consumer)
        return consumer

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._kafka_task = asyncio.create_task(self._connect_kafka_then_start(), name="kafka-connect")

    async def _connect_kafka_then_start(self) -> None:
        async for attempt in backoff("connecting to Kafka", retry_on=lambda _: True):
            with attempt:
                await ensure_topics(
                    self.kafka,
                    self._topics,
                    partitions=self.settings.topic_partitions,
                    replication_factor=self.settings.kafka_topic_replication_factor,
                    min_insync_replicas=self.settings.kafka_topic_min_insync_replicas,
                )
                if self._consumers:
                    await wait_for_group_coordinator(self.kafka, f"orbilnot-{self.service}")
                await self.producer.connect()
        for worker in self._workers:
            worker.start()
        for consumer in self._consumers:
            consumer.start()
        log.info("%s connected to Kafka; %d loops running", self.service, len(self._workers) + len(self._consumers))

    async def stop(self) -> None:
        """Stop taking new work, finish what is in hand, then close connections."""
        if self._kafka_task is not None and not self._kafka_task.done():
            self._kafka_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._kafka_task
        await asyncio.gather(*(c.stop() for c in self._consumers))
        await asyncio.gather(*(w.stop() for w in self._workers))
        await self.producer.close()
        await self.engine.dispose()
        await self._health_engine.dispose()

    async def readiness(self) -> dict[str, bool | str]:
        checks: dict[str, bool | str] = {
            "database": await database_is_up(self._health_engine),
            "kafka": self.producer.connected and all(c.running for c in self._consumers),
        }
        # A loop that keeps failing is not "up" even if the database answers `SELECT 1`: its
        # work (payments, results, notifications) is not getting done. Say which and why.
        threshold = self.settings.stuck_after_s
        trackers = [w.tracker for w in self._workers] + [c.tracker for c in self._consumers]
        stuck = [
            f"{t.name} failing for {t.failing_for():.0f}s: {t.last_error}"
            for t in trackers
            if t.failing_for() > threshold
        ]
        checks["loops"] = "; ".join(stuck) if stuck else True
        return checks

    async def measure_backlogs(self) -> None:
        """Refresh the backlog gauges (rows waiting, age of the oldest) before a scrape."""
        try:
            async with asyncio.timeout(2.0), self.engine.connect() as conn:
                for name, query in self._backlogs:
                    waiting, oldest = (await conn.execute(query)).one()
                    BACKLOG_ROWS.labels(name).set(waiting)
                    age = 0.0 if oldest is None else max(0.0, (datetime.now(UTC) - oldest).total_seconds())
                    BACKLOG_OLDEST_AGE.labels(name).set(age)
        except (TimeoutError, OSError, DBAPIError) as error:
            log.warning("could not measure backlogs: %r", error)


async def _kernel_of(request: Request) -> ServiceKernel:
    # async on purpose: FastAPI runs a plain `def` dependency in a worker thread, per request.
    kernel: ServiceKernel = request.app.state.kernel
    return kernel


KernelDep = Annotated[ServiceKernel, Depends(_kernel_of)]
"""What a route declares to reach its process's kernel (engine, relays)."""


def kernel_of(request: Request) -> ServiceKernel:
    """The kernel, for a hot route that takes its `Request` rather than one more dependency to
    solve per request (see `auth.verified_caller`)."""
    kernel: ServiceKernel = request.app.state.kernel
    return kernel


def create_service_app(
    *,
    title: str,
    prefix: str,
    routers: Sequence[APIRouter],
    build_kernel: Callable[[], ServiceKernel],
) -> FastAPI:
    """A service's FastAPI app: its API under `prefix`, docs under the prefix, health at root.

    `build_kernel` runs in the lifespan, so nothing connects at import time; routes reach the
    kernel (and what the service hung on it) through `request.app.state.kernel`.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        kernel = build_kernel()
        app.state.kernel = kernel
        app.state.authenticator = Authenticator(kernel.settings)
        await kernel.start()
        try:
            yield
        finally:
            await kernel.stop()
            await app.state.authenticator.close()

    app = FastAPI(
        title=title,
        lifespan=lifespan,
        docs_url=f"{prefix}/docs",
        redoc_url=f"{prefix}/redoc",
        openapi_url=f"{prefix}/openapi.json",
        redirect_slashes=False,
        # SPEC §3: a JSON body may come with no Content-Type at all (as from the original's clients).
        strict_content_type=False,
        # FastAPI's own OpenTelemetry asks the global providers on every request whether one is
        # configured; ours are set up (or not) before the app is built, so when tracing is off
        # the answer is known: no. (With it on, shared/tracing.py instruments the app.)
        telemetry=None if tracing.enabled() else {"tracing": False, "metrics": False, "logs": False},
    )
    for router in routers:
        # Every API route needs a verified caller (a 401 otherwise, when AUTH_MODE=oidc); routes
        # that decide by owner also take `CallerDep`, which FastAPI then resolves only once.
        app.include_router(
            router,
            prefix=prefix,
            dependencies=[Depends(current_caller)],
            responses={401: {"description": "With AUTH_MODE=oidc: no valid bearer access token"}},
        )

    async def readiness() -> dict[str, bool | str]:
        kernel: ServiceKernel | None = getattr(app.state, "kernel", None)
        return await kernel.readiness() if kernel else {"started": False}

    async def before_scrape() -> None:
        kernel: ServiceKernel | None = getattr(app.state, "kernel", None)
        if kernel is not None:
            await kernel.measure_backlogs()
            for consumer in kernel.consumers:
                await consumer.measure_lag()

    async def metrics_guard(request: Request) -> Response | None:
        authenticator: Authenticator | None = getattr(app.state, "authenticator", None)
        if authenticator is None or not authenticator.metrics_restricted:
            return None
        return await authenticator.guard_metrics(request)

    app.router.routes.extend(health_routes(readiness, before_scrape, metrics_guard))

    @app.exception_handler(NotFound)
    async def not_found(_: Request, error: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(Conflict)
    async def conflict(_: Request, error: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=409)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    @app.exception_handler(OSError)
    async def database_unavailable(_: Request, error: Exception) -> JSONResponse:
        # PostgreSQL down or restarting (issue 4, scenario 4): a plain 503 the client can retry
        # (orders carry an Idempotency-Key), instead of a traceback per request and a connection
        # uvicorn closes, which the gateway then meets as a ReadError. Other errors stay 500s.
        if not is_connection_problem(error):
            raise error
        log.warning("database unavailable: %s", error)
        return JSONResponse({"detail": "database unavailable"}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's default answer, minus the echoed input (it can be a 1 MB body).
        details = [{k: v for k, v in e.items() if k not in ("input", "ctx", "url")} for e in error.errors()]
        return JSONResponse({"detail": details}, status_code=422)

    @app.exception_handler(HTTPException)
    async def unreadable_body(request: Request, error: HTTPException) -> Response:
        # FastAPI answers a body that json.loads rejects with anything but a JSONDecodeError as a
        # bare 400: invalid UTF-8 (UnicodeDecodeError) and nesting deeper than the interpreter's
        # recursion limit (RecursionError). To a client both are just JSON it cannot send: 422,
        # like every other malformed body (SPEC §3).
        if error.status_code == 400 and isinstance(error.__cause__, ValueError | RecursionError):
            reason = "not UTF-8" if isinstance(error.__cause__, UnicodeDecodeError) else "nested too deep"
            detail = [{"type": "json_invalid", "loc": ["body"], "msg": f"JSON decode error: {reason}"}]
            return JSONResponse({"detail": detail}, status_code=422)
        return await http_exception_handler(request, error)

    app.add_middleware(StripTrailingSlashMiddleware)
    app.add_middleware(RequestContextMiddleware)
    tracing.instrument_service_app(app)  # outermost, so the request's logs carry its trace
    return app

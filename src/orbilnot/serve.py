"""`orbilnot serve <service>`: one process, configured from the environment (SPEC §7)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import NoReturn, cast

import uvicorn
from pydantic import ValidationError
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from orbilnot.shared import tracing
from orbilnot.shared.config import GatewaySettings, HttpLimitSettings, ProcessSettings, ServiceSettings
from orbilnot.shared.http_limits import ON_SERVER_SHUTDOWN, EdgeLimitsProtocol
from orbilnot.shared.observability import configure_logging, name_process


def _app_factory(service: str) -> Callable[[], ASGIApp]:
    """The app of one service, built from validated settings (and only that service's code)."""
    if service == "gateway":
        from orbilnot.gateway.app import create_app as create_gateway

        gateway_settings = GatewaySettings()  # read from the environment
        return lambda: tracing.instrument_gateway_app(create_gateway(gateway_settings))
    settings = ServiceSettings.of(service)  # read from the environment
    if service == "billing":
        from orbilnot.billing.app import create_app
    elif service == "order":
        from orbilnot.order.app import create_app
    elif service == "notification":
        from orbilnot.notification.app import create_app
    else:
        raise ValueError(f"unknown service {service!r}")
    return lambda: create_app(settings)


def serve(service: str, host: str, port: int) -> int:
    try:
        # Before the app is built: its engine and routes are instrumented as they are made.
        tracing.setup(service)
    except tracing.TracingConfigError as error:
        print(f"orbilnot serve {service}: bad configuration\n{error}", file=sys.stderr)
        return 2
    try:
        factory = _app_factory(service)
        limits = HttpLimitSettings()  # read from the environment
        if service != "gateway":
            limits = limits.with_room_for_forwarding()
    except ValidationError as error:
        # Fail fast and say which variable is wrong, without a traceback.
        print(f"orbilnot serve {service}: bad configuration\n{error}", file=sys.stderr)
        return 2
    keep_alive_s = limits.keep_alive_s or (GATEWAY_KEEP_ALIVE_S if service == "gateway" else SERVICE_KEEP_ALIVE_S)
    logging_settings = ProcessSettings()
    configure_logging(logging_settings.log_level, logging_settings.log_format, service=service)
    name_process(service)
    if tracing.enabled():
        logging.getLogger(__name__).info("tracing on (OTEL_* settings): spans are exported")
    # uvicorn handles SIGTERM (a graceful shutdown), then restores the handler it found and raises
    # the signal again, so with the default handler a clean stop ended as "killed by SIGTERM"
    # (exit status -15/143). Supervisors read that as a crash: exit 0 instead. (A SIGTERM before
    # uvicorn takes over also lands here, when there is nothing yet to shut down.)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        uvicorn.run(
            tracing.isolate_requests(factory()),
            host=host,
            port=port,
            log_config=None,  # keep our logging set-up
            access_log=False,  # request metrics live in /metrics; access logs cost ~10% throughput
            server_header=False,
            # Let in-flight requests finish on SIGTERM, within what a supervisor waits (10 s).
            timeout_graceful_shutdown=7,
            http=_protocol(limits),
            # uvloop, said rather than left to "auto" (which quietly falls back to asyncio's own
            # loop when uvloop cannot be imported): it is the cheaper loop per request, and a
            # missing uvloop should stop the start, not slow every request.
            loop="uvloop",
            timeout_keep_alive=keep_alive_s,
        )
    except SystemExit as stop:
        _leave(stop.code if isinstance(stop.code, int) else 1)
    _leave(0)


def _leave(code: int) -> NoReturn:
    """Exit once the server has shut down: what is left of it is the interpreter's own teardown.

    That teardown (every module's objects freed one by one, a last garbage collection) cost each
    service 5 to 8 s of wall clock on a loaded machine after uvicorn had finished (a fraction of a
    second of CPU, issue 11): the connections are closed and the work in hand is done by then, so
    the spans still buffered and the logs are flushed, and the process leaves at once.
    """
    tracing.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _protocol(limits: HttpLimitSettings) -> type[HttpToolsProtocol]:
    """The HTTP protocol every orbilnot server speaks: draining on shutdown, with the edge limits."""
    drain_s = DRAIN_IDLE_S if limits.shutdown_drain_s is None else limits.shutdown_drain_s
    return type(
        "ServerProtocol", (DrainingHttpProtocol, EdgeLimitsProtocol.with_limits(limits)), {"drain_idle_s": drain_s}
    )


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


# How long an idle keep-alive connection is kept open. A server must keep it open longer than its
# clients keep it in their pools, or a client may send a request on a connection at the very moment
# the server closes it, and get no answer at all (httpx.RemoteProtocolError/ReadError, 1 request
# in a few thousand under load, nothing logged). The services' client is the gateway (pool expiry
# 2 s, gateway/proxy.py); the gateway's are anyone's: httpx keeps a connection 5 s (the same as
# uvicorn's default, hence the race), aiohttp 15 s, Go 90 s; 75 s is nginx's default.
SERVICE_KEEP_ALIVE_S = 3
GATEWAY_KEEP_ALIVE_S = 75

# The longest an idle keep-alive connection stays open once the server is shutting down: the
# services' keep-alive timeout, which the gateway's pool expiry (2 s) is set to beat.
DRAIN_IDLE_S = float(SERVICE_KEEP_ALIVE_S)


class DrainingHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, except that a graceful shutdown does not cut idle keep-alive
    connections at once.

    A client (the gateway) that took such a connection from its pool an instant before may have
    its request on the wire already: closing the socket under it resets the connection, and the
    request is lost without an answer (the gateway answered those with 502, as it must for a
    request that may have been processed). Instead an idle connection lives until its keep-alive
    timer runs out as it would have anyway, which the client's pool expiry is set to beat, and a
    request that arrives meanwhile is served, with `Connection: close`. So does a connection whose
    response was under way (headers sent, without `Connection: close`) when the shutdown began,
    once that response is complete; one whose response had not started is answered with
    `Connection: close` and closed.

    Why uvicorn internals (`shutdown`, `cycle`, `timeout_keep_alive_task`): uvicorn 0.54 has no
    supported way. Its graceful shutdown calls `shutdown()` on every connection, which closes an
    idle one at once; `timeout_graceful_shutdown` only bounds the wait for requests in flight.
    A middleware that answers 503 with `Connection: close` once draining starts, or a lifespan
    hook, runs only for a request that reached the app, never for one sent on a socket already
    reset. Scenario 8 (`tests/reliability/test_graceful_shutdown.py`) fails if these internals
    change under an upgrade.
    """

    _draining = False
    drain_idle_s = DRAIN_IDLE_S  # HTTP_SHUTDOWN_DRAIN_S, by _protocol()

    def shutdown(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            end_now = cast("Callable[[], None] | None", self.cycle.scope.get(ON_SERVER_SHUTDOWN))
            if end_now is not None:
                end_now()  # an endless stream: ended, then drained or closed like any other response
            if not self.cycle.response_started:
                super().shutdown()  # its answer says `Connection: close`, and it is closed after
                return
            # Its headers are out without `Connection: close`, so the client will put the
            # connection back in its pool once the body is in: closed right after the response,
            # a request sent on it before the FIN arrives would get no answer (the gateway's 502
            # in scenario 8). It drains from then on, like an idle one (on_response_complete).
            self._draining = True
            return
        self._draining = True
        self._drain_idle()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms the keep-alive timer, unless the connection is closing
        if self._draining and not self.transport.is_closing():
            self._drain_idle()

    def _drain_idle(self) -> None:
        """Close the idle connection when its keep-alive timer runs out, or after drain_idle_s."""
        deadline = self.loop.time() + self.drain_idle_s
        timer = self.timeout_keep_alive_task
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self.timeout_keep_alive_task = self.loop.call_at(deadline, self.timeout_keep_alive_handler)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, then closed

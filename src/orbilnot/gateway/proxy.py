"""Forwarding one HTTP request to an upstream service and its answer back, streamed both ways.

Raw ASGI on the gateway side (no Request/Response objects, nothing buffered) and one
`aiohttp.ClientSession` on the upstream side, with a pool of GATEWAY_UPSTREAM_CONNECTIONS
keep-alive connections in all. aiohttp rather than httpx: forwarding a request through httpx's pool
transport cost ~360 µs of CPU, through aiohttp's client ~60 µs (scripts/http_client_cost.py), and
httpx was half of the gateway's CPU per order. What an upstream problem becomes for the client:

- every instance refuses the connection (connect error or connect timeout) → 502, after trying
  them all again with backoff while the connect timeout lasts;
- the gateway has no free pooled connection in time (it is saturated, not the upstream) → 503;
- an upstream accepted the request but did not answer (or read it) in time → 504;
- an upstream broke the HTTP exchange in some other way → 502;
- an upstream broke off a response already under way → the client's connection is cut, so its
  answer is visibly truncated, never complete-looking.

The client's path and query go out byte for byte, and its headers as they came less the hop-by-hop
ones: the session adds none of its own (no User-Agent, Accept, Accept-Encoding or Content-Type),
decompresses nothing, keeps no cookies and follows no redirects. Two things aiohttp does change:
a bodiless POST/PUT/PATCH/DELETE gets `Content-Length: 0` (the same framing as none, RFC 9112
§6.3), and aiohttp writes header values as UTF-8, so the rare value that is not valid UTF-8
(obs-text, RFC 9110 §5.5) goes out as its Latin-1 reading, UTF-8 encoded.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from aiohttp.payload import AsyncIterablePayload
from prometheus_client import Counter
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send
from yarl import URL

from orbilnot.gateway.upstreams import Upstream
from orbilnot.shared.config import GatewaySettings
from orbilnot.shared.observability import FORWARDED, request_id_var

logger = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §7.6.1: these describe one connection, not the message, so they never cross the proxy;
# neither do `Proxy-*` headers nor any header the `Connection` header names.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"})
# Set by the gateway itself for the upstream. `Expect: 100-continue` is answered to the client by
# the gateway's own server when the body is first read, and the upstream gets the body at once.
REQUEST_HEADERS_REPLACED = frozenset(
    {b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id", b"expect"}
)
# The gateway's server (uvicorn) writes its own Date and Server headers; passing the upstream's
# on as well would send each twice.
RESPONSE_HEADERS_REPLACED = frozenset({b"date", b"server"})
# What aiohttp would otherwise add to every request (Content-Type only to one with a body).
NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")

# Below the services' keep-alive timeout (SERVICE_KEEP_ALIVE_S, 3 s, serve.py): the gateway drops
# an idle connection before the service does, instead of racing it by writing a request into a
# socket being closed. A service shutting down keeps its idle connections that long too, so the
# shorter this is, the sooner a replica stops.
POOL_KEEPALIVE_EXPIRY_S = 2.0
# The longest status line and header line taken from an upstream: 100 KiB, what httpx's h11
# allowed for a whole response head (aiohttp's default is 8 KiB a line).
RESPONSE_LINE_MAX_BYTES = 100 * 1024

# When every instance of an upstream refuses, try them all again after this, doubling up to the
# maximum, until the connect timeout is spent.
REFUSED_RETRY_FIRST_BACKOFF_S = 0.05
REFUSED_RETRY_MAX_BACKOFF_S = 0.5

UPSTREAM_CONNECT_RETRIES = Counter(
    "orbilnot_gateway_upstream_connect_retries_total",
    "Rounds in which every instance of an upstream refused the connection and the gateway tried again",
    ["upstream"],
)
UPSTREAM_STALE_RETRIES = Counter(
    "orbilnot_gateway_upstream_stale_connection_retries_total",
    "Bodiless GET/HEAD requests sent again because the upstream connection broke before any answer",
    ["upstream"],
)

# Requests that may be sent a second time when their connection broke before any response byte:
# safe methods (RFC 9110 §9.2.1) without a body, so sending one twice changes nothing and there
# is no half-consumed client stream to replay.
RESENDABLE_METHODS = frozenset({"GET", "HEAD"})

_NOT_URL_SAFE = re.compile(rb"[^\x21-\x7e]")


class GatewayError(Exception):
    """A request the gateway answers itself, with `status` and `{"detail": detail}`."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class RequestBodyTooLarge(Exception):
    """The client's body grew past the configured limit while being streamed."""


class ClientDisconnected(Exception):
    """The client went away while its body was being read; nobody is left to answer."""


class ConnectionDropped(aiohttp.ClientConnectionError):
    """The upstream closed or reset an established connection before the response head arrived."""


# What breaks when the upstream closed a (usually reused, keep-alive) connection under a request:
# "Server disconnected" (ConnectionDropped, from _no_automatic_resend), or a write into a socket
# already being closed.
STALE_CONNECTION_ERRORS = (ConnectionDropped, aiohttp.ClientConnectionResetError)


async def _no_automatic_resend(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
    """Leave the decision to resend to the proxy.

    aiohttp sends an idempotent request (PUT and DELETE included) once more when its connection
    breaks, and has no setting to stop that; it does so for exactly these two errors, so they
    leave the session as ConnectionDropped instead, and `_open_response` alone decides (a bodiless
    GET/HEAD, counted in UPSTREAM_STALE_RETRIES)."""
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        raise  # no connection at all: never resent by aiohttp either
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise ConnectionDropped(str(exc)) from exc


class Proxy:
    """Forwards requests to upstreams through one pooled client session, opened by `running()`."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._max_body_bytes = settings.gateway_max_body_bytes
        self._connect_timeout_s = settings.gateway_connect_timeout_s
        # Waiting for a free pooled connection is bounded like a connect.
        self._pool_timeout_s = settings.gateway_connect_timeout_s
        # Bounds the wait for each part of the answer, and each write of the body (StreamedRequestBody).
        self._read_timeout_s = settings.gateway_read_timeout_s
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            # aiohttp's `connect` covers waiting for a pooled connection as well as opening one,
            # with one error for both; the pool wait is bounded by `_slots` instead, so that a
            # timeout here is always the upstream's (tried elsewhere, then 502) and a full pool
            # the gateway's own (503).
            connect=settings.gateway_connect_timeout_s,
            sock_connect=settings.gateway_connect_timeout_s,
            sock_read=settings.gateway_read_timeout_s,
        )
        self._pool_connections = settings.gateway_upstream_connections
        self._session: aiohttp.ClientSession | None = None
        # One per request between sending it and releasing its connection: at most
        # `_pool_connections` exchanges, hence connections, at a time.
        self._slots = asyncio.Semaphore(self._pool_connections)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Open the connection pool for the lifetime of the app (used in its lifespan)."""
        connector = aiohttp.TCPConnector(
            # The bound of `_slots`, which a request takes first: it waits here at most for a
            # connection aiohttp is still letting go of (the upstream answered before taking the
            # whole body, and the writer is being cancelled).
            limit=self._pool_connections,
            limit_per_host=0,
            keepalive_timeout=POOL_KEEPALIVE_EXPIRY_S,
            # Each new connection looks its host up again, as httpx did: a service's address may
            # change when its container is replaced.
            use_dns_cache=False,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=NO_AUTO_HEADERS,
            auto_decompress=False,
            trust_env=False,
            max_line_size=RESPONSE_LINE_MAX_BYTES,
            max_field_size=RESPONSE_LINE_MAX_BYTES,
            middlewares=(_no_automatic_resend,),
        )
        async with session:
            self._session = session
            try:
                yield
            finally:
                self._session = None

    @property
    def is_running(self) -> bool:
        return self._session is not None

    async def forward(self, scope: Scope, receive: Receive, send: Send, upstream: Upstream, path: bytes) -> None:
        """Answer the ASGI request in `scope` with `upstream`'s answer to the same request at `path`."""
        try:
            response = await self._open_response(scope, receive, upstream, path)
        except GatewayError as error:
            await JSONResponse({"detail": error.detail}, status_code=error.status)(scope, receive, send)
            return
        except ClientDisconnected:
            return
        scope[FORWARDED] = True  # the upstream's answer: its refusals are counted there, not here
        try:
            await _relay_response(response, send, upstream.name)
        finally:
            self._slots.release()

    async def _open_response(self, scope: Scope, receive: Receive, upstream: Upstream, path: bytes) -> ClientResponse:
        """Send the request to the first instance that accepts it; its response, body unread.
        Holds one of `_slots` when it returns; `forward` gives it back."""
        session = self._session
        if session is None:
            raise RuntimeError("the gateway's upstream pool is not open: was the app's lifespan run?")
        raw_headers: Headers = scope["headers"]
        content_length, chunked = _body_framing(raw_headers)
        if content_length is not None and content_length > self._max_body_bytes:
            raise self._too_large()
        body: StreamedRequestBody | None = None
        if chunked or content_length:
            body = StreamedRequestBody(receive, self._max_body_bytes, self._read_timeout_s)
            # Not one upstream connection for a client that has not started its body: a client
            # that sends headers and then nothing holds nothing (its server's body timeout ends it).
            try:
                await body.wait_for_first_chunk()
            except RequestBodyTooLarge as exc:
                raise self._too_large() from exc
        headers = _upstream_request_headers(scope, raw_headers, chunked)
        target = _request_target(scope, path)
        method: str = scope["method"]

        # A refused connection means nothing was sent, so even a POST can go to the next instance,
        # and when all refuse, to all of them again a moment later: right after an install or
        # during a rollout, a Service's endpoints may lag behind pods that are already up. All of
        # it within the connect timeout, which bounds what the client waits for a 502.
        deadline = time.monotonic() + self._connect_timeout_s
        backoff_s = REFUSED_RETRY_FIRST_BACKOFF_S
        # A connection can also break after it was taken, before any answer: an upstream that is
        # shutting down closes a keep-alive connection right after the response it was serving
        # when the shutdown began, and a request the gateway sends on it before the FIN arrives
        # gets no answer (scenario 8). A bodiless GET/HEAD is sent once more, to the next
        # instance (or on a new connection), within the same deadline; anything else is a 502,
        # as it may have been processed.
        may_resend = method in RESENDABLE_METHODS and body is None
        while True:
            instances = list(upstream.candidates())
            for instance in instances:
                await self._take_slot(upstream)
                try:
                    host = instance.host_header.decode("ascii")
                    url = instance.base_url + target
                    response = await self._send(session, method, url, [("host", host), *headers], body)
                except BaseException as exc:
                    self._slots.release()
                    if not isinstance(exc, Exception):
                        raise
                    failure = body.failure if body is not None else None
                    if failure is not None:  # the client's side, while its body was being sent
                        if isinstance(failure, RequestBodyTooLarge):
                            raise self._too_large() from exc
                        raise failure from exc
                    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
                        logger.warning("upstream %s at %s refused: %r", upstream.name, instance.base_url, exc)
                        upstream.mark_refused(instance)
                        continue
                    if isinstance(exc, TimeoutError):  # no answer in time (sock_read), or no write
                        raise GatewayError(504, f"upstream {upstream.name} timed out") from exc
                    if isinstance(exc, STALE_CONNECTION_ERRORS) and may_resend and time.monotonic() < deadline:
                        logger.info(
                            "upstream %s at %s dropped the connection, sending again: %r",
                            upstream.name,
                            instance.base_url,
                            exc,
                        )
                        UPSTREAM_STALE_RETRIES.labels(upstream.name).inc()
                        may_resend = False
                        if instance is instances[-1]:
                            instances.append(instance)  # the only one left: on another connection
                        continue
                    if isinstance(exc, aiohttp.ClientError):
                        logger.warning("upstream %s at %s failed: %r", upstream.name, instance.base_url, exc)
                        raise GatewayError(502, f"upstream {upstream.name} failed") from exc
                    raise
                upstream.mark_answered(instance)
                return response
            remaining_s = deadline - time.monotonic()
            if remaining_s <= backoff_s:
                raise GatewayError(502, f"upstream {upstream.name} unavailable")
            UPSTREAM_CONNECT_RETRIES.labels(upstream.name).inc()
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, REFUSED_RETRY_MAX_BACKOFF_S)

    async def _take_slot(self, upstream: Upstream) -> None:
        """One of the pool's `_slots`, waiting at most the pool timeout for it (else 503)."""
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns at once
            return
        try:
            async with asyncio.timeout(self._pool_timeout_s):
                await self._slots.acquire()
        except TimeoutError as exc:
            raise GatewayError(503, f"gateway busy: no connection free for {upstream.name}") from exc

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: StreamedRequestBody | None,
    ) -> ClientResponse:
        """The upstream's response to one request, once its status and headers are in."""
        # encoded=True: the URL is used as given, never re-quoted or normalised (yarl's default).
        request = session.request(
            method,
            URL(url, encoded=True),
            headers=headers,
            # A payload already: aiohttp would otherwise find the right one by isinstance checks.
            data=None if body is None else AsyncIterablePayload(body),
            allow_redirects=False,
        )
        if body is None:
            return await request
        # aiohttp's read timeout starts once the body is sent, and nothing bounds a write: while
        # a part of the body is being written, the body's deadline does (StreamedRequestBody).
        async with asyncio.timeout(None) as deadline:
            body.write_deadline = deadline
            try:
                return await request
            finally:
                body.write_deadline = None

    def _too_large(self) -> GatewayError:
        return GatewayError(413, f"request body larger than {self._max_body_bytes} bytes")


# --- the request, on its way to the upstream --------------------------------------------------


class StreamedRequestBody:
    """The client's body, pulled from ASGI only as fast as the upstream connection takes it.

    `wait_for_first_chunk` reads the first part ahead; iterating yields it first, then the rest.
    A failure on the client's side (`failure`) is kept, since aiohttp hands it on only wrapped.
    While the upstream takes a part (the time between yielding it and being asked for the next),
    `write_deadline`, when set, expires `write_timeout_s` later.
    """

    def __init__(self, receive: Receive, max_bytes: int, write_timeout_s: float) -> None:
        self._receive = receive
        self._max_bytes = max_bytes
        self._write_timeout_s = write_timeout_s
        self._received = 0
        self._first: bytes | None = None
        self._more_body = True
        self.failure: RequestBodyTooLarge | ClientDisconnected | None = None
        self.write_deadline: asyncio.Timeout | None = None

    async def wait_for_first_chunk(self) -> None:
        self._first = await self._next_chunk()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        while True:
            if self._first is not None:
                chunk, self._first = self._first, None
            elif self._more_body:
                chunk = await self._next_chunk()
            else:
                return
            if not chunk:
                continue
            deadline = self.write_deadline
            if deadline is not None and not deadline.expired():
                deadline.reschedule(loop.time() + self._write_timeout_s)
            yield chunk
            # Asked for the next part: the upstream took this one (or the socket buffered it).
            deadline = self.write_deadline
            if deadline is not None and not deadline.expired():
                deadline.reschedule(None)

    async def _next_chunk(self) -> bytes:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.failure = ClientDisconnected()
            raise self.failure
        chunk: bytes = message.get("body", b"")
        self._more_body = message.get("more_body", False)
        self._received += len(chunk)
        if self._received > self._max_bytes:
            self.failure = RequestBodyTooLarge()
            raise self.failure
        return chunk


def _body_framing(headers: Headers) -> tuple[int | None, bool]:
    """(declared Content-Length, chunked?) of the incoming request; chunked wins (RFC 9112 §6.3)."""
    content_length: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            content_length = int(value)  # the server has already rejected a malformed one
        elif name == b"transfer-encoding":
            chunked = True
    return (None, True) if chunked else (content_length, False)


def _upstream_request_headers(scope: Scope, raw: Headers, chunked: bool) -> list[tuple[str, str]]:
    """The client's end-to-end headers plus the forwarding headers; `Host` is added per instance."""
    headers = _end_to_end(raw, REQUEST_HEADERS_REPLACED)
    if chunked:
        # Framing is per hop: the body is re-chunked towards the upstream (aiohttp chunks a body
        # of unknown length and adds `Transfer-Encoding: chunked`), never length-framed.
        headers = [(name, value) for name, value in headers if name != b"content-length"]
    request_id = request_id_var.get() or uuid.uuid4().hex
    headers.append((b"x-request-id", request_id.encode("latin-1")))
    headers.append((b"x-forwarded-for", _forwarded_for(scope, raw)))
    headers.append((b"x-forwarded-proto", scope["scheme"].encode("ascii")))
    incoming_host = _first(raw, b"host")
    if incoming_host is not None:
        headers.append((b"x-forwarded-host", incoming_host))
    return [(name.decode("latin-1"), _header_text(value)) for name, value in headers]


def _header_text(value: bytes) -> str:
    """A header value as aiohttp takes it: text, which it writes as UTF-8. Bytes that are not
    UTF-8 (obs-text) can only be read as Latin-1, and go out UTF-8 encoded (the module docstring)."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _forwarded_for(scope: Scope, raw: Headers) -> bytes:
    """The incoming `X-Forwarded-For` chain with the client appended (the de-facto convention)."""
    chain = b", ".join(value for name, value in raw if name == b"x-forwarded-for")
    client = scope.get("client")
    if not client:
        return chain or b"unknown"
    address = str(client[0]).encode("latin-1")
    if not chain:
        return address
    # Behind a trusted proxy, uvicorn already took the client from the end of this chain.
    if chain.rsplit(b",", 1)[-1].strip() == address:
        return chain
    return chain + b", " + address


def _request_target(scope: Scope, path: bytes) -> str:
    """Path and query as the client sent them (still percent-encoded), ready to append to a base URL."""
    query: bytes = scope.get("query_string", b"")
    target = path + b"?" + query if query else path
    if not target.isascii():
        # Keep the client's bytes: encode them here rather than let the URL parser re-encode text.
        target = _NOT_URL_SAFE.sub(lambda match: b"%%%02X" % match[0][0], target)
    return target.decode("ascii")


def _end_to_end(headers: Iterable[tuple[bytes, bytes]], also_drop: frozenset[bytes]) -> Headers:
    """`headers` (lower-case names) without hop-by-hop ones, those `Connection` names, and `also_drop`.

    Values lose surrounding whitespace: it is not part of a field value (RFC 9110 §5.5), the
    server side may hand it over (`Authorization: Bearer `), and the client side refuses to send it."""
    headers = list(headers)
    named_in_connection = _connection_tokens(headers)
    return [
        (name, value.strip(b" \t"))
        for name, value in headers
        if name not in HOP_BY_HOP
        and name not in also_drop
        and name not in named_in_connection
        and not name.startswith(b"proxy-")
    ]


def _connection_tokens(headers: Headers) -> frozenset[bytes]:
    tokens = [token.strip().lower() for name, value in headers if name == b"connection" for token in value.split(b",")]
    return frozenset(tokens)


def _first(headers: Headers, wanted: bytes) -> bytes | None:
    for name, value in headers:
        if name == wanted:
            return value
    return None


# --- the answer, on its way back to the client -------------------------------------------------


async def _relay_response(response: ClientResponse, send: Send, upstream_name: str) -> None:
    """Stream the upstream's status, headers and body to the client as they arrive."""
    try:
        received = ((name.lower(), value) for name, value in response.raw_headers)
        headers = _end_to_end(received, RESPONSE_HEADERS_REPLACED)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        content = response.content
        while chunk := await content.readany():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The status line is already out; ending without completing the response makes the server
        # cut the connection, so the client sees a truncated answer, not a complete-looking one.
        logger.warning("upstream %s broke off its response: %r", upstream_name, exc)
        response.close()
    except BaseException:
        response.close()  # the client went away (or the task was cancelled): the rest is unread
        raise
    else:
        # Already back in the pool once the body was read to its end (unless the upstream answered
        # before taking the whole request body: aiohttp then stops sending it and closes instead).
        response.release()

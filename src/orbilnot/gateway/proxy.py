"""Forwarding one HTTP request to an upstream service and its answer back, streamed both ways.

Raw ASGI on the gateway side (no Request/Response objects, nothing buffered) and one pooled
`httpx.AsyncClient` on the upstream side. What an upstream problem becomes for the client:

- every instance refuses the connection (connect error or connect timeout) → 502;
- the gateway has no free pooled connection in time (it is saturated, not the upstream) → 503;
- an upstream accepted the request but did not answer (or read it) in time → 504;
- an upstream broke the HTTP exchange in some other way → 502.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from prometheus_client import Counter
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

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

# The connection pool: independent pools of up to POOL_SHARD_CONNECTIONS each (see
# ShardedPoolTransport for why), GATEWAY_UPSTREAM_CONNECTIONS (256) in all, so that many requests
# in flight before any waits for a connection.
POOL_SHARD_CONNECTIONS = 8
# Below the services' keep-alive timeout (SERVICE_KEEP_ALIVE_S, 3 s, serve.py): the gateway drops
# an idle connection before the service does, instead of racing it by writing a request into a
# socket being closed. A service shutting down keeps its idle connections that long too, so the
# shorter this is, the sooner a replica stops.
POOL_KEEPALIVE_EXPIRY_S = 2.0

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
# What httpx raises when the upstream closed a (usually reused, keep-alive) connection under a
# request: "Server disconnected without sending a response", or a reset while writing or reading.
STALE_CONNECTION_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)

_EMPTY_BODY = httpx.ByteStream(b"")
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


class Proxy:
    """Forwards requests to upstreams through one pooled transport, opened by `running()`.

    The transport is used directly, not through an `httpx.AsyncClient`: the client's per-request
    work (cookie jar, auth, redirects, event hooks) is nothing a gateway wants, and its cookie
    handling costs time quadratic in the number of request headers (20,000 headers kept the
    gateway busy for 16 s, scripts/edge_probe.py).
    """

    def __init__(self, settings: GatewaySettings) -> None:
        self._max_body_bytes = settings.gateway_max_body_bytes
        self._connect_timeout_s = settings.gateway_connect_timeout_s
        self._timeout = httpx.Timeout(
            connect=settings.gateway_connect_timeout_s,
            read=settings.gateway_read_timeout_s,
            write=settings.gateway_read_timeout_s,
            # Waiting for a free pooled connection is bounded like a connect.
            pool=settings.gateway_connect_timeout_s,
        ).as_dict()
        self._pool_connections = settings.gateway_upstream_connections
        self._transport: ShardedPoolTransport | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Open the connection pool for the lifetime of the app (used in its lifespan)."""
        shard_connections = min(POOL_SHARD_CONNECTIONS, self._pool_connections)
        transport = ShardedPoolTransport(
            max(1, self._pool_connections // shard_connections),
            httpx.Limits(
                max_connections=shard_connections,
                # As many as it may open: httpcore 1.0 compares this limit with *all* of a pool's
                # connections, so anything lower closes connections in the middle of a burst.
                max_keepalive_connections=shard_connections,
                keepalive_expiry=POOL_KEEPALIVE_EXPIRY_S,
            ),
        )
        async with transport:
            self._transport = transport
            try:
                yield
            finally:
                self._transport = None

    @property
    def is_running(self) -> bool:
        return self._transport is not None

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
        await _relay_response(response, send, upstream.name)

    async def _open_response(self, scope: Scope, receive: Receive, upstream: Upstream, path: bytes) -> httpx.Response:
        """Send the request to the first instance that accepts it; its response, body unread."""
        transport = self._transport
        if transport is None:
            raise RuntimeError("the gateway's upstream pool is not open: was the app's lifespan run?")
        raw_headers: Headers = scope["headers"]
        content_length, chunked = _body_framing(raw_headers)
        if content_length is not None and content_length > self._max_body_bytes:
            raise self._too_large()
        body: httpx.AsyncByteStream = _EMPTY_BODY
        if chunked or content_length:
            streamed = StreamedRequestBody(receive, self._max_body_bytes)
            # Not one upstream connection for a client that has not started its body: a client
            # that sends headers and then nothing holds nothing (its server's body timeout ends it).
            try:
                await streamed.wait_for_first_chunk()
            except RequestBodyTooLarge as exc:
                raise self._too_large() from exc
            body = streamed
        headers = _upstream_request_headers(scope, raw_headers, chunked)
        target = _request_target(scope, path)

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
        may_resend = scope["method"] in RESENDABLE_METHODS and body is _EMPTY_BODY
        while True:
            instances = list(upstream.candidates())
            for instance in instances:
                request = httpx.Request(
                    scope["method"],
                    instance.base_url + target,
                    headers=[(b"host", instance.host_header), *headers],
                    stream=body,
                    extensions={"timeout": self._timeout},
                )
                try:
                    response = await transport.handle_async_request(request)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    logger.warning("upstream %s at %s refused: %r", upstream.name, instance.base_url, exc)
                    upstream.mark_refused(instance)
                    continue
                except httpx.PoolTimeout as exc:
                    raise GatewayError(503, f"gateway busy: no connection free for {upstream.name}") from exc
                except httpx.TimeoutException as exc:
                    raise GatewayError(504, f"upstream {upstream.name} timed out") from exc
                except STALE_CONNECTION_ERRORS as exc:
                    if not may_resend or time.monotonic() >= deadline:
                        logger.warning("upstream %s at %s failed: %r", upstream.name, instance.base_url, exc)
                        raise GatewayError(502, f"upstream {upstream.name} failed") from exc
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
                except httpx.TransportError as exc:
                    logger.warning("upstream %s at %s failed: %r", upstream.name, instance.base_url, exc)
                    raise GatewayError(502, f"upstream {upstream.name} failed") from exc
                except RequestBodyTooLarge as exc:
                    raise self._too_large() from exc
                upstream.mark_answered(instance)
                response.request = request
                return response
            remaining_s = deadline - time.monotonic()
            if remaining_s <= backoff_s:
                raise GatewayError(502, f"upstream {upstream.name} unavailable")
            UPSTREAM_CONNECT_RETRIES.labels(upstream.name).inc()
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, REFUSED_RETRY_MAX_BACKOFF_S)

    def _too_large(self) -> GatewayError:
        return GatewayError(413, f"request body larger than {self._max_body_bytes} bytes")


# --- the request, on its way to the upstream --------------------------------------------------


class StreamedRequestBody(httpx.AsyncByteStream):
    """The client's body, pulled from ASGI only as fast as the upstream connection takes it.

    `wait_for_first_chunk` reads the first part ahead; iterating yields it first, then the rest.
    """

    def __init__(self, receive: Receive, max_bytes: int) -> None:
        self._receive = receive
        self._max_bytes = max_bytes
        self._received = 0
        self._first: bytes | None = None
        self._more_body = True

    async def wait_for_first_chunk(self) -> None:
        self._first = await self._next_chunk()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._first:
            yield self._first
        self._first = None
        while self._more_body:
            chunk = await self._next_chunk()
            if chunk:
                yield chunk

    async def _next_chunk(self) -> bytes:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk: bytes = message.get("body", b"")
        self._more_body = message.get("more_body", False)
        self._received += len(chunk)
        if self._received > self._max_bytes:
            raise RequestBodyTooLarge
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


def _upstream_request_headers(scope: Scope, raw: Headers, chunked: bool) -> Headers:
    """The client's end-to-end headers plus the forwarding headers; `Host` is added per instance."""
    headers = _end_to_end(raw, REQUEST_HEADERS_REPLACED)
    if chunked:
        # Framing is per hop: the body is re-chunked towards the upstream, never length-framed.
        headers = [(name, value) for name, value in headers if name != b"content-length"]
        headers.append((b"transfer-encoding", b"chunked"))
    request_id = request_id_var.get() or uuid.uuid4().hex
    headers.append((b"x-request-id", request_id.encode("latin-1")))
    headers.append((b"x-forwarded-for", _forwarded_for(scope, raw)))
    headers.append((b"x-forwarded-proto", scope["scheme"].encode("ascii")))
    incoming_host = _first(raw, b"host")
    if incoming_host is not None:
        headers.append((b"x-forwarded-host", incoming_host))
    return headers


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


async def _relay_response(response: httpx.Response, send: Send, upstream_name: str) -> None:
    """Stream the upstream's status, headers and body to the client as they arrive."""
    try:
        received = ((name.lower(), value) for name, value in response.headers.raw)
        headers = _end_to_end(received, RESPONSE_HEADERS_REPLACED)
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except httpx.TransportError as exc:
        # The status line is already out; ending without completing the response makes the server
        # cut the connection, so the client sees a truncated answer, not a complete-looking one.
        logger.warning("upstream %s broke off its response: %r", upstream_name, exc)
    finally:
        await response.aclose()


# --- the connection pool ------------------------------------------------------------------------


class ShardedPoolTransport(httpx.AsyncBaseTransport):
    """Several small connection pools behind the one client; each request takes the least busy.

    httpcore 1.0's pool rescans all its connections for every connection per request, and hands one
    idle connection to several waiting requests that then retry (encode/httpcore#1035): measured
    here, one pool costs ~1.6 ms of CPU per request at 32 concurrent requests and ~4 ms at 64, against
    ~0.3 ms at 1. Small pools keep that bookkeeping near its minimum at any concurrency. Choosing the
    least busy pool also keeps a light load on the first few, so their connections stay warm.
    """

    def __init__(self, shards: int, limits: httpx.Limits) -> None:
        # One TLS context for all (for https:// upstreams): each would otherwise load the CA bundle.
        tls = httpx.create_ssl_context(trust_env=False)
        self._shards = [
            _Shard(httpx.AsyncHTTPTransport(verify=tls, limits=limits, trust_env=False)) for _ in range(shards)
        ]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        shard = min(self._shards, key=_in_flight)
        shard.in_flight += 1
        try:
            response = await shard.transport.handle_async_request(request)
        except BaseException:
            shard.in_flight -= 1
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _ReleasingStream(response.stream, shard)
        return response

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.transport.aclose()


@dataclass(slots=True)
class _Shard:
    transport: httpx.AsyncHTTPTransport
    in_flight: int = 0  # requests sent and not yet closed


def _in_flight(shard: _Shard) -> int:
    return shard.in_flight


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that counts its request as finished in its shard once closed."""

    def __init__(self, stream: httpx.AsyncByteStream, shard: _Shard) -> None:
        self._stream = stream
        self._shard: _Shard | None = shard

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        if self._shard is not None:
            self._shard.in_flight -= 1
            self._shard = None
        await self._stream.aclose()

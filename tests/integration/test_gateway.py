"""The gateway over real HTTP: uvicorn serving it and small echo upstreams on free loopback ports.

The upstreams are test doubles of the services. Each answers with what it received, so a test can
check what the gateway forwarded; all run in this process and event loop, which lets a test
coordinate with an upstream (for the streaming tests) through asyncio events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs

import httpx
import pytest
import pytest_asyncio
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from orbilnot.gateway import create_app
from orbilnot.gateway.upstreams import Instance, Upstream
from orbilnot.shared.config import GatewaySettings

MAX_BODY = 64 * 1024
READ_TIMEOUT_S = 0.5
STARTUP_DEADLINE_S = 10.0


# --- upstream test doubles -------------------------------------------------------------------------


class EchoUpstream:
    """A stand-in for a service: answers every request with a JSON account of what it received.

    Query parameters ask for special behaviour: `delay=<s>` answers late, `hop=1` adds
    hop-by-hop response headers, `stream=1` streams a two-part body, `redirect=<url>` answers 307.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0
        self.first_body_chunk = asyncio.Event()  # set when a request body's first bytes arrive
        self.client_has_first_part = asyncio.Event()  # set by a test reading a streamed answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        self.requests += 1
        query = parse_qs(scope["query_string"].decode())
        size, digest = await self._read_body(receive)
        if "delay" in query:
            await asyncio.sleep(float(query["delay"][0]))
        if "stream" in query:
            await self._stream_answer(send)
            return
        if "redirect" in query:
            await _send(send, 307, b"", [(b"location", query["redirect"][0].encode())])
            return
        echo = {
            "upstream": self.name,
            "method": scope["method"],
            "path": scope["raw_path"].decode(),
            "query": scope["query_string"].decode(),
            "headers": [[name.decode(), value.decode()] for name, value in scope["headers"]],
            "bodySize": size,
            "bodySha256": digest,
        }
        extra = HOP_BY_HOP_RESPONSE_HEADERS if "hop" in query else []
        await _send(send, 200, json.dumps(echo).encode(), [(b"content-type", b"application/json"), *extra])

    async def _read_body(self, receive: Receive) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            if chunk:
                self.first_body_chunk.set()
            digest.update(chunk)
            size += len(chunk)
            more_body = message.get("more_body", False)
        return size, digest.hexdigest()

    async def _stream_answer(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first;", "more_body": True})
        try:
            await asyncio.wait_for(self.client_has_first_part.wait(), 5)
            last = b"second;"
        except TimeoutError:
            last = b"the gateway held the first part back"
        await send({"type": "http.response.body", "body": last})


HOP_BY_HOP_RESPONSE_HEADERS = [
    (b"connection", b"x-hop-response"),
    (b"x-hop-response", b"1"),
    (b"keep-alive", b"timeout=5"),
    (b"proxy-authenticate", b"Basic"),
    (b"trailer", b"x-checksum"),
    (b"upgrade", b"h2c"),
    (b"x-end-to-end-response", b"kept"),
]


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- serving -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(app: ASGIApp, lifespan: Literal["on", "off"] = "off") -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free loopback port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan=lifespan, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while not server.started:
        if task.done():
            task.result()  # raises what stopped it
            raise RuntimeError("server stopped before it started")
        if time.monotonic() > deadline:
            raise TimeoutError("server did not start")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@contextlib.contextmanager
def refused_url() -> Iterator[str]:
    """A URL whose port is bound but not listening: a connect is refused, and no one can take it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class Stack:
    gateway: str
    gateway_all_dead: str
    billing: EchoUpstream
    order_a: EchoUpstream
    order_b: EchoUpstream
    notification: EchoUpstream


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack() -> AsyncIterator[Stack]:
    billing, order_a, order_b = EchoUpstream("billing"), EchoUpstream("order-a"), EchoUpstream("order-b")
    notification = EchoUpstream("notification")
    # One exit stack: servers stop in the reverse order they started (uvicorn restores the
    # signal handlers it replaced, which only works last-in, first-out).
    async with contextlib.AsyncExitStack() as servers:
        dead, dead_too = servers.enter_context(refused_url()), servers.enter_context(refused_url())
        urls = {
            stub.name: await servers.enter_async_context(serve(stub))
            for stub in (billing, order_a, order_b, notification)
        }
        settings = gateway_settings(
            billing=[urls["billing"]],
            order=[urls["order-a"], urls["order-b"]],
            notification=[dead, urls["notification"]],
        )
        all_dead = gateway_settings(billing=[dead, dead_too], order=[dead], notification=[dead_too])
        yield Stack(
            gateway=await servers.enter_async_context(serve(create_app(settings), lifespan="on")),
            gateway_all_dead=await servers.enter_async_context(serve(create_app(all_dead), lifespan="on")),
            billing=billing,
            order_a=order_a,
            order_b=order_b,
            notification=notification,
        )


def gateway_settings(
    billing: list[str], order: list[str], notification: list[str], **overrides: Any
) -> GatewaySettings:
    return GatewaySettings(
        billing_url=billing,
        order_url=order,
        notification_url=notification,
        **{
            "gateway_connect_timeout_s": 1.0,
            "gateway_read_timeout_s": READ_TIMEOUT_S,
            "gateway_max_body_bytes": MAX_BODY,
            **overrides,
        },
    )


@pytest_asyncio.fixture(loop_scope="session")
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    # A generous timeout: a hanging gateway fails the test instead of hanging the run.
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=10, trust_env=False) as client:
        yield client


def header(echo: dict[str, Any], name: str) -> list[str]:
    """All values the upstream received for header `name`."""
    return [value for key, value in echo["headers"] if key == name.lower()]


async def raw_exchange(base_url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes exactly as given (no client-side path normalisation); status and body back."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # the request says Connection: close
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# --- the gateway's own endpoints -------------------------------------------------------------------


async def test_serves_its_own_health_and_metrics_at_the_root(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "UP"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"upstreamClient": True}
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert "orbilnot_http_requests_total" in metrics.text


# `/` is not among them: it redirects to the console (SPEC §10; tests/e2e/test_console.py).
@pytest.mark.parametrize(
    "path", ["/accounts", "/accountx/1", "/orderz", "/ordersx/1", "/notification/1", "/docs", "/consolex", "/console/x"]
)
async def test_unknown_paths_are_a_json_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert "detail" in response.json()


async def test_a_path_escaping_its_prefix_with_dot_segments_is_not_routed(stack: Stack) -> None:
    request = b"GET /account/../metrics HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"
    status, body = await raw_exchange(stack.gateway, request)
    assert status == 404
    assert "detail" in json.loads(body)


# --- routing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "service", "upstream_path"),
    [
        ("/account", "billing", "/account"),
        ("/account/", "billing", "/account/"),
        ("/account/0b5f/transactions", "billing", "/account/0b5f/transactions"),
        ("/account/docs", "billing", "/account/docs"),
        ("/account/openapi.json", "billing", "/account/openapi.json"),
        ("/orders", "order", "/orders"),
        ("/orders/", "order", "/orders/"),
        ("/orders/acc/ord", "order", "/orders/acc/ord"),
        ("/order", "order", "/orders"),
        ("/order/", "order", "/orders/"),
        ("/order/acc", "order", "/orders/acc"),
        ("/notifications/acc", "notification", "/notifications/acc"),
        ("/notifications/acc/", "notification", "/notifications/acc/"),
    ],
)
async def test_routes_by_whole_prefix_segment_and_keeps_the_rest_of_the_path(
    client: httpx.AsyncClient, path: str, service: str, upstream_path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    echo = response.json()
    assert echo["upstream"].startswith(service)
    assert echo["path"] == upstream_path


async def test_query_string_and_percent_encoding_reach_the_upstream_unchanged(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/order/a%2Fb/?x=1&y=%20z&x=2&empty=")
    echo = response.json()
    assert echo["path"] == "/orders/a%2Fb/"
    assert echo["query"] == "x=1&y=%20z&x=2&empty="


async def test_methods_and_upstream_statuses_pass_through(client: httpx.AsyncClient) -> None:
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        assert (await client.request(method, "/account/")).json()["method"] == method
    redirect = await client.get("/account/?redirect=http://elsewhere.example/x")
    assert redirect.status_code == 307  # handed to the client, not followed by the gateway
    assert redirect.headers["location"] == "http://elsewhere.example/x"


# --- bodies ----------------------------------------------------------------------------------------


async def test_a_post_body_arrives_intact(client: httpx.AsyncClient) -> None:
    body = os.urandom(MAX_BODY)
    response = await client.post("/account/", content=body)
    echo = response.json()
    assert echo["bodySize"] == len(body)
    assert echo["bodySha256"] == hashlib.sha256(body).hexdigest()
    assert header(echo, "content-length") == [str(len(body))]


async def test_a_chunked_body_is_streamed_through_before_it_is_complete(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    stack.billing.first_body_chunk.clear()
    first, second = os.urandom(1000), os.urandom(20_000)

    async def body() -> AsyncIterator[bytes]:
        yield first
        # A gateway that buffered the body would never pass this point.
        await asyncio.wait_for(stack.billing.first_body_chunk.wait(), 5)
        yield second

    response = await client.post("/account/upload", content=body())
    echo = response.json()
    assert echo["bodySize"] == len(first) + len(second)
    assert echo["bodySha256"] == hashlib.sha256(first + second).hexdigest()
    assert header(echo, "transfer-encoding") == ["chunked"]
    assert header(echo, "content-length") == []


async def test_a_response_is_streamed_through_as_it_arrives(stack: Stack, client: httpx.AsyncClient) -> None:
    stack.billing.client_has_first_part.clear()
    async with client.stream("GET", "/account/download?stream=1") as response:
        parts = response.aiter_raw()
        first = await anext(parts)
        stack.billing.client_has_first_part.set()
        rest = b"".join([part async for part in parts])
    assert (first, rest) == (b"first;", b"second;")


async def test_a_body_declared_too_large_is_refused_without_reaching_the_upstream(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    requests_before = stack.billing.requests
    response = await client.post("/account/", content=b"x" * (MAX_BODY + 1))
    assert response.status_code == 413
    assert "detail" in response.json()
    assert stack.billing.requests == requests_before


async def test_a_chunked_body_growing_too_large_is_refused(client: httpx.AsyncClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * (MAX_BODY // 4)

    response = await client.post("/account/", content=body())
    assert response.status_code == 413
    assert "detail" in response.json()


# --- headers ---------------------------------------------------------------------------------------


async def test_hop_by_hop_headers_are_stripped_both_ways(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/account/?hop=1",
        headers={
            "Connection": "keep-alive, X-Hop-Request",
            "X-Hop-Request": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "X-End-To-End": "kept",
        },
    )
    echo = response.json()
    received = {name for name, _ in echo["headers"]}
    assert not received & {"x-hop-request", "keep-alive", "te", "proxy-authorization"}
    assert header(echo, "connection") != ["keep-alive, X-Hop-Request"]
    assert header(echo, "x-end-to-end") == ["kept"]

    answered = {name.lower() for name in response.headers}
    assert not answered & {"x-hop-response", "keep-alive", "proxy-authenticate", "trailer", "upgrade"}
    assert response.headers.get("connection") != "x-hop-response"
    assert response.headers["x-end-to-end-response"] == "kept"


async def test_header_values_with_surrounding_whitespace_are_forwarded_trimmed(stack: Stack) -> None:
    """Whitespace around a field value is not part of it (RFC 9110 §5.5), and the upstream client
    refuses to send it: `Authorization: Bearer ` (what a client with an empty token sends) once
    made the gateway answer 502 (found by the fuzzing of issue 9's bearer scheme)."""
    request = (
        b"GET /account/?ws=1 HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer \r\n"
        b"X-Padded: \t kept \t\r\nConnection: close\r\n\r\n"
    )
    status, body = await raw_exchange(stack.gateway, request)
    assert status == 200, body
    echo = json.loads(body)
    assert header(echo, "authorization") == ["Bearer"]
    assert header(echo, "x-padded") == ["kept"]


async def test_forwarding_headers_are_added_and_host_is_the_upstreams(stack: Stack, client: httpx.AsyncClient) -> None:
    echo = (await client.get("/account/")).json()
    gateway_authority = stack.gateway.removeprefix("http://")
    assert header(echo, "x-forwarded-for") == ["127.0.0.1"]
    assert header(echo, "x-forwarded-proto") == ["http"]
    assert header(echo, "x-forwarded-host") == [gateway_authority]
    assert len(header(echo, "host")) == 1
    assert header(echo, "host") != [gateway_authority]


async def test_the_request_id_is_generated_passed_on_and_returned(client: httpx.AsyncClient) -> None:
    response = await client.get("/account/")
    generated = response.headers["x-request-id"]
    assert generated
    assert header(response.json(), "x-request-id") == [generated]

    response = await client.get("/account/", headers={"X-Request-ID": "req-42"})
    assert response.headers["x-request-id"] == "req-42"
    assert header(response.json(), "x-request-id") == ["req-42"]


# --- several instances and failing upstreams -------------------------------------------------------


async def test_requests_are_balanced_round_robin_across_instances(client: httpx.AsyncClient) -> None:
    served_by = [(await client.get("/orders/")).json()["upstream"] for _ in range(6)]
    assert set(served_by) == {"order-a", "order-b"}
    assert all(a != b for a, b in itertools.pairwise(served_by))


async def test_an_instance_refusing_connections_is_skipped(client: httpx.AsyncClient) -> None:
    for _ in range(4):
        response = await client.post("/notifications/acc", content=b"{}")
        assert response.status_code == 200
        assert response.json()["upstream"] == "notification"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_all_instances_refusing_is_a_quick_json_502(stack: Stack, method: str) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_all_dead, timeout=10, trust_env=False) as client:
        started = time.monotonic()
        response = await client.request(method, "/account/", content=b"{}")
        # Retried while the connect timeout (1 s here) lasts, not a moment longer.
        assert time.monotonic() - started < 1.0 + 0.5
    assert response.status_code == 502
    assert response.json() == {"detail": "upstream billing unavailable"}


async def test_a_refused_connection_is_retried_until_the_upstream_comes_up() -> None:
    """Right after an install or during a rollout, a service may accept connections a moment after
    the gateway's request arrives: the client gets the answer, not a 502."""
    upstream = EchoUpstream("billing-late")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: refused until the upstream starts
        late = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = gateway_settings(billing=[late], order=[late], notification=[late])
        settings.gateway_connect_timeout_s = 10.0  # ample: the upstream starts as soon as it is refused
        async with (
            serve(create_app(settings), lifespan="on") as gateway,
            httpx.AsyncClient(base_url=gateway, timeout=20, trust_env=False) as client,
        ):

            async def retries() -> float:
                return billing_connect_retries((await client.get("/metrics")).text)

            retries_before = await retries()
            request = asyncio.create_task(client.post("/account/", content=b"{}"))
            deadline = time.monotonic() + STARTUP_DEADLINE_S
            while await retries() == retries_before and not request.done():
                assert time.monotonic() < deadline, "the gateway never tried the upstream"
                await asyncio.sleep(0.01)
            server = uvicorn.Server(uvicorn.Config(upstream, lifespan="off", log_level="warning"))
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            try:
                response = await request
            finally:
                server.should_exit = True
                await asyncio.wait_for(serving, 10)
            assert response.status_code == 200
            assert response.json()["upstream"] == "billing-late"
            assert await retries() > retries_before


def billing_connect_retries(metrics: str) -> float:
    """The retry counter of the billing upstream in a Prometheus exposition (0 before the first)."""
    prefix = 'orbilnot_gateway_upstream_connect_retries_total{upstream="billing"} '
    return next((float(line[len(prefix) :]) for line in metrics.splitlines() if line.startswith(prefix)), 0.0)


class HangingUpUpstream:
    """An upstream that reads a request and closes the connection without a byte of answer, the
    first `drops` times (what a keep-alive connection closed by a service shutting down does to a
    request sent on it); after that it answers 200 `ok`."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                if self.requests <= self.drops:
                    break
                assert b"content-length" not in head.lower()
                # A response to HEAD has no body (RFC 9110 §9.3.2): its bytes would be read as
                # the next response's.
                body = b"" if head.startswith(b"HEAD ") else b"ok"
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n" + body)
                await writer.drain()
        writer.close()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        async with server:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@contextlib.asynccontextmanager
async def gateway_to_billing(*billing: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = gateway_settings(billing=list(billing), order=list(billing), notification=list(billing))
    async with (
        serve(create_app(settings), lifespan="on") as gateway,
        httpx.AsyncClient(base_url=gateway, timeout=20, trust_env=False) as client,
    ):
        yield client


def billing_stale_retries(metrics: str) -> float:
    prefix = 'orbilnot_gateway_upstream_stale_connection_retries_total{upstream="billing"} '
    return next((float(line[len(prefix) :]) for line in metrics.splitlines() if line.startswith(prefix)), 0.0)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_get_whose_connection_is_closed_unanswered_is_sent_again_on_a_new_connection(method: str) -> None:
    """Scenario 8's race: the only instance drops the request without answering (a service that is
    shutting down closing a keep-alive connection); a bodiless GET/HEAD is sent once more."""
    upstream = HangingUpUpstream(drops=1)
    async with upstream.serving() as url, gateway_to_billing(url) as client:
        before = billing_stale_retries((await client.get("/metrics")).text)
        response = await client.request(method, "/account/")
        assert response.status_code == 200
        assert upstream.requests == 2
        assert billing_stale_retries((await client.get("/metrics")).text) == before + 1


async def test_a_get_dropped_unanswered_goes_to_the_next_instance() -> None:
    dropping, answering = HangingUpUpstream(drops=1_000), HangingUpUpstream(drops=0)
    async with dropping.serving() as first, answering.serving() as second, gateway_to_billing(first, second) as client:
        for _ in range(4):  # round robin: at least two of these start at the dropping instance
            assert (await client.get("/account/")).status_code == 200
        assert dropping.requests >= 2


async def test_a_get_is_sent_again_only_once() -> None:
    upstream = HangingUpUpstream(drops=1_000)
    async with upstream.serving() as url, gateway_to_billing(url) as client:
        response = await client.get("/account/")
        assert response.status_code == 502
        assert response.json() == {"detail": "upstream billing failed"}
        assert upstream.requests == 2


@pytest.mark.parametrize(("method", "body"), [("POST", b"{}"), ("PUT", b"{}"), ("DELETE", b""), ("GET", b"{}")])
async def test_a_request_that_may_have_been_processed_is_never_sent_again(method: str, body: bytes) -> None:
    """An unsafe method, or any request with a body: the upstream may have acted on it."""
    upstream = HangingUpUpstream(drops=1)
    async with upstream.serving() as url, gateway_to_billing(url) as client:
        response = await client.request(method, "/account/", content=body)
        assert response.status_code == 502
        assert response.json() == {"detail": "upstream billing failed"}
        assert upstream.requests == 1


async def test_an_upstream_too_slow_to_answer_is_a_json_504_within_the_timeout(
    client: httpx.AsyncClient,
) -> None:
    started = time.monotonic()
    response = await client.get("/account/slow?delay=2")
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json() == {"detail": "upstream billing timed out"}
    assert READ_TIMEOUT_S <= elapsed < READ_TIMEOUT_S + 1.0


class RawUpstream:
    """An upstream written at the socket level, for what a well-behaved server never does."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        async with server:
            yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_an_upstream_that_stops_reading_the_body_is_a_json_504_within_the_timeout() -> None:
    """Accepted, and then neither the body read nor an answer: once the socket buffers are full,
    the write of the body waits on the upstream, and that wait is bounded like a read."""
    taken, done = asyncio.Event(), asyncio.Event()

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken.set()
        await done.wait()
        writer.close()

    big = 64 * 1024 * 1024  # far beyond what the loopback's socket buffers hold
    async with RawUpstream(never_read).serving() as url:
        settings = gateway_settings(billing=[url], order=[url], notification=[url], gateway_max_body_bytes=big)
        async with serve(create_app(settings), lifespan="on") as gateway:
            host, port = gateway.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            head = b"POST /account/ HTTP/1.1\r\nHost: gateway\r\nContent-Length: %d\r\n\r\n" % big
            sending = asyncio.create_task(send_ignoring_errors(writer, head + bytes(big)))
            try:
                started = time.monotonic()
                answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                elapsed = time.monotonic() - started
            finally:
                sending.cancel()
                writer.close()
                done.set()
    assert taken.is_set()
    assert answer.startswith(b"HTTP/1.1 504 "), answer
    assert elapsed < READ_TIMEOUT_S + 3.0


async def send_ignoring_errors(writer: asyncio.StreamWriter, data: bytes) -> None:
    with contextlib.suppress(ConnectionError):
        writer.write(data)
        await writer.drain()


async def test_a_response_broken_off_midway_reaches_the_client_truncated() -> None:
    """The status line is out when the upstream breaks off: the client must see the cut (its
    connection closed before the declared length), never a shorter answer that looks complete."""

    async def break_off(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        writer.close()

    async with RawUpstream(break_off).serving() as url, gateway_to_billing(url) as client:
        host, port = str(client.base_url).removeprefix("http://").rstrip("/").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"GET /account/ HTTP/1.1\r\nHost: gateway\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 10)  # until the gateway closes it
        finally:
            writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"content-length: 100" in head.lower()
    assert body == b"x" * 10


async def test_a_full_pool_is_a_json_503_and_frees_up_again() -> None:
    """One pooled connection, taken by a slow request: the next request waits the connect timeout
    for it and is answered 503 (the gateway is saturated, not the upstream)."""
    billing = EchoUpstream("billing-one-connection")
    async with serve(billing) as billing_url:
        settings = gateway_settings(
            billing=[billing_url],
            order=[billing_url],
            notification=[billing_url],
            gateway_upstream_connections=1,
            gateway_read_timeout_s=10.0,
            gateway_connect_timeout_s=0.3,
        )
        async with (
            serve(create_app(settings), lifespan="on") as gateway,
            httpx.AsyncClient(base_url=gateway, timeout=20, trust_env=False) as client,
        ):
            slow = asyncio.create_task(client.get("/account/?delay=1.5"))
            deadline = time.monotonic() + STARTUP_DEADLINE_S
            while billing.requests == 0:
                assert time.monotonic() < deadline, "the slow request never reached the upstream"
                await asyncio.sleep(0.01)
            started = time.monotonic()
            busy = await client.get("/account/")
            waited = time.monotonic() - started
            assert busy.status_code == 503
            assert busy.json() == {"detail": "gateway busy: no connection free for billing"}
            assert 0.3 <= waited < 1.3
            assert billing.requests == 1
            assert (await slow).status_code == 200
            assert (await client.get("/account/")).status_code == 200


async def test_the_upstream_gets_no_header_the_client_did_not_send(stack: Stack) -> None:
    """No User-Agent, Accept, Accept-Encoding or Content-Type of the gateway's own: only the client's
    headers and the forwarding ones."""
    request = b"POST /account/?bare=1 HTTP/1.1\r\nHost: gateway\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    status, body = await raw_exchange(stack.gateway, request)
    assert status == 200, body
    received = sorted(name for name, _ in json.loads(body)["headers"])
    assert received == [
        "content-length",
        "host",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-request-id",
    ]


# --- CORS ------------------------------------------------------------------------------------------

PREFLIGHT = {"Origin": "http://shop.example", "Access-Control-Request-Method": "PUT"}


async def test_cors_is_open_by_default(client: httpx.AsyncClient) -> None:
    preflight = await client.options("/account/", headers=PREFLIGHT)
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "PUT" in preflight.headers["access-control-allow-methods"]

    simple = await client.get("/account/", headers={"Origin": "http://shop.example"})
    assert simple.headers["access-control-allow-origin"] == "*"
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


async def test_cors_origins_can_be_restricted() -> None:
    settings = gateway_settings(
        billing=["http://127.0.0.1:9"],
        order=["http://127.0.0.1:9"],
        notification=["http://127.0.0.1:9"],
        gateway_cors_origins=["http://shop.example"],
    )
    # Preflights are answered by the gateway itself, so no server or upstream is needed.
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        allowed = await client.options("/account/", headers=PREFLIGHT)
        refused = await client.options("/account/", headers={**PREFLIGHT, "Origin": "http://evil.example"})
    assert allowed.headers["access-control-allow-origin"] == "http://shop.example"
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


# --- choosing instances (no I/O) -------------------------------------------------------------------


def test_an_instance_that_refused_is_tried_last_until_its_cooldown_ends() -> None:
    now = [0.0]
    upstream = Upstream.from_urls("order", ["http://a", "http://b", "http://c"], cooldown_s=5.0)
    upstream.clock = lambda: now[0]
    a, b, c = upstream.instances
    assert list(upstream.candidates()) == [a, b, c]
    assert list(upstream.candidates()) == [b, c, a]

    upstream.mark_refused(c)
    assert list(upstream.candidates()) == [a, b, c]  # c's turn to go first, but it is cooling down
    assert list(upstream.candidates()) == [a, b, c]
    now[0] = 5.0
    assert list(upstream.candidates()) == [b, c, a]

    upstream.mark_refused(a)
    upstream.mark_answered(a)
    assert list(upstream.candidates()) == [c, a, b]


def test_an_instance_takes_the_host_header_from_its_url() -> None:
    assert Instance.parse("http://billing:8081/").host_header == b"billing:8081"
    with pytest.raises(ValueError, match="no host"):
        Instance.parse("http:///nohost")

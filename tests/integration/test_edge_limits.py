"""The gateway against hostile clients (issue 8): a real `orbilnot serve gateway` process, its own
event loop and all, in front of a stand-in upstream served in this test's process.

The gateway runs with short timeouts (1 s) so that each attack ends quickly; the defaults are in
the README's "Edge limits" table. Every attack targets 127.0.0.1 only and is bounded in size and
time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import uvicorn
from starlette.types import Receive, Scope, Send

from orbilnot.infra import free_ports
from support import Stack

SHORT_S = "1"  # the header, body and keep-alive timeouts of the gateway under test
ANSWER_DEADLINE_S = 15.0  # bounds every wait for the gateway; far above SHORT_S on a busy machine


class Upstream:
    """A stand-in service: reads the whole body, then answers 200. Counts what it saw."""

    def __init__(self) -> None:
        self.requests = 0
        self.disconnects = 0  # requests whose body never completed: the gateway let go of them

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.requests += 1
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                return
            more_body = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@dataclass
class Gateways:
    upstream: Upstream
    edge: str  # short timeouts, a two-connection upstream pool
    rate_limited: str  # a bucket of 3 requests, refilled at one per 10 s

    @property
    def edge_port(self) -> int:
        return int(self.edge.rsplit(":", 1)[1])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateways(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateways]:
    upstream = Upstream()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    upstream_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(upstream, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    env = {
        **os.environ,
        "BILLING_URL": upstream_url,
        "ORDER_URL": upstream_url,
        "NOTIFICATION_URL": upstream_url,
        "LOG_FORMAT": "text",
    }
    stack = Stack(urls={}, env=env, logs=Path(tmp_path_factory.mktemp("edge-logs")))
    edge_port, limited_port = free_ports(2)
    try:
        stack.start(
            "edge",
            "gateway",
            edge_port,
            {
                "HTTP_HEADER_TIMEOUT_S": SHORT_S,
                "HTTP_BODY_TIMEOUT_S": SHORT_S,
                "HTTP_KEEP_ALIVE_S": SHORT_S,
                "GATEWAY_UPSTREAM_CONNECTIONS": "2",
            },
        )
        stack.start(
            "rate-limited",
            "gateway",
            limited_port,
            {"GATEWAY_RATE_LIMIT_PER_S": "0.1", "GATEWAY_RATE_LIMIT_BURST": "3"},
        )
        yield Gateways(upstream, stack.urls["edge"], stack.urls["rate-limited"])
    finally:
        stack.stop_all()
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
        sock.close()


# --- raw HTTP/1.1, since the attacks are what no well-behaved client library sends -------------


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and the rest of what the server sends until it closes the connection."""
    data = await asyncio.wait_for(reader.read(), ANSWER_DEADLINE_S)
    assert data.startswith(b"HTTP/1.1 "), f"no HTTP answer before the connection closed: {data[:80]!r}"
    return int(data.split(b" ", 2)[1]), data


async def send_ignoring_reset(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write `data`; a server that refuses part-way may close before taking it all, which is fine."""
    with contextlib.suppress(ConnectionError):
        writer.write(data)
        await writer.drain()


async def latency_of_another_client(base_url: str) -> float:
    async with httpx.AsyncClient(trust_env=False, timeout=ANSWER_DEADLINE_S * 4) as http:
        started = time.perf_counter()
        response = await http.get(f"{base_url}/health/live", headers={"connection": "close"})
        assert response.status_code == 200
        return time.perf_counter() - started


# --- header limits -------------------------------------------------------------------------------


async def test_a_header_flood_is_refused_at_once_and_others_are_served_meanwhile(gateways: Gateways) -> None:
    flood = b"GET /account/x HTTP/1.1\r\nHost: gateway\r\n"
    flood += b"".join(b"X-H%d: v\r\n" % i for i in range(20_000)) + b"\r\n"  # 250 kB
    requests_before = gateways.upstream.requests
    async with connection(gateways.edge_port) as (reader, writer):
        await send_ignoring_reset(writer, flood)
        # Another client, while the gateway holds the flood: the best of a few tries, so that one
        # unlucky scheduling hiccup of a busy machine is not taken for a frozen gateway.
        latencies = [await latency_of_another_client(gateways.edge) for _ in range(5)]
        status, _ = await read_answer(reader)
    assert status == 431
    assert statistics.median(latencies) < 0.100, f"another client waited {latencies}"
    assert gateways.upstream.requests == requests_before


async def test_a_single_huge_header_is_refused(gateways: Gateways) -> None:
    requests_before = gateways.upstream.requests
    async with connection(gateways.edge_port) as (reader, writer):
        head = b"GET /account/x HTTP/1.1\r\nHost: gateway\r\nX-Huge: " + b"a" * 1_000_000 + b"\r\n\r\n"
        sending = asyncio.create_task(send_ignoring_reset(writer, head))
        status, body = await read_answer(reader)
        await sending
    assert status == 431
    assert b"detail" in body
    assert gateways.upstream.requests == requests_before


async def test_a_hundred_headers_still_pass(gateways: Gateways) -> None:
    headers = {f"x-h{i}": "v" for i in range(95)}  # with httpx's own five, 100
    async with httpx.AsyncClient(trust_env=False, timeout=ANSWER_DEADLINE_S) as http:
        response = await http.get(f"{gateways.edge}/account/x", headers=headers)
    assert response.status_code == 200


# --- slow and silent clients ---------------------------------------------------------------------


async def test_a_silent_connection_is_answered_408_and_closed(gateways: Gateways) -> None:
    async with connection(gateways.edge_port) as (reader, _):
        status, _ = await read_answer(reader)  # we send nothing at all
    assert status == 408


async def test_a_connection_trickling_its_headers_is_cut_off(gateways: Gateways) -> None:
    async with connection(gateways.edge_port) as (reader, writer):
        writer.write(b"GET /account/x HTTP/1.1\r\nHost: gateway\r\n")
        answer = asyncio.create_task(read_answer(reader))
        for n in range(200):  # one header every 0.2 s, for at most 40 s: each keeps it "active"
            done, _ = await asyncio.wait([answer], timeout=0.2)
            if done:
                break
            await send_ignoring_reset(writer, b"X-Slow-%d: v\r\n" % n)
        status, _ = await answer
    assert status == 408


async def test_a_trickling_body_is_cut_off_and_its_upstream_connection_released(gateways: Gateways) -> None:
    """The gateway under test has two upstream connections; two slow clients take both."""
    disconnects_before = gateways.upstream.disconnects

    async def trickle() -> int:
        async with connection(gateways.edge_port) as (reader, writer):
            writer.write(b"POST /account/x HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100000\r\n\r\nx")
            answer = asyncio.create_task(read_answer(reader))
            for _ in range(200):  # a byte every 0.2 s (5 B/s against a minimum of 1 kB/s)
                done, _ = await asyncio.wait([answer], timeout=0.2)
                if done:
                    break
                await send_ignoring_reset(writer, b"x")
            status, _ = await answer
            return status

    assert await asyncio.gather(trickle(), trickle()) == [408, 408]
    # The upstream saw both requests end without their bodies: the gateway let go of them...
    deadline = time.monotonic() + ANSWER_DEADLINE_S
    while gateways.upstream.disconnects < disconnects_before + 2:
        assert time.monotonic() < deadline, "the gateway still holds the slow clients' upstream requests"
        await asyncio.sleep(0.02)
    # ...and its two pooled connections serve others again.
    async with httpx.AsyncClient(trust_env=False, timeout=ANSWER_DEADLINE_S) as http:
        responses = await asyncio.gather(*(http.post(f"{gateways.edge}/account/x", content=b"{}") for _ in range(3)))
    assert [r.status_code for r in responses] == [200, 200, 200]


async def test_an_idle_keep_alive_connection_is_closed(gateways: Gateways) -> None:
    async with connection(gateways.edge_port) as (reader, writer):
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: gateway\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_DEADLINE_S)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
        await asyncio.wait_for(reader.readexactly(length), ANSWER_DEADLINE_S)
        # Kept alive, then idle: the gateway closes it (at HTTP_KEEP_ALIVE_S) without a word.
        assert await asyncio.wait_for(reader.read(), ANSWER_DEADLINE_S) == b""


# --- rate limit ------------------------------------------------------------------------------------


async def test_a_client_past_its_bucket_gets_429_with_retry_after(gateways: Gateways) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=ANSWER_DEADLINE_S) as http:
        statuses = []
        for _ in range(10):
            response = await http.get(f"{gateways.rate_limited}/orders/x")
            statuses.append(response.status_code)
            if response.status_code == 429:
                break
        assert statuses[-1] == 429, statuses
        assert 3 <= len(statuses) - 1 <= 4, statuses  # the burst of 3 (and one refilled, if slow)
        assert int(response.headers["retry-after"]) >= 1
        assert "detail" in response.json()
        # The gateway's own probes and metrics are never limited, and the refusals are counted.
        assert (await http.get(f"{gateways.rate_limited}/health/live")).status_code == 200
        metrics = (await http.get(f"{gateways.rate_limited}/metrics")).text
    assert metric_value(metrics, "orbilnot_gateway_rate_limited_total") >= 1


def metric_value(exposition: str, name: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics")

"""What one forwarded request costs the gateway's HTTP client (issue 10): aiohttp's client as the
gateway uses it (gateway/proxy.py), httpx's pool transport as the gateway used it before, and a
bare keep-alive pool (asyncio + httptools), the least any client could cost.

    .venv/bin/python scripts/http_client_cost.py [--requests 4000] [--concurrency 8,32]

Starts a stand-in upstream (uvicorn, a fixed small JSON answer, like POST /orders) on a free
loopback port, then, for each client in a process of its own on uvloop: `concurrency` tasks send
POSTs with an order's body back to back over keep-alive connections, and the process's own CPU
time (user + system) over the run is divided by the requests. The figure is the client's cost
alone; the upstream's is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

BODY = json.dumps({"accountId": "0b6f1c9e-3a57-4c1b-9d7e-2f4a8b1c2d3e", "amount": 10}).encode()
HEADERS = [
    (b"content-type", b"application/json"),
    (b"x-request-id", b"0b6f1c9e3a574c1b9d7e2f4a8b1c2d3e"),
    (b"x-forwarded-for", b"127.0.0.1"),
    (b"x-forwarded-proto", b"http"),
]
ANSWER = b'"0b6f1c9e-3a57-4c1b-9d7e-2f4a8b1c2d3e"'

One = Callable[[], Awaitable[tuple[int, bytes]]]


async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


async def drive(one: One, requests: int, concurrency: int) -> tuple[float, float]:
    """(µs of CPU per request, requests per second), after one warm-up request per task."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status, body = await one()
            assert status == 200 and body == ANSWER, (status, body)

    await asyncio.gather(*(one() for _ in range(concurrency)))
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    after, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return 1e6 * cpu / requests, requests / elapsed


async def with_httpx(port: int, requests: int, concurrency: int) -> tuple[float, float]:
    """As gateway/proxy.py did before aiohttp: pool transports of 8 connections, the least busy one
    per request (httpcore's pool cost grows with its size)."""
    import httpx

    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8, keepalive_expiry=2.0)
    shards = [[httpx.AsyncHTTPTransport(limits=limits), 0] for _ in range(max(1, concurrency // 8))]
    timeout = httpx.Timeout(5.0).as_dict()
    headers = [(b"host", b"order"), (b"content-length", str(len(BODY)).encode()), *HEADERS]

    async def one() -> tuple[int, bytes]:
        shard = min(shards, key=lambda s: s[1])
        shard[1] += 1
        try:
            request = httpx.Request(
                "POST",
                f"http://127.0.0.1:{port}/orders",
                headers=headers,
                stream=httpx.ByteStream(BODY),
                extensions={"timeout": timeout},
            )
            response = await shard[0].handle_async_request(request)
            body = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
            await response.aclose()
            return response.status_code, body
        finally:
            shard[1] -= 1

    return await drive(one, requests, concurrency)


async def with_aiohttp(port: int, requests: int, concurrency: int) -> tuple[float, float]:
    """As gateway/proxy.py does: one session, the body streamed, the URL taken as given, the pool
    bounded by a semaphore of its own."""
    import aiohttp
    from yarl import URL

    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=2.0, use_dns_cache=False)
    skip = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
    slots = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=skip, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        headers = [("host", "order"), ("content-length", str(len(BODY)))]
        headers += [(name.decode(), value.decode()) for name, value in HEADERS]

        async def streamed() -> AsyncIterator[bytes]:  # the gateway streams the client's body through
            yield BODY

        async def one() -> tuple[int, bytes]:
            async with slots:
                url = URL(f"http://127.0.0.1:{port}/orders", encoded=True)
                response = await session.request("POST", url, data=streamed(), headers=headers, allow_redirects=False)
                body = await response.read()
                response.release()
                return response.status, body

        return await drive(one, requests, concurrency)


async def with_raw_pool(port: int, requests: int, concurrency: int) -> tuple[float, float]:
    """The least a keep-alive client can do: idle connections in a deque, httptools parsing."""
    import httptools

    loop = asyncio.get_running_loop()

    class Connection(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
            self.body: list[bytes] = []
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            assert self.waiter is not None
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))
            self.waiter, self.body = None, []

        def connection_lost(self, exc: Exception | None) -> None:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(ConnectionError("closed"))

    idle: collections.deque[Connection] = collections.deque()
    head = b"POST /orders HTTP/1.1\r\nhost: order\r\ncontent-length: %d\r\n" % len(BODY)
    head += b"".join(name + b": " + value + b"\r\n" for name, value in HEADERS) + b"\r\n"

    async def one() -> tuple[int, bytes]:
        connection = idle.pop() if idle else (await loop.create_connection(Connection, "127.0.0.1", port))[1]
        assert connection.transport is not None
        connection.waiter = loop.create_future()
        connection.transport.write(head + BODY)
        result = await connection.waiter
        idle.append(connection)
        return result

    return await drive(one, requests, concurrency)


CLIENTS = {"aiohttp": with_aiohttp, "httpx": with_httpx, "raw-pool": with_raw_pool}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", default="8,32")
    parser.add_argument("--client", choices=sorted(CLIENTS), help=argparse.SUPPRESS)  # one child run
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop

    if args.client:
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            cpu_us, rate = uvloop.run(CLIENTS[args.client](args.port, args.requests, concurrency))
            print(f"{args.client:9s} {concurrency:4d} concurrent: {cpu_us:6.0f} µs CPU per request ({rate:,.0f}/s)")
        return
    port = free_port()
    serve = f"import uvicorn, http_client_cost as m; uvicorn.run(m.upstream, port={port}, log_level='warning')"
    server = subprocess.Popen([sys.executable, "-c", serve], cwd=Path(__file__).parent)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        for client in CLIENTS:
            command = [sys.executable, __file__, "--client", client, "--port", str(port)]
            subprocess.run([*command, "--requests", str(args.requests), "--concurrency", args.concurrency], check=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()

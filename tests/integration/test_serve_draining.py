"""The services' HTTP protocol while shutting down (serve.py `DrainingHttpProtocol`), over a real
socket: no client request is lost to a connection closed under it."""

from __future__ import annotations

import asyncio
import socket
import time

import uvicorn
from starlette.types import Receive, Scope, Send

from orbilnot.serve import _protocol
from orbilnot.shared.config import HttpLimitSettings

DEADLINE_S = 10.0


async def test_a_response_under_way_when_shutdown_begins_leaves_its_connection_to_drain() -> None:
    """Its headers went out without `Connection: close`, so the client puts the connection back in
    its pool: closing it right after the response would lose the next request sent on it (the
    gateway's 502 in scenario 8). It drains like an idle connection instead."""
    headers_sent, release = asyncio.Event(), asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        if scope["path"] == "/slow":
            headers_sent.set()
            await release.wait()
        await send({"type": "http.response.body", "body": b"ok"})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="off", log_level="warning", http=_protocol(HttpLimitSettings()), timeout_keep_alive=3
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        await asyncio.wait_for(headers_sent.wait(), DEADLINE_S)
        server.should_exit = True
        while await _accepts(port):  # the listener closes in the same step as connections are told
            assert time.monotonic() < deadline, "the server did not begin its shutdown"
            await asyncio.sleep(0.02)
        release.set()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
        assert b"connection: close" not in head.lower()
        assert await asyncio.wait_for(reader.readexactly(2), DEADLINE_S) == b"ok"

        writer.write(b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n")  # as a pool would, on the same connection
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"connection: close" in head.lower()  # answered, then closed
        assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b"ok"
        writer.close()
        await asyncio.wait_for(serving, DEADLINE_S)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, DEADLINE_S)


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True

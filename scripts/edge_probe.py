"""Measure what hostile clients do to a gateway process (issue 8): the figures in the README's
"Edge limits" section come from here.

    .venv/bin/python scripts/edge_probe.py [--headers 20000] [--slow-clients 300]

Starts a stand-in upstream and `orbilnot serve gateway` on free loopback ports, then:

1. header flood: one request with `--headers` tiny headers, while another client asks
   `/health/live` every 20 ms; prints how long the flood took to be answered, and the other
   client's worst and median latency meanwhile;
2. slow clients: `--slow-clients` connections each start a POST and trickle its body one byte every
   2 s; prints what another client's request gets while they do (the gateway's upstream pool holds
   256 connections), and what became of the slow clients.

Everything targets 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx

from orbilnot.infra import free_ports


async def upstream_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """A stand-in service: reads the whole body, then answers 200."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str]):  # type: ignore[no-untyped-def]
    proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(trust_env=False) as http:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url, timeout=1)).status_code < 500:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(url)
            await asyncio.sleep(0.1)


async def read_status(reader: asyncio.StreamReader) -> int | None:
    line = await reader.readline()
    return int(line.split()[1]) if line.startswith(b"HTTP/") else None


async def latency_sampler(port: int, stop: asyncio.Event) -> list[float]:
    latencies = []
    async with httpx.AsyncClient(trust_env=False, timeout=120) as http:
        while not stop.is_set():
            started = time.monotonic()
            await http.get(f"http://127.0.0.1:{port}/health/live", headers={"connection": "close"})
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.02)
    return latencies


async def header_flood(port: int, count: int) -> None:
    stop = asyncio.Event()
    sampler = asyncio.create_task(latency_sampler(port, stop))
    await asyncio.sleep(0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"GET /account/x HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
    head += b"".join(b"X-H%d: v\r\n" % i for i in range(count)) + b"\r\n"
    started = time.monotonic()
    writer.write(head)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    try:
        status = await asyncio.wait_for(read_status(reader), 300)
    except (TimeoutError, ConnectionError) as error:
        status = repr(error)  # type: ignore[assignment]
    flood_s = time.monotonic() - started
    writer.close()
    await asyncio.sleep(0.5)
    stop.set()
    latencies = await sampler
    print(f"header flood: {count} headers ({len(head) / 1000:.0f} kB) answered {status} after {flood_s:.3f} s")
    print(
        f"  another client's /health/live meanwhile: worst {max(latencies) * 1000:.0f} ms, "
        f"median {statistics.median(latencies) * 1000:.1f} ms over {len(latencies)} requests"
    )


async def trickler(port: int, started: asyncio.Event, outcome: list[str]) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as error:
        outcome.append(f"connect failed: {error!r}")
        return
    began = time.monotonic()
    try:
        writer.write(b"POST /account/x HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100000\r\n\r\nx")
        await writer.drain()
        started.set()
        read = asyncio.create_task(read_status(reader))
        while not read.done():
            done, _ = await asyncio.wait([read], timeout=2)
            if not done:
                writer.write(b"x")
                await writer.drain()
        outcome.append(f"answered {read.result()} after {time.monotonic() - began:.0f} s")
    except (ConnectionError, OSError):
        outcome.append(f"cut after {time.monotonic() - began:.0f} s")
    except asyncio.CancelledError:
        outcome.append("still open")
        raise
    finally:
        writer.close()


async def slow_clients(port: int, count: int, watch_s: float) -> None:
    outcome: list[str] = []
    events = [asyncio.Event() for _ in range(count)]
    tasks = [asyncio.create_task(trickler(port, event, outcome)) for event in events]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
    await asyncio.sleep(1)
    print(f"slow clients: {count} connections trickling a body one byte every 2 s")
    async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
        began = time.monotonic()
        while time.monotonic() - began < watch_s:
            started = time.monotonic()
            response = await http.get(f"http://127.0.0.1:{port}/account/x")
            print(
                f"  t={time.monotonic() - began:4.0f} s another client's GET: {response.status_code} "
                f"in {(time.monotonic() - started) * 1000:.0f} ms"
            )
            await asyncio.sleep(3)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    summary: dict[str, int] = {}
    for line in outcome:
        key = line.split(" after ")[0]
        summary[key] = summary.get(key, 0) + 1
    print(f"  the slow clients after {watch_s:.0f} s: {summary}")


@contextlib.asynccontextmanager
async def running_gateway() -> AsyncIterator[int]:
    upstream_port, gateway_port = free_ports(2)
    upstream = f"http://127.0.0.1:{upstream_port}"
    with (
        process([sys.executable, __file__, "--serve-upstream", str(upstream_port)], {}),
        process(
            [sys.executable, "-m", "orbilnot.cli", "serve", "gateway", "--port", str(gateway_port)],
            {"BILLING_URL": upstream, "ORDER_URL": upstream, "NOTIFICATION_URL": upstream, "LOG_LEVEL": "ERROR"},
        ),
    ):
        await wait_ready(f"{upstream}/")
        await wait_ready(f"http://127.0.0.1:{gateway_port}/health/live")
        yield gateway_port


async def main(args: argparse.Namespace) -> None:
    async with running_gateway() as port:
        await header_flood(port, args.headers)
    async with running_gateway() as port:
        await slow_clients(port, args.slow_clients, args.watch_s)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--headers", type=int, default=20_000)
    parser.add_argument("--slow-clients", type=int, default=300)
    parser.add_argument("--watch-s", type=float, default=20.0)
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve_upstream:
        import uvicorn

        uvicorn.run(upstream_app, host="127.0.0.1", port=arguments.serve_upstream, log_level="error")
    else:
        asyncio.run(main(arguments))

#!/usr/bin/env python3
"""Benchmark: the whole stack on this machine, measured, with numbers printed (not asserted).

    .venv/bin/python scripts/benchmark.py [--rate 50] [--seconds 10] [--orders 5000] [--concurrency 64]

Starts its own PostgreSQL and Kafka (temporary directory, free ports) and the four processes,
then measures:
  1. readiness: seconds from spawning each process to its /health/ready answering 200;
  2. latency: orders placed through the gateway at a steady rate (open loop); for each, the time
     from the order's commit to its notification's commit, both read from the database clock;
  3. throughput: orders placed as fast as `--concurrency` clients can, and how many per second
     reach a final status end to end;
  4. memory: resident set (now and peak) of every service process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

from orbilnot.infra import free_ports
from orbilnot.infra.kafka import LocalKafka
from orbilnot.infra.postgres import LocalPostgres
from orbilnot.migrations.runner import migrate
from orbilnot.up import gateway_env, spawn, stop_processes, wait_ready

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("billing", "order", "notification", "gateway")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def open_accounts(http: httpx.AsyncClient, count: int, balance: int) -> list[str]:
    responses = await asyncio.gather(
        *(http.post("/account", json={"actionType": "CREATE_NEW", "amount": balance}) for _ in range(count))
    )
    return [r.json() for r in responses]


async def latency_phase(http: httpx.AsyncClient, db: asyncpg.Connection, rate: float, seconds: float) -> None:
    accounts = await open_accounts(http, 50, 10**9)
    total = int(rate * seconds)
    interval = 1 / rate
    started = time.perf_counter()
    tasks = []
    for i in range(total):
        # Open loop: each order leaves at its scheduled time, whatever the previous ones did.
        delay = started + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(http.post("/orders", json={"accountId": accounts[i % 50], "amount": 1})))
    order_ids = [r.json() for r in await asyncio.gather(*tasks)]
    query = """
        SELECT extract(epoch FROM n.created_at - o.created_at) * 1000
        FROM order_service.orders o JOIN notification_service.notifications n USING (order_number)
        WHERE o.id = ANY($1::uuid[])"""
    deadline = time.monotonic() + 60
    while True:
        rows = await db.fetch(query, order_ids)
        if len(rows) == total or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    latencies = [float(r[0]) for r in rows]
    print(f"\nlatency, order committed → notification committed, {total} orders at {rate:g}/s:")
    print(f"  notified {len(latencies)}/{total}")
    for p in (50, 90, 99):
        print(f"  p{p}: {percentile(latencies, p):7.1f} ms")
    print(f"  max: {max(latencies):7.1f} ms   mean: {statistics.fmean(latencies):.1f} ms")


async def _post_orders(port: int, accounts: list[str], count: int, order_ids: list[str]) -> None:
    """One keep-alive connection placing orders back to back, over raw HTTP/1.1.

    Not httpx: its connection pool costs milliseconds of CPU per request at tens of concurrent
    requests (encode/httpcore#1035), which made the load generator, not the system, the limit.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in range(count):
            body = json.dumps({"accountId": accounts[i % len(accounts)], "amount": 7}).encode()
            writer.write(
                b"POST /orders HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"order refused: {head[:200]!r}")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
            )
            order_ids.append(json.loads(await reader.readexactly(length)))
    finally:
        writer.close()


async def throughput_phase(
    gateway: str, http: httpx.AsyncClient, db: asyncpg.Connection, orders: int, concurrency: int
) -> None:
    accounts = await open_accounts(http, 200, 1000)  # some orders will be denied, as in life
    port = int(gateway.rsplit(":", 1)[1])
    order_ids: list[str] = []
    per_client = orders // concurrency
    started = time.perf_counter()
    await asyncio.gather(*(_post_orders(port, accounts, per_client, order_ids) for _ in range(concurrency)))
    placed_s = time.perf_counter() - started
    final = (
        "SELECT count(*) FROM order_service.orders WHERE id = ANY($1::uuid[]) AND status IN ('CONFIRMED','CANCELLED')"
    )
    deadline = time.monotonic() + 120
    while await db.fetchval(final, order_ids) < len(order_ids) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # polling the database; there is no event to wait on
    decided_s = time.perf_counter() - started
    decided = await db.fetchval(final, order_ids)
    print(f"\nthroughput, {len(order_ids)} orders from {concurrency} keep-alive connections through the gateway:")
    print(f"  placed (HTTP 200): {len(order_ids) / placed_s:7.0f} orders/s")
    print(
        f"  decided end to end: {decided / decided_s:7.0f} orders/s ({decided}/{len(order_ids)} in {decided_s:.1f} s)"
    )


async def measure(gateway: str, database_url: str, args: argparse.Namespace) -> None:
    db = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    try:
        # A client per phase: keep-alive connections left idle between phases would be closed by
        # the server under the next phase's first requests.
        async with httpx.AsyncClient(base_url=gateway, timeout=30, limits=limits) as http:
            await latency_phase(http, db, args.rate, args.seconds)
        if args.orders:
            async with httpx.AsyncClient(base_url=gateway, timeout=30, limits=limits) as http:
                await throughput_phase(gateway, http, db, args.orders, args.concurrency)
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0, help="orders per second in the latency phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    parser.add_argument("--orders", type=int, default=5000, help="orders in the throughput phase (0: skip)")
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="orbilnot-bench-"))
    pg_port, kafka_port, controller_port, *ports = free_ports(7)
    postgres = LocalPostgres(root / "postgres", pg_port)
    kafka = LocalKafka(root / "kafka", kafka_port, controller_port, REPO / ".orbilnot" / "kafka-lib")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        postgres.start()
        kafka.start()
        asyncio.run(migrate(postgres.url, postgres.service_passwords))
        env = {
            **dict(__import__("os").environ),
            "DATABASE_URL": postgres.url,
            # Each service as its own role, as `orbilnot up` runs them.
            **{f"{s.upper()}_DATABASE_URL": postgres.service_url(s) for s in ("billing", "order", "notification")},
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "LOG_LEVEL": "WARNING",
        }
        urls = {service: f"http://127.0.0.1:{port}" for service, port in zip(SERVICES, ports, strict=False)}
        print("readiness, spawn → /health/ready 200:")
        for service, port in zip(SERVICES, ports, strict=False):
            spawned = time.perf_counter()
            process = spawn(service, port, gateway_env(env, urls) if service == "gateway" else env)
            processes.append(process)
            if not wait_ready(urls[service], process):
                raise SystemExit(f"{service} did not become ready")
            print(f"  {service:<13} {time.perf_counter() - spawned:5.2f} s")
        asyncio.run(measure(urls["gateway"], postgres.url, args))
        print("\nmemory (resident now / peak):")
        for service, process in zip(SERVICES, processes, strict=True):
            now, peak = rss_mb(process.pid)
            print(f"  {service:<13} {now:6.1f} MB / {peak:6.1f} MB")
    finally:
        stop_processes(processes)
        kafka.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

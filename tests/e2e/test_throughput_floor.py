"""The throughput floor (issue 10): the stack sustains 100 orders/s with every order notified.

500 orders leave open-loop at 100/s (5 s) through the gateway, on at most 32 keep-alive
connections, as `make bench` places them (`bench.loadgen`), and every one must be notified.
A floor that catches a stack unable to sustain 100/s, never a timing assertion that a busy
machine breaks (`make bench` measures the real figures):

- CPU, the rate bound: the stack's processes (gateway, services, PostgreSQL, the broker) may
  spend at most 20 ms of CPU per order, counted from /proc like `make bench` does; at 100
  orders/s that is both cores of the reference machine. What the stack spends idle (safety-net
  polls, Kafka's fetch loops and heartbeats), measured for 3 s before, is taken off for the
  time the orders took, as a slow machine stretches it. Paced by what the processes did, not by
  the wall clock, so sharing the machine hardly moves it (6 to 10 ms today). On this machine
  shared by several test suites (load average 30 on two cores), the unchanged stack placed only
  21 orders/s: a wall-clock bound tight enough to mean 100/s would fail there.
- Nothing stalls: the last answer comes at most 60 s after the last scheduled send (a stack that
  stops answering holds all 32 connections and the schedule slips), and every order is notified
  at most 60 s after the schedule's end.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import httpx

from bench.loadgen import LoadSpec, open_loop
from bench.procstat import Watched, cpu_delta, cpu_snapshot
from support import RunningInfra, Stack

RATE = 100.0
ORDERS = 500
CONNECTIONS = 32
ACCOUNTS = 50
CORES = 2  # the reference machine (README, "Performance")
CPU_MS_PER_ORDER_AT_MOST = 1000 * CORES / RATE
IDLE_SAMPLE_S = 3.0
PLACED_LATE_BY_AT_MOST_S = 60.0
NOTIFIED_LATE_BY_AT_MOST_S = 60.0


async def notified_order_numbers(http: httpx.AsyncClient, accounts: list[str]) -> set[str]:
    responses = await asyncio.gather(*(http.get(f"/notifications/{account}") for account in accounts))
    return {note["orderNumber"] for response in responses for note in response.json()}


def stack_processes(stack: Stack, infra: RunningInfra) -> dict[str, Watched]:
    postgres, kafka = infra.postgres.pid, infra.kafka.pid
    assert postgres is not None and kafka is not None
    services = {name: Watched(process.pid) for name, process in stack.processes.items()}
    return {**services, "postgres": Watched(postgres, tree=True), "kafka": Watched(kafka)}


async def test_the_stack_sustains_100_orders_per_second_every_order_notified(stack: Stack, infra: RunningInfra) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=30) as http:
        opened = await asyncio.gather(
            *(http.post("/account", json={"actionType": "CREATE_NEW", "amount": 10_000}) for _ in range(ACCOUNTS))
        )
        accounts = [str(response.json()) for response in opened]
        spec = LoadSpec(
            port=int(urlsplit(stack.gateway).port or 80),
            accounts=accounts,
            mode="open",
            rate=RATE,
            count=ORDERS,
            max_connections=CONNECTIONS,
        )
        processes = stack_processes(stack, infra)
        idle_from, idle_cpu_before = time.monotonic(), cpu_snapshot(processes)
        await asyncio.sleep(IDLE_SAMPLE_S)  # measuring the stack at rest, not waiting for anything
        idle_s, idle_cpu = time.monotonic() - idle_from, cpu_delta(idle_cpu_before, cpu_snapshot(processes))
        cpu_before = cpu_snapshot(processes)
        started = time.monotonic()
        placed = await open_loop(spec)
        schedule_s, took_s = ORDERS / RATE, placed.finished
        # Every bound is checked and every one broken is reported, the CPU figures included.
        broken = []
        if placed.failed or len(placed.placed) != ORDERS:
            broken.append(f"{len(placed.placed)} of {ORDERS} orders placed; refused: {placed.failures}")
        if took_s > schedule_s + PLACED_LATE_BY_AT_MOST_S:
            broken.append(f"{ORDERS} orders at {RATE:g}/s took {took_s:.1f} s to place: the stack stalls")

        expected = {f"{p.account_id}:{p.order_id}" for p in placed.placed}  # SPEC §3: the order number
        deadline = started + schedule_s + NOTIFIED_LATE_BY_AT_MOST_S
        notified: set[str] = set()
        while True:
            pending = sorted({number.split(":")[0] for number in expected - notified})
            notified |= await notified_order_numbers(http, pending)
            if expected <= notified or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)  # polling the API; nothing announces a notification
        if missing := expected - notified:
            broken.append(
                f"{len(missing)} of {ORDERS} orders not notified {NOTIFIED_LATE_BY_AT_MOST_S:g} s after the "
                f"{schedule_s:g} s schedule ended, e.g. {sorted(missing)[:3]}"
            )

    spent, window_s = cpu_delta(cpu_before, cpu_snapshot(processes)), time.monotonic() - started
    busy = {name: max(0.0, seconds - idle_cpu[name] / idle_s * window_s) for name, seconds in spent.items()}
    per_order_ms = {name: round(1000 * seconds / ORDERS, 2) for name, seconds in busy.items()}
    total_ms = sum(per_order_ms.values())
    if total_ms > CPU_MS_PER_ORDER_AT_MOST:
        broken.append(f"{total_ms:.1f} ms of CPU per order: {RATE:g} orders/s would need more than {CORES} cores")
    idle_ms_per_s = round(1000 * sum(idle_cpu.values()) / idle_s)
    figures = f"placed in {took_s:.1f} s; CPU per order {total_ms:.1f} ms {per_order_ms}; idle {idle_ms_per_s} ms/s"
    print(figures)  # shown with -s
    assert not broken, "\n".join([*broken, figures])

"""Scenarios 3 and 4: the Kafka broker killed (SIGKILL) and PostgreSQL stopped in immediate mode
(a crash: the next start runs recovery), each restarted mid-load. The services must get their
connections back by themselves, drain what piled up, and keep every SPEC §5 guarantee.

These tests break servers, so they get servers of their own: this module's `infra` (overriding the
session's) is a PostgreSQL and a Kafka in a temporary directory on free ports, and the tests that
run after this module never see a restarted server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from chaos import Disruption, acknowledged, progress_or_timeout, run_with_disruptions, service_processes
from chaos import until_readiness as until_ready
from replicated import LONG, ReplicatedStack
from workload import Workload, check_invariants

from support import RunningInfra, started_infra


@pytest.fixture(scope="module")
def infra(kafka_lib_dir: Path) -> Iterator[RunningInfra]:
    with started_infra("orbilnot-restarts-", kafka_lib_dir) as running:
        yield running


def _on_dedicated_servers(stack: ReplicatedStack, infra: RunningInfra) -> None:
    # `replicated_stack` must have taken this module's servers, not the session's.
    assert f":{infra.postgres.port}/" in stack.env["DATABASE_URL"], stack.env["DATABASE_URL"]
    assert stack.env["KAFKA_BOOTSTRAP_SERVERS"] == infra.kafka_bootstrap_servers


async def _load_with_outages(
    stack: ReplicatedStack, workload: Workload, plan: list[tuple[int, Disruption]]
) -> dict[str, int]:
    """Open the accounts, run the load with the planned outages in it, check every guarantee."""
    try:
        await workload.open_accounts()
        await run_with_disruptions(workload, plan)
        return await check_invariants(workload, stack.env["DATABASE_URL"], settle_s=120)
    finally:
        await workload.close()


def _plan(orders: int, outages: int, outage: Disruption) -> list[tuple[int, Disruption]]:
    """`outages` outages spread over the first 80% of the load."""
    return [(int(orders * 0.8 * (i + 1) / (outages + 1)), outage) for i in range(outages)]


async def test_kafka_killed_and_restarted_mid_load(replicated_stack: ReplicatedStack, infra: RunningInfra) -> None:
    stack = replicated_stack
    _on_dedicated_servers(stack, infra)
    orders, outages = (1500, 4) if LONG else (300, 1)
    workload = Workload(stack.gateway, accounts=30 if LONG else 20, orders=orders, seed=3)
    placed_while_down: list[int] = []
    services = service_processes(stack)

    async def kill_kafka_then_restart() -> None:
        await asyncio.to_thread(infra.kafka.kill)
        workload.resume()
        before = acknowledged(workload)
        # Orders are still taken while the broker is down (they wait in the order service's
        # outbox): let a few pile up, so that there is a backlog to drain.
        await progress_or_timeout(workload, 20, timeout_s=10.0)
        placed_while_down.append(acknowledged(workload) - before)
        await asyncio.to_thread(infra.kafka.start)
        await until_ready(stack, services, 200, timeout_s=90, what="services after the Kafka restart")

    started = time.monotonic()
    report = await _load_with_outages(stack, workload, _plan(orders, outages, kill_kafka_then_restart))
    assert len(placed_while_down) == outages
    assert sum(placed_while_down) > 0, "no order was placed while Kafka was down: nothing to drain"
    assert report["orders"] == orders and report["CANCELLED"] > 0 and report["CONFIRMED"] > 0, report
    print(
        f"kafka: {outages} kills, {placed_while_down} orders taken while down, {report}, "
        f"{time.monotonic() - started:.0f}s"
    )


async def test_postgres_stopped_and_restarted_mid_load(replicated_stack: ReplicatedStack, infra: RunningInfra) -> None:
    stack = replicated_stack
    _on_dedicated_servers(stack, infra)
    orders, outages = (1500, 4) if LONG else (300, 1)
    workload = Workload(stack.gateway, accounts=30 if LONG else 20, orders=orders, seed=4)
    services = service_processes(stack)
    recovery_s: list[float] = []

    async def stop_postgres_then_restart() -> None:
        await asyncio.to_thread(infra.postgres.stop, "immediate")
        workload.resume()
        # Every service says it is not ready while its database is gone ...
        await until_ready(stack, services, 503, timeout_s=30, what="services with PostgreSQL down")
        # ... and the API says so plainly: 503 (retry later), not a 500 with a traceback.
        account = next(iter(workload.books))
        for path in (f"/account/{account}", f"/orders/{account}", f"/notifications/{account}"):
            async with httpx.AsyncClient(base_url=stack.gateway, timeout=10) as http:
                answer = await http.get(path)
            assert answer.status_code == 503, f"GET {path} with PostgreSQL down: {answer.status_code} {answer.text}"
        await asyncio.to_thread(infra.postgres.start)
        # ... and ready again once it is back, by itself.
        recovery_s.append(await until_ready(stack, services, 200, timeout_s=60, what="services after PostgreSQL"))

    started = time.monotonic()
    report = await _load_with_outages(stack, workload, _plan(orders, outages, stop_postgres_then_restart))
    assert len(recovery_s) == outages
    assert report["orders"] == orders and report["CANCELLED"] > 0 and report["CONFIRMED"] > 0, report
    print(
        f"postgres: {outages} immediate stops, ready again after {[round(s, 1) for s in recovery_s]}s, "
        f"{report}, {time.monotonic() - started:.0f}s"
    )

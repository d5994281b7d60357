"""Scenario 2: kill -9 of every kind of process (a billing, an order and a notification replica,
the gateway, and in the long form both replicas of a service at once) while the load runs, each
restarted a moment later; then every SPEC §5 guarantee is checked."""

from __future__ import annotations

import asyncio
import time

from chaos import Disruption, progress_or_timeout, run_with_disruptions
from replicated import LONG, ReplicatedStack
from workload import Workload, check_invariants

# Each group is killed together (SIGKILL), then restarted once the load has moved on a little.
SHORT_KILLS: list[tuple[str, ...]] = [("billing-1",), ("order-2",), ("notification-1",), ("gateway",)]
LONG_KILLS: list[tuple[str, ...]] = [
    ("billing-1",),
    ("order-1",),
    ("notification-2",),
    ("gateway",),
    ("billing-2",),
    ("order-2",),
    ("notification-1",),
    ("billing-1", "billing-2"),  # no billing at all for a moment: the order events wait in Kafka
    ("order-1", "order-2"),  # no order service: the clients' retries wait for it
    ("gateway",),
]


async def test_processes_killed_mid_load_lose_and_double_nothing(replicated_stack: ReplicatedStack) -> None:
    stack = replicated_stack
    orders = 2000 if LONG else 300
    groups = LONG_KILLS if LONG else SHORT_KILLS
    workload = Workload(stack.gateway, accounts=40 if LONG else 20, orders=orders)
    killed: list[str] = []

    def kill_then_restart(names: tuple[str, ...]) -> Disruption:
        async def disrupt() -> None:
            for name in names:
                await asyncio.to_thread(stack.kill, name)
                killed.append(name)
            workload.resume()
            # "A moment later": once the surviving replicas have served a few more orders, or
            # after a few seconds if nothing can serve them (the gateway or a whole service down).
            await progress_or_timeout(workload, 10, timeout_s=3.0)
            for name in names:
                await asyncio.to_thread(stack.restart, name)  # returns once it is ready again

        return disrupt

    # Spread over the first 85% of the load, so the last restarts still see traffic.
    plan = [(int(orders * 0.85 * (i + 1) / (len(groups) + 1)), kill_then_restart(g)) for i, g in enumerate(groups)]
    started = time.monotonic()
    try:
        await workload.open_accounts()
        await run_with_disruptions(workload, plan)
        report = await check_invariants(workload, stack.env["DATABASE_URL"])
    finally:
        await workload.close()
    assert report["orders"] == orders, report
    assert report["CANCELLED"] > 0 and report["CONFIRMED"] > 0, report
    for kind in ("billing", "order", "notification", "gateway"):
        assert any(name.startswith(kind) for name in killed), f"{kind} was never killed: {killed}"
    print(f"crashes: {len(killed)} kills ({', '.join(killed)}), {report}, {time.monotonic() - started:.0f}s")

"""Scenario 1: two replicas of every service under load; nothing lost, doubled or stuck."""

from __future__ import annotations

from replicated import LONG, ReplicatedStack
from workload import Workload, check_invariants


async def test_two_replicas_of_everything_keep_every_guarantee(replicated_stack: ReplicatedStack) -> None:
    workload = Workload(replicated_stack.gateway, accounts=20, orders=2000 if LONG else 300)
    try:
        await workload.open_accounts()
        await workload.place_orders()
        report = await check_invariants(workload, replicated_stack.env["DATABASE_URL"])
    finally:
        await workload.close()
    assert report["CANCELLED"] > 0 and report["CONFIRMED"] > 0, report
    print(f"replicas: {report}")

"""Scenario 7 (concurrency): deposits and withdrawals on one account, many at once, through the
gateway to both billing replicas, while orders are paid from the same account: no update is
lost. The final balance is exactly what the answered requests add up to, and the ledger holds
one entry per answered change and sums to the balance."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal

import httpx
from replicated import LONG, ReplicatedStack
from workload import _retry, get_all

from support import eventually

CHANGES = 2000 if LONG else 300
CLIENTS = 32


async def test_concurrent_deposits_and_withdrawals_lose_no_update(replicated_stack: ReplicatedStack) -> None:
    rng = random.Random(7)
    opening = Decimal("50.00")
    plan = [
        ("DEPOSIT_MONEY" if rng.random() < 0.5 else "WITHDRAW_MONEY", Decimal(rng.randint(1, 1000)) / 100)
        for _ in range(CHANGES)
    ]
    applied: list[Decimal] = []  # signed, for every change the system answered 200
    refused = 0
    async with httpx.AsyncClient(
        base_url=replicated_stack.gateway, timeout=30, limits=httpx.Limits(max_connections=CLIENTS)
    ) as http:
        account = (await http.post("/account", json={"actionType": "CREATE_NEW", "amount": float(opening)})).json()
        queue: asyncio.Queue[tuple[str, Decimal]] = asyncio.Queue()
        for item in plan:
            queue.put_nowait(item)

        async def client() -> None:
            nonlocal refused
            while not queue.empty():
                action, amount = queue.get_nowait()
                body = {"accountId": account, "amount": float(amount), "actionType": action}
                # Not retried: a deposit is not idempotent, so any failure to answer fails the test.
                response = await http.put("/account", json=body)
                if response.status_code == 200:
                    applied.append(amount if action == "DEPOSIT_MONEY" else -amount)
                else:
                    assert response.status_code == 409 and action == "WITHDRAW_MONEY", response.text
                    refused += 1

        async def orders() -> list[str]:
            placed = []
            for _ in range(20):
                response = await _retry(lambda: http.post("/orders", json={"accountId": account, "amount": 1}), "order")
                placed.append(response.json())
            return placed

        *_, order_ids = await asyncio.gather(*(client() for _ in range(CLIENTS)), orders())
        listed = await eventually(
            lambda: http.get(f"/orders/{account}"),
            lambda r: all(o["status"] in ("CONFIRMED", "CANCELLED") for o in r.json()),
            timeout_s=60,
            what="orders final",
        )
        paid = sum(Decimal(str(o["amount"])) for o in listed.json() if o["status"] == "CONFIRMED")
        assert {o["id"] for o in listed.json()} == set(order_ids)

        balance = Decimal(str((await http.get(f"/account/{account}")).json()["balance"]))
        ledger = await get_all(http, f"/account/{account}/transactions")
    assert refused > 0 and len(applied) > CHANGES // 2, (refused, len(applied))  # both paths taken
    assert balance == opening + sum(applied) - paid, (balance, opening, sum(applied), paid)
    assert sum(Decimal(str(e["amount"])) for e in ledger) == balance
    assert [e["kind"] for e in ledger].count("DEPOSIT") + [e["kind"] for e in ledger].count("WITHDRAWAL") == len(
        applied
    )
    # Each entry's balanceAfter follows from the one before: the changes were serialised.
    running = Decimal(0)
    for entry in ledger:
        running += Decimal(str(entry["amount"]))
        assert Decimal(str(entry["balanceAfter"])) == running, entry

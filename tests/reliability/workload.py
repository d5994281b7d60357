"""A workload the reliability scenarios run while they break things, and the invariants of
SPEC §5 checked afterwards through the public API (plus one look into the inboxes).

The workload keeps a book of what the system *acknowledged*: accounts opened, orders placed
(answered 200), refunds asked for. Orders carry an Idempotency-Key, so a request whose answer was
lost (a replica killed mid-request, a 502) is retried safely until it is acknowledged once.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import httpx

FINAL = {"CONFIRMED", "CANCELLED", "REFUNDED"}
RETRY_FOR_S = 90.0


@dataclass
class Book:
    """What the system acknowledged for one account."""

    account: str
    opening: Decimal
    orders: dict[str, Decimal] = field(default_factory=dict)  # order id → amount
    refunds: set[str] = field(default_factory=set)  # order ids whose DELETE started a refund

    def number(self, order_id: str) -> str:
        return f"{self.account}:{order_id}"


async def _retry(call: Any, what: str) -> httpx.Response:
    """Retry a request that is safe to repeat until the system answers it with a non-5xx."""
    deadline = time.monotonic() + RETRY_FOR_S
    delay = 0.05
    while True:
        try:
            response: httpx.Response = await call()
            if response.status_code < 500:
                return response
            problem = f"{response.status_code} {response.text[:200]}"
        except httpx.TransportError as error:
            problem = repr(error)
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still failing after {RETRY_FOR_S}s: {problem}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def _get_json(http: httpx.AsyncClient, path: str) -> Any:
    return (await _retry(lambda: http.get(path), f"GET {path}")).json()


async def get_all(http: httpx.AsyncClient, path: str) -> list[Any]:
    """A whole list, page by page, following the `Link: <…>; rel="next"` headers."""
    items: list[Any] = []
    url: str | None = f"{path}?limit=1000"
    while url is not None:
        response = await _retry(functools.partial(http.get, url), f"GET {url}")
        items.extend(response.json())
        url = response.links.get("next", {}).get("url")
    return items


class Workload:
    def __init__(self, gateway: str, *, accounts: int, orders: int, concurrency: int = 12, seed: int = 1) -> None:
        self.gateway = gateway
        self.account_count = accounts
        self.order_count = orders
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self.books: dict[str, Book] = {}
        self.http = httpx.AsyncClient(base_url=gateway, timeout=15)
        # Pacing (chaos.run_with_disruptions): order number `at` and the ones after it are not
        # started before the gate at `at` opens, so a disruption planned "at 100 orders" always
        # meets the rest of the load, however fast or slow the machine is.
        self._gates: dict[int, asyncio.Event] = {}

    def hold_at(self, at: int) -> None:
        self._gates.setdefault(at, asyncio.Event())

    def resume(self) -> None:
        """Open the gates the load has reached: the disruption that waited there is under way.
        (Idempotent: a gate further on stays shut until the load reaches it.)"""
        reached = sum(len(book.orders) for book in self.books.values())
        for at, gate in self._gates.items():
            if at <= reached:
                gate.set()

    async def _pass_gates(self, index: int) -> None:
        for at, gate in sorted(self._gates.items()):
            if at <= index:
                await gate.wait()

    async def close(self) -> None:
        await self.http.aclose()

    async def open_accounts(self) -> None:
        for _ in range(self.account_count):
            opening = Decimal(self.rng.randint(50, 150))
            response = await _retry(
                lambda opening=opening: self.http.post(
                    "/account", json={"actionType": "CREATE_NEW", "amount": int(opening)}
                ),
                "open account",
            )
            assert response.status_code == 200, response.text
            account = response.json()
            self.books[account] = Book(account, opening)

    async def place_orders(self) -> None:
        """Orders over all accounts, sized so that some are denied; some paid ones are withdrawn."""
        plan = [
            (self.rng.choice(list(self.books.values())), Decimal(self.rng.randint(1, 30)), self.rng.random() < 0.1)
            for _ in range(self.order_count)
        ]
        queue: asyncio.Queue[tuple[int, tuple[Book, Decimal, bool]]] = asyncio.Queue()
        for item in enumerate(plan):
            queue.put_nowait(item)

        async def client() -> None:
            while not queue.empty():
                index, (book, amount, withdraw) = queue.get_nowait()
                await self._pass_gates(index)
                await self._place(book, amount, withdraw)

        await asyncio.gather(*(client() for _ in range(self.concurrency)))

    async def _place(self, book: Book, amount: Decimal, withdraw: bool) -> None:
        key = uuid.uuid4().hex
        response = await _retry(
            lambda: self.http.post(
                "/orders", json={"accountId": book.account, "amount": int(amount)}, headers={"Idempotency-Key": key}
            ),
            "place order",
        )
        assert response.status_code == 200, response.text
        order_id = response.json()
        book.orders[order_id] = amount
        if withdraw:
            await self._withdraw_when_settled(book, order_id)

    async def _withdraw_when_settled(self, book: Book, order_id: str) -> None:
        status = await self._status_when_final(book, order_id)
        if status != "CONFIRMED":
            return
        body = {"accountId": book.account, "orderNumber": book.number(order_id)}
        response = await _retry(lambda: self.http.request("DELETE", "/orders", json=body), "withdraw order")
        assert response.status_code == 200, response.text
        book.refunds.add(order_id)

    async def _status_when_final(self, book: Book, order_id: str) -> str:
        deadline = time.monotonic() + RETRY_FOR_S
        while True:
            status = str((await _get_json(self.http, f"/orders/{book.account}/{order_id}")).get("status"))
            if status in FINAL or time.monotonic() > deadline:
                return status
            await asyncio.sleep(0.05)


async def check_invariants(workload: Workload, database_url: str, *, settle_s: float = 90.0) -> dict[str, int]:
    """Every SPEC §5 guarantee, for every account; returns counts for the report."""
    http = workload.http
    books = list(workload.books.values())

    async def orders_of(book: Book) -> dict[str, dict[str, Any]]:
        return {o["id"]: o for o in await get_all(http, f"/orders/{book.account}")}

    # 1. Every acknowledged order reaches a final status (refunds: REFUNDED), in time.
    deadline = time.monotonic() + settle_s
    while True:
        listed = {book.account: await orders_of(book) for book in books}
        waiting = [
            (book.account, order_id, listed[book.account].get(order_id, {}).get("status"))
            for book in books
            for order_id in book.orders
            if listed[book.account].get(order_id, {}).get("status") not in FINAL
            or (order_id in book.refunds and listed[book.account][order_id]["status"] != "REFUNDED")
        ]
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(waiting)} orders not final after {settle_s}s, e.g. {waiting[:5]}")
        await asyncio.sleep(0.2)

    totals: Counter[str] = Counter()
    for book in books:
        orders = listed[book.account]
        # 2. No order lost, none created twice (Idempotency-Key retries included).
        assert set(orders) == set(book.orders), f"{book.account}: orders {set(orders) ^ set(book.orders)} differ"
        statuses = {order_id: o["status"] for order_id, o in orders.items()}
        totals.update(statuses.values())
        confirmed = sum((book.orders[o] for o, s in statuses.items() if s == "CONFIRMED"), Decimal(0))

        # 3. balance = opening - confirmed payments (refunded ones were paid and given back), >= 0.
        balance = Decimal(str((await _get_json(http, f"/account/{book.account}"))["balance"]))
        assert balance == book.opening - confirmed, f"{book.account}: balance {balance} != {book.opening} - {confirmed}"
        assert balance >= 0

        # 4. The ledger sums to the balance; one PAYMENT per paid order, one REFUND per refunded.
        ledger = await get_all(http, f"/account/{book.account}/transactions")
        assert sum(Decimal(str(e["amount"])) for e in ledger) == balance, f"{book.account}: ledger ≠ balance"
        payments = Counter(e["orderNumber"] for e in ledger if e["kind"] == "PAYMENT")
        refunds = Counter(e["orderNumber"] for e in ledger if e["kind"] == "REFUND")
        paid = {book.number(o) for o, s in statuses.items() if s in ("CONFIRMED", "REFUNDED")}
        refunded = {book.number(o) for o, s in statuses.items() if s == "REFUNDED"}
        assert payments == Counter(paid), f"{book.account}: payments {payments} ≠ {paid}"
        assert refunds == Counter(refunded), f"{book.account}: refunds {refunds} ≠ {refunded}"

        # 5. Exactly one notification per payment outcome. The notification service consumes
        # the payment events on its own, so its notes may trail the order's final status (a
        # replica killed holds its partitions until the group rebalances): wait for missing ones;
        # an extra one fails at once, it can never go away.
        expected: Counter[tuple[str, str]] = Counter()
        for order_id, status in statuses.items():
            number = book.number(order_id)
            if status in ("CONFIRMED", "REFUNDED"):
                expected[(number, "PAYMENT_CONFIRMED")] += 1
            if status == "CANCELLED":
                expected[(number, "PAYMENT_DENIED")] += 1
            if status == "REFUNDED":
                expected[(number, "REFUNDED")] += 1
        while True:
            notes = await get_all(http, f"/notifications/{book.account}")
            got = Counter((n["orderNumber"], n["notificationType"]) for n in notes)
            extra, missing = got - expected, expected - got
            assert not extra, f"{book.account}: notifications not expected (duplicates?): {extra}"
            if not missing:
                break
            assert time.monotonic() < deadline, f"{book.account}: notifications missing after {settle_s}s: {missing}"
            await asyncio.sleep(0.2)

    # 6. No duplicate rows in any inbox.
    db = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        doubled = await db.fetch(
            "SELECT order_number, event_type, count(*) FROM billing.order_events GROUP BY 1, 2 HAVING count(*) > 1"
        )
        assert not doubled, f"billing inbox holds one order event twice: {doubled[:5]}"
        # Every inbox row decided, none set aside, and nothing left in an outbox. The relays mark
        # a row published only after the broker's ack, so an order may be final a moment before.
        while True:
            undecided = await db.fetchval("SELECT count(*) FROM billing.order_events WHERE status = 'RECEIVED'")
            owing = await db.fetchval(
                "SELECT (SELECT count(*) FROM billing.outbox WHERE published_at IS NULL)"
                " + (SELECT count(*) FROM order_service.outbox WHERE published_at IS NULL)"
            )
            if (undecided == 0 and owing == 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert undecided == 0, f"{undecided} billing inbox rows never decided"
        assert owing == 0, f"{owing} events never published"
        parked = await db.fetch("SELECT order_number, description FROM billing.order_events WHERE status = 'PARKED'")
        assert not parked, f"events set aside under a valid workload: {parked[:5]}"
    finally:
        await db.close()
    totals["accounts"] = len(books)
    totals["orders"] = sum(len(b.orders) for b in books)
    return dict(totals)

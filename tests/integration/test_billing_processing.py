"""Billing's processor on a real database: two processors at once over many orders never charge
an order twice, never push a balance below zero, and keep balance = sum of the ledger."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from orbilnot.billing.domain import AccountAction
from orbilnot.billing.handlers import change_balance, open_account, process_received_events, receive_order_events
from orbilnot.billing.tables import accounts, ledger, order_events, outbox
from orbilnot.model import OrderEvent, OrderEventType, PaymentEvent
from orbilnot.shared.auth import Caller


def order_event(
    account: uuid.UUID,
    amount: Decimal,
    kind: OrderEventType = OrderEventType.CREATED,
    number: str = "",
    *,
    placed_by: str | None = None,
    placed_by_admin: bool = False,
) -> OrderEvent:
    return OrderEvent(
        event_id=uuid.uuid4(),
        event_type=kind,
        account_id=account,
        order_number=number or f"{account}:{uuid.uuid4()}",
        amount=amount,
        occurred_at=datetime.now(UTC),
        placed_by=placed_by,
        placed_by_admin=placed_by_admin,
    )


async def process_all(engine: AsyncEngine) -> None:
    while True:
        async with engine.begin() as conn:
            if not await process_received_events(conn, 25, topic="payment.event"):
                return


async def test_two_processors_share_the_work_and_never_overdraw(database_url: str) -> None:
    engines = [create_async_engine(database_url) for _ in range(2)]
    try:
        rng = random.Random(7)
        async with engines[0].begin() as conn:
            account_ids = [await open_account(conn, Decimal(100)) for _ in range(10)]
        events = [order_event(rng.choice(account_ids), Decimal(rng.randint(1, 40))) for _ in range(300)]
        async with engines[0].begin() as conn:
            for event in events:
                await receive_order_events(conn, [event])
            # The same events again, as a redelivery would bring them.
            for event in events[:50]:
                await receive_order_events(conn, [event])

        await asyncio.gather(*(process_all(engine) for engine in engines))

        async with engines[0].connect() as conn:
            statuses = dict(
                (await conn.execute(select(order_events.c.status, func.count()).group_by(order_events.c.status))).all()
            )
            assert sum(statuses.values()) == 300
            assert set(statuses) <= {"PAYMENT_CONFIRMED", "PAYMENT_DENIED"}
            assert statuses.get("PAYMENT_DENIED", 0) > 0, "amounts are sized so that some orders are denied"
            for account_id in account_ids:
                balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account_id))
                ledger_sum = await conn.scalar(
                    select(func.sum(ledger.c.amount)).where(ledger.c.account_id == account_id)
                )
                assert balance is not None and balance >= 0
                assert balance == ledger_sum
            paid_twice = await conn.scalar(
                select(func.count()).select_from(
                    select(ledger.c.order_number)
                    .where(ledger.c.kind == "PAYMENT")
                    .group_by(ledger.c.order_number)
                    .having(func.count() > 1)
                    .subquery()
                )
            )
            assert paid_twice == 0
            confirmed_total = await conn.scalar(
                select(func.sum(order_events.c.amount)).where(order_events.c.status == "PAYMENT_CONFIRMED")
            )
            assert confirmed_total == Decimal(1000) - sum(
                [await conn.scalar(select(accounts.c.balance).where(accounts.c.id == a)) for a in account_ids],
                Decimal(0),
            )
    finally:
        for engine in engines:
            await engine.dispose()


async def test_a_refund_is_made_once_however_often_it_is_asked_for(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        account = await open_account(conn, Decimal(0))
        await change_balance(conn, account, AccountAction.DEPOSIT_MONEY, Decimal(1000))
    created = order_event(account, Decimal(500))
    async with engine.begin() as conn:
        await receive_order_events(conn, [created])
    await process_all(engine)
    # Two cancellations of the same order (as if the order service had asked twice).
    for _ in range(2):
        async with engine.begin() as conn:
            await receive_order_events(
                conn, [order_event(account, Decimal(500), OrderEventType.CANCELLED, created.order_number)]
            )
        await process_all(engine)

    async with engine.connect() as conn:
        kinds = list(
            await conn.scalars(select(ledger.c.kind).where(ledger.c.account_id == account).order_by(ledger.c.id))
        )
        balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account))
    assert kinds == ["OPENING", "DEPOSIT", "PAYMENT", "REFUND"]
    assert balance == 1000


async def test_concurrent_deposits_and_withdrawals_lose_no_update(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        account = await open_account(conn, Decimal(1000))

    async def change(action: AccountAction, amount: int) -> None:
        async with engine.begin() as conn:
            await change_balance(conn, account, action, Decimal(amount))

    await asyncio.gather(
        *(change(AccountAction.DEPOSIT_MONEY, 3) for _ in range(40)),
        *(change(AccountAction.WITHDRAW_MONEY, 2) for _ in range(40)),
    )
    async with engine.connect() as conn:
        balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account))
    assert balance == 1000 + 40 * 3 - 40 * 2


async def test_an_order_is_paid_only_for_the_account_owner_or_an_admin(engine: AsyncEngine) -> None:
    """Issue 9 on issue 7's processor: the decision checks `placedBy` against the account's owner,
    and the payment event it writes to the outbox in the same transaction carries `ownerSub`."""
    async with engine.begin() as conn:
        account = await open_account(conn, Decimal(100), Caller("alice-sub"))
    by_alice = order_event(account, Decimal(10), placed_by="alice-sub")
    by_bob = order_event(account, Decimal(20), placed_by="bob-sub")
    by_admin = order_event(account, Decimal(30), placed_by="admin-sub", placed_by_admin=True)
    auth_off = order_event(account, Decimal(40))  # placed with authentication off: no placer
    async with engine.begin() as conn:
        for event in (by_alice, by_bob, by_admin, auth_off):
            await receive_order_events(conn, [event])
    await process_all(engine)
    # alice withdraws the admin's order: the refund is not checked against its placer.
    refund = order_event(account, Decimal(30), OrderEventType.CANCELLED, by_admin.order_number, placed_by="alice-sub")
    async with engine.begin() as conn:
        await receive_order_events(conn, [refund])
    await process_all(engine)

    async with engine.connect() as conn:
        published = [PaymentEvent.model_validate_json(value) for value in await conn.scalars(select(outbox.c.value))]
        balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account))
        charged = set(await conn.scalars(select(ledger.c.order_number).where(ledger.c.kind == "PAYMENT")))
    results = {
        (event.order_number, event.payment_event_type.value): event
        for event in published
        if event.account_id == account
    }
    assert len(results) == 5
    confirmed = results[(by_alice.order_number, "PAYMENT_CONFIRMED")]
    assert confirmed.owner_sub == "alice-sub"
    denied = results[(by_bob.order_number, "PAYMENT_DENIED")]
    # Denied exactly as for a missing account, and told only to bob, who placed it.
    assert denied.description == f"Account {account} not found"
    assert denied.owner_sub == "bob-sub"
    assert results[(by_admin.order_number, "PAYMENT_CONFIRMED")].owner_sub == "alice-sub"
    assert results[(by_admin.order_number, "REFUNDED")].owner_sub == "alice-sub"
    assert results[(auth_off.order_number, "PAYMENT_DENIED")].owner_sub is None
    assert charged >= {by_alice.order_number, by_admin.order_number}
    assert not charged & {by_bob.order_number, auth_off.order_number}
    assert balance == Decimal(90)  # 100 - 10 (alice) - 30 (admin) + 30 (refunded)


async def test_the_consumer_decides_what_it_stores_in_its_own_transaction(engine: AsyncEngine) -> None:
    """Billing's consumer handler decides a batch and stores it in the inbox already decided,
    with its results, before its one commit: no row is ever RECEIVED, a copy in the batch or
    redelivered later changes nothing, and a copy whose decision the inbox refuses to store (a
    RECEIVED row of the same event: stored meanwhile by the long way) sends the batch the long
    way, deciding that row and the rest once."""
    from orbilnot.billing.handlers import receive_and_decide_order_events

    async with engine.begin() as conn:
        account = await open_account(conn, Decimal(100))
    batch = [order_event(account, Decimal(10)), order_event(account, Decimal(20))]
    async with engine.begin() as conn:
        await receive_and_decide_order_events(conn, [*batch, batch[0]], topic="payment.event")
        assert await conn.scalar(select(func.count()).where(order_events.c.status == "RECEIVED")) == 0
    async with engine.begin() as conn:
        await receive_and_decide_order_events(conn, batch, topic="payment.event")  # redelivered

    async with engine.connect() as conn:
        statuses = dict((await conn.execute(select(order_events.c.event_id, order_events.c.status))).all())
        balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account))
        results = await conn.scalar(select(func.count()).select_from(outbox))
    assert statuses == {event.event_id: "PAYMENT_CONFIRMED" for event in batch}
    assert balance == 100 - 10 - 20
    assert results == 2

    # A transaction that did not lock the account stores the same event while ours decides:
    # the inbox drops our decided row, and the batch goes the long way.
    raced, other = order_event(account, Decimal(5)), order_event(account, Decimal(7))
    from orbilnot.billing import handlers

    real = handlers._store_decided

    async def stored_meanwhile(*args: object) -> None:
        async with engine.begin() as elsewhere:
            await receive_order_events(elsewhere, [raced])
        await real(*args)  # type: ignore[arg-type]

    async with engine.begin() as conn:
        handlers._store_decided = stored_meanwhile  # type: ignore[assignment]
        try:
            await receive_and_decide_order_events(conn, [raced, other], topic="payment.event")
        finally:
            handlers._store_decided = real
    async with engine.connect() as conn:
        statuses = dict((await conn.execute(select(order_events.c.event_id, order_events.c.status))).all())
        balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account))
        results = await conn.scalar(select(func.count()).select_from(outbox))
    assert statuses[raced.event_id] == statuses[other.event_id] == "PAYMENT_CONFIRMED"
    assert balance == 100 - 10 - 20 - 5 - 7
    assert results == 4

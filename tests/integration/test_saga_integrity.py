"""Issue 7, on the real PostgreSQL (and Kafka where a consumer is involved): one event that fails
for a reason of its own is parked and holds back no other, in billing's processor and in the order
and notification consumers; a transient database error is retried, never parked; billing refunds
what its ledger says was paid, whatever the event claims."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from orbilnot.billing.handlers import (
    open_account,
    park_order_event,
    process_received_events,
    receive_and_decide_order_events,
    receive_order_events,
)
from orbilnot.billing.tables import accounts, ledger, order_events
from orbilnot.billing.tables import outbox as billing_outbox
from orbilnot.model import OrderEvent, OrderEventType, PaymentEvent, PaymentEventType
from orbilnot.notification.handlers import park_notification, store_notifications
from orbilnot.notification.tables import notifications, parked_events
from orbilnot.order.handlers import apply_payment_results, park_payment_result
from orbilnot.order.tables import orders, processed_events
from orbilnot.shared.consumer import IdempotentConsumer
from orbilnot.shared.kafka import ProducerHandle
from support import eventually


def order_event(
    account: uuid.UUID, amount: Decimal, kind: OrderEventType = OrderEventType.CREATED, number: str = ""
) -> OrderEvent:
    return OrderEvent(
        event_id=uuid.uuid4(),
        event_type=kind,
        account_id=account,
        order_number=number or f"{account}:{uuid.uuid4()}",
        amount=amount,
        occurred_at=datetime.now(UTC),
    )


async def receive(engine: AsyncEngine, *events: OrderEvent) -> None:
    async with engine.begin() as conn:
        for event in events:
            await receive_order_events(conn, [event])


async def process_until_idle(engine: AsyncEngine, timeout_s: float = 20.0) -> None:
    """Run the processor's batches until nothing is left, failing after a deadline (a stuck
    processor retries the same batch for ever: that must show as a failure, not a hang)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with engine.begin() as conn:
            if not await process_received_events(conn, 50, topic="payment.event"):
                return
    raise AssertionError(f"the processor did not drain its inbox in {timeout_s}s")


async def statuses(engine: AsyncEngine, *events: OrderEvent) -> list[str]:
    async with engine.connect() as conn:
        by_id = dict((await conn.execute(select(order_events.c.event_id, order_events.c.status))).all())
    return [by_id[e.event_id] for e in events]


async def fail_ledger_writes_for(engine: AsyncEngine, order_number: str, sqlstate: str, times: int | None) -> None:
    """A trigger that makes writing this order's ledger entry fail with `sqlstate` — a stand-in
    for any fault of one event (a constraint, an overflow, a bug), or, with a transient SQLSTATE
    and `times`, for a deadlock or serialization failure that goes away on retry."""
    async with engine.begin() as conn:
        await conn.execute(text("CREATE SEQUENCE IF NOT EXISTS billing.injected_failures"))
        limit = "true" if times is None else f"nextval('billing.injected_failures') <= {times}"
        await conn.execute(
            text(f"""
            CREATE OR REPLACE FUNCTION billing.inject_failure() RETURNS trigger AS $$
            BEGIN
              IF NEW.order_number = '{order_number}' AND {limit} THEN
                RAISE EXCEPTION 'injected failure for %', NEW.order_number USING ERRCODE = '{sqlstate}';
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        )
        await conn.execute(
            text(
                "CREATE TRIGGER inject_failure BEFORE INSERT ON billing.ledger "
                "FOR EACH ROW EXECUTE FUNCTION billing.inject_failure()"
            )
        )


async def test_an_event_that_fails_on_its_own_is_parked_and_holds_back_no_other(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        innocent, culprit = await open_account(conn, Decimal(100)), await open_account(conn, Decimal(100))
    before, bad, after = (
        order_event(innocent, Decimal(10)),
        order_event(culprit, Decimal(20)),
        order_event(innocent, Decimal(30)),
    )
    await fail_ledger_writes_for(engine, bad.order_number, "P0001", times=None)
    await receive(engine, before, bad, after)

    await process_until_idle(engine)

    assert await statuses(engine, before, bad, after) == ["PAYMENT_CONFIRMED", "PARKED", "PAYMENT_CONFIRMED"]
    async with engine.connect() as conn:
        reason = await conn.scalar(select(order_events.c.description).where(order_events.c.event_id == bad.event_id))
        balances = dict((await conn.execute(select(accounts.c.id, accounts.c.balance))).all())
        # The parked order gets a final answer: a PAYMENT_DENIED the order service and the user see.
        answer = (
            await conn.execute(
                text("SELECT value FROM billing.outbox WHERE value::jsonb->>'orderNumber' = :n"),
                {"n": bad.order_number},
            )
        ).scalar_one()
    assert reason is not None and "injected failure" in reason
    assert balances == {innocent: Decimal(60), culprit: Decimal(100)}
    assert '"paymentEventType":"PAYMENT_DENIED"' in answer.replace(" ", "")


async def test_billings_consumer_parks_an_event_that_fails_on_its_own_and_decides_the_others(
    engine: AsyncEngine,
) -> None:
    """The consumer decides what it consumes (`receive_and_decide_order_events`): when its batch
    fails on one event, it goes the long way in the same transaction, so that event is parked and
    answered and the others are decided; a transient failure is raised, for the consumer to run
    the whole transaction again, never parked."""
    from sqlalchemy.exc import DBAPIError

    from orbilnot.billing.handlers import receive_and_decide_order_events

    async with engine.begin() as conn:
        innocent, culprit = await open_account(conn, Decimal(100)), await open_account(conn, Decimal(100))
    before, bad, after = (
        order_event(innocent, Decimal(10)),
        order_event(culprit, Decimal(20)),
        order_event(innocent, Decimal(30)),
    )
    await fail_ledger_writes_for(engine, bad.order_number, "P0001", times=None)
    async with engine.begin() as conn:
        await receive_and_decide_order_events(conn, [before, bad, after], topic="payment.event")

    assert await statuses(engine, before, bad, after) == ["PAYMENT_CONFIRMED", "PARKED", "PAYMENT_CONFIRMED"]
    async with engine.connect() as conn:
        balances = dict((await conn.execute(select(accounts.c.id, accounts.c.balance))).all())
        answers = list(
            await conn.scalars(
                text("SELECT value FROM billing.outbox WHERE value::jsonb->>'orderNumber' = :n"),
                {"n": bad.order_number},
            )
        )
    assert balances == {innocent: Decimal(60), culprit: Decimal(100)}
    assert len(answers) == 1 and '"paymentEventType":"PAYMENT_DENIED"' in answers[0].replace(" ", "")

    async with engine.begin() as conn:
        await conn.execute(text("DROP TRIGGER inject_failure ON billing.ledger"))
    transient = order_event(culprit, Decimal(5))
    await fail_ledger_writes_for(engine, transient.order_number, "40001", times=1)
    with pytest.raises(DBAPIError):
        async with engine.begin() as conn:
            await receive_and_decide_order_events(conn, [transient], topic="payment.event")
    async with engine.begin() as conn:  # the consumer's retry
        await receive_and_decide_order_events(conn, [transient], topic="payment.event")
    assert await statuses(engine, transient) == ["PAYMENT_CONFIRMED"]


async def test_a_serialization_failure_is_retried_not_parked(engine: AsyncEngine) -> None:
    from orbilnot.billing.handlers import process_batch  # the processor's step, with its retries

    async with engine.begin() as conn:
        account = await open_account(conn, Decimal(100))
    event = order_event(account, Decimal(40))
    await fail_ledger_writes_for(engine, event.order_number, "40001", times=2)
    await receive(engine, event)

    deadline = time.monotonic() + 20
    while await process_batch(engine, 50, topic="payment.event") and time.monotonic() < deadline:
        pass

    assert await statuses(engine, event) == ["PAYMENT_CONFIRMED"]
    async with engine.connect() as conn:
        assert await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account)) == 60
        assert await conn.scalar(text("SELECT last_value FROM billing.injected_failures")) >= 2


async def test_a_forged_cancellation_refunds_only_what_was_paid(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        account = await open_account(conn, Decimal(100))
    paid = order_event(account, Decimal(1))
    await receive(engine, paid)
    await process_until_idle(engine)
    forged = order_event(account, Decimal(100000), OrderEventType.CANCELLED, paid.order_number)
    never_paid = order_event(account, Decimal(500), OrderEventType.CANCELLED)
    await receive(engine, forged, never_paid)
    await process_until_idle(engine)

    async with engine.connect() as conn:
        balance = await conn.scalar(select(accounts.c.balance).where(accounts.c.id == account))
        entries = (
            await conn.execute(
                select(ledger.c.kind, ledger.c.amount).where(ledger.c.account_id == account).order_by(ledger.c.id)
            )
        ).all()
    assert balance == 100
    assert entries == [("OPENING", Decimal(100)), ("PAYMENT", Decimal(-1)), ("REFUND", Decimal(1))]
    # A CANCELLED for an order never paid refunds nothing and says so.
    assert await statuses(engine, never_paid) == ["PAYMENT_DENIED"]


# -- the order and notification consumers ----------------------------------------------------------


def payment_event(
    account: uuid.UUID, number: str, kind: PaymentEventType, description: str = "", owner: str | None = None
) -> PaymentEvent:
    return PaymentEvent(
        event_id=uuid.uuid4(),
        payment_event_type=kind,
        account_id=account,
        order_number=number,
        amount=Decimal(10),
        description=description or None,
        occurred_at=datetime.now(UTC),
        owner_sub=owner,
    )


def counted(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


async def consume(engine: AsyncEngine, producer: ProducerHandle, topic: str, infra, handle, park, model=PaymentEvent):  # type: ignore[no-untyped-def]
    consumer = IdempotentConsumer(
        topic=topic,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        model=model,
        handle=handle,
        park=park,
        service="test",
        engine=engine,
        producer=producer,
        kafka=infra.kafka_bootstrap_servers,
        client_id="test",
        batch_size=100,
    )
    consumer.start()
    return consumer


async def test_a_payment_result_the_order_service_cannot_apply_is_parked_and_holds_back_no_other(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, infra
) -> None:
    """Three orders of one account (one partition, one batch): the result of one cannot be applied
    beyond its status (a stand-in for any fault of its own: a constraint, a bug), another's order
    refuses every change. Both are parked with their reason and counted, neither is dead-lettered,
    and the innocent order behind them is confirmed. The first still gets the final status billing
    decided (and the user was notified of), and the owner billing named, as an applied result
    would; the second keeps its status, its parked row says why."""
    account = uuid.uuid4()
    innocent, beyond_status, frozen = (f"{account}:{uuid.uuid4()}" for _ in range(3))
    events = [
        payment_event(account, beyond_status, PaymentEventType.PAYMENT_CONFIRMED, owner="someone-else"),
        payment_event(account, frozen, PaymentEventType.PAYMENT_CONFIRMED),
        payment_event(account, innocent, PaymentEventType.PAYMENT_CONFIRMED),
    ]
    async with engine.begin() as conn:
        await conn.execute(
            insert(orders),
            [
                {"id": uuid.uuid4(), "account_id": account, "order_number": n, "amount": Decimal(10), "status": "SENT"}
                for n in (beyond_status, frozen, innocent)
            ],
        )
        await conn.execute(
            text(f"""
            CREATE FUNCTION order_service.inject_failure() RETURNS trigger AS $$
            BEGIN
              IF NEW.order_number = '{frozen}' THEN
                RAISE EXCEPTION 'injected failure for %', NEW.order_number;
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        )
        await conn.execute(
            text(
                "CREATE TRIGGER inject_failure BEFORE UPDATE ON order_service.orders "
                "FOR EACH ROW EXECUTE FUNCTION order_service.inject_failure()"
            )
        )
        # Its result fails where it is applied, not where it is parked (the inbox row says PARKED).
        await conn.execute(
            text(f"""
            CREATE FUNCTION order_service.inject_apply_failure() RETURNS trigger AS $$
            BEGIN
              IF NEW.event_id = '{events[0].event_id}' AND NEW.status = 'PROCESSED' THEN
                RAISE EXCEPTION 'injected failure for {beyond_status}';
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        )
        await conn.execute(
            text(
                "CREATE TRIGGER inject_apply_failure BEFORE INSERT ON order_service.processed_events "
                "FOR EACH ROW EXECUTE FUNCTION order_service.inject_apply_failure()"
            )
        )
    parked_before = counted("orbilnot_parked_events_total", service="test")
    dead_before = counted("orbilnot_consumer_dead_letters_total", topic=topic)
    for event in events:
        await producer.producer.send(topic, event.to_json(), key=str(account).encode())
    await producer.producer.flush()

    consumer = await consume(engine, producer, topic, infra, apply_payment_results, park_payment_result)
    try:

        async def status_of(number: str) -> str | None:
            async with engine.connect() as conn:
                return await conn.scalar(select(orders.c.status).where(orders.c.order_number == number))

        await eventually(lambda: status_of(innocent), lambda s: s == "CONFIRMED", what="the innocent order")
    finally:
        await consumer.stop()

    async with engine.connect() as conn:
        inbox = {
            row.event_id: (row.status, row.error)
            for row in await conn.execute(
                select(processed_events.c.event_id, processed_events.c.status, processed_events.c.error)
            )
        }
        final = dict((await conn.execute(select(orders.c.order_number, orders.c.status))).all())
        owners = dict((await conn.execute(select(orders.c.order_number, orders.c.owner_sub))).all())
    assert inbox[events[2].event_id] == ("PROCESSED", None)
    for parked in events[:2]:
        status, error = inbox[parked.event_id]
        assert status == "PARKED" and error is not None and "injected failure" in error
    assert final == {beyond_status: "CONFIRMED", frozen: "SENT", innocent: "CONFIRMED"}
    assert owners[beyond_status] == "someone-else"
    assert counted("orbilnot_parked_events_total", service="test") == parked_before + 2
    assert counted("orbilnot_consumer_dead_letters_total", topic=topic) == dead_before


async def test_a_notification_the_database_refuses_is_parked_and_holds_back_no_other(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, infra
) -> None:
    """A valid payment event whose text PostgreSQL cannot store (a NUL character): the notification
    service's own limit, not a malformed message. It is parked with its reason and counted; the
    notification after it is stored."""
    account = uuid.uuid4()
    refused = payment_event(account, f"{account}:{uuid.uuid4()}", PaymentEventType.PAYMENT_DENIED, "a\u0000b")
    innocent = payment_event(account, f"{account}:{uuid.uuid4()}", PaymentEventType.PAYMENT_CONFIRMED)
    parked_before = counted("orbilnot_parked_events_total", service="test")
    dead_before = counted("orbilnot_consumer_dead_letters_total", topic=topic)
    for event in (refused, innocent):
        await producer.producer.send(topic, event.to_json(), key=str(account).encode())
    await producer.producer.flush()

    consumer = await consume(engine, producer, topic, infra, store_notifications, park_notification)
    try:

        async def stored() -> list[str]:
            async with engine.connect() as conn:
                return list(
                    await conn.scalars(
                        select(notifications.c.order_number).where(notifications.c.account_id == account)
                    )
                )

        await eventually(stored, lambda numbers: numbers == [innocent.order_number], what="the innocent notification")
    finally:
        await consumer.stop()

    async with engine.connect() as conn:
        parked = (await conn.execute(select(parked_events))).all()
    assert [(row.event_id, row.order_number) for row in parked] == [(refused.event_id, refused.order_number)]
    assert parked[0].error and PaymentEvent.model_validate_json(parked[0].value) == refused
    assert counted("orbilnot_parked_events_total", service="test") == parked_before + 1
    assert counted("orbilnot_consumer_dead_letters_total", topic=topic) == dead_before


async def test_an_order_event_billing_cannot_store_is_parked_and_answered(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, infra
) -> None:
    """Billing's consumer: an order event whose RECEIVED row the database refuses (a trigger, in
    for any fault of its own) is stored PARKED with the reason and answered PAYMENT_DENIED, so its
    order ends and the user is told; the event after it is received."""
    account = uuid.uuid4()
    bad, good = order_event(account, Decimal(5)), order_event(account, Decimal(6))
    async with engine.begin() as conn:
        await conn.execute(
            text(f"""
            CREATE FUNCTION billing.inject_failure() RETURNS trigger AS $$
            BEGIN
              IF NEW.order_number = '{bad.order_number}' AND NEW.status = 'RECEIVED' THEN
                RAISE EXCEPTION 'injected failure for %', NEW.order_number;
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        )
        await conn.execute(
            text(
                "CREATE TRIGGER inject_failure BEFORE INSERT ON billing.order_events "
                "FOR EACH ROW EXECUTE FUNCTION billing.inject_failure()"
            )
        )
    parked_before = counted("orbilnot_parked_events_total", service="test")
    for event in (bad, good):
        await producer.producer.send(topic, event.to_json(), key=str(account).encode())
    await producer.producer.flush()

    park = functools.partial(park_order_event, topic="payment.event")
    consumer = await consume(engine, producer, topic, infra, receive_order_events, park, model=OrderEvent)
    try:

        async def inbox() -> dict[uuid.UUID, tuple[str, str | None]]:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(order_events.c.event_id, order_events.c.status, order_events.c.description)
                )
                return {row.event_id: (row.status, row.description) for row in rows}

        rows = await eventually(inbox, lambda rows: good.event_id in rows, what="the good event received")
    finally:
        await consumer.stop()

    assert rows[good.event_id] == ("RECEIVED", None)
    status, reason = rows[bad.event_id]
    assert status == "PARKED" and reason is not None and "injected failure" in reason
    async with engine.connect() as conn:
        answers = list(await conn.scalars(select(billing_outbox.c.value)))
    assert len(answers) == 1
    answer = PaymentEvent.model_validate_json(answers[0])
    assert (answer.order_number, answer.payment_event_type) == (bad.order_number, PaymentEventType.PAYMENT_DENIED)
    assert counted("orbilnot_parked_events_total", service="test") == parked_before + 1


async def test_a_serialization_failure_in_a_consumer_is_retried_not_parked(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, infra
) -> None:
    """The order consumer meets 40001 twice on one event's inbox row: the transaction is run again
    (backoff), and the event is applied; nothing is parked or dead-lettered."""
    account = uuid.uuid4()
    number = f"{account}:{uuid.uuid4()}"
    async with engine.begin() as conn:
        await conn.execute(
            insert(orders).values(
                id=uuid.uuid4(), account_id=account, order_number=number, amount=Decimal(10), status="SENT"
            )
        )
        await conn.execute(text("CREATE SEQUENCE order_service.injected_failures"))
        await conn.execute(
            text("""
            CREATE FUNCTION order_service.inject_failure() RETURNS trigger AS $$
            BEGIN
              IF nextval('order_service.injected_failures') <= 2 THEN
                RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = '40001';
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        )
        await conn.execute(
            text(
                "CREATE TRIGGER inject_failure BEFORE INSERT ON order_service.processed_events "
                "FOR EACH ROW EXECUTE FUNCTION order_service.inject_failure()"
            )
        )
    parked_before = counted("orbilnot_parked_events_total", service="test")
    dead_before = counted("orbilnot_consumer_dead_letters_total", topic=topic)
    event = payment_event(account, number, PaymentEventType.PAYMENT_CONFIRMED)
    await producer.producer.send_and_wait(topic, event.to_json(), key=str(account).encode())

    consumer = await consume(engine, producer, topic, infra, apply_payment_results, park_payment_result)
    try:

        async def status() -> str | None:
            async with engine.connect() as conn:
                return await conn.scalar(select(orders.c.status).where(orders.c.order_number == number))

        await eventually(status, lambda s: s == "CONFIRMED", what="the order confirmed")
    finally:
        await consumer.stop()

    async with engine.connect() as conn:
        assert await conn.scalar(select(processed_events.c.status)) == "PROCESSED"
        assert await conn.scalar(text("SELECT last_value FROM order_service.injected_failures")) >= 3
    assert counted("orbilnot_parked_events_total", service="test") == parked_before
    assert counted("orbilnot_consumer_dead_letters_total", topic=topic) == dead_before


async def _lock_waits(engine: AsyncEngine, locktype: str) -> int:
    async with engine.connect() as conn:
        waiting = await conn.scalar(
            text("SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = :t"), {"t": locktype}
        )
    return int(waiting or 0)


async def test_the_long_way_and_another_replicas_fast_path_never_deadlock(engine: AsyncEngine) -> None:
    """Billing's consumer takes the long way when its batch fails as a whole (here: a poisoned
    event beside a good one): store RECEIVED, then decide. After a rebalance another replica may
    hold a copy of the good event and take the fast path: lock the account, then insert. If the
    long way inserted its inbox row before locking the account, each would wait for the other (a
    deadlock, with an HTTP deposit on that account a possible victim). Paced by lock waits:
    the long way is held inside its inbox insert, the fast path starts and waits, then both go."""
    async with engine.begin() as conn:
        good_account, poisoned_account = await open_account(conn, Decimal(100)), await open_account(conn, Decimal(100))
    good = order_event(good_account, Decimal(10))
    poison = order_event(poisoned_account, Decimal(10))
    await fail_ledger_writes_for(engine, poison.order_number, "P0001", times=None)
    hold = 7_310_001  # the advisory lock the test holds while the long way is inside its insert
    async with engine.begin() as conn:
        await conn.execute(
            text(f"""
            CREATE FUNCTION billing.hold_received() RETURNS trigger AS $$
            BEGIN
              IF NEW.status = 'RECEIVED' THEN PERFORM pg_advisory_xact_lock({hold}); END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        )
        await conn.execute(
            text(
                "CREATE TRIGGER hold_received AFTER INSERT ON billing.order_events "
                "FOR EACH ROW EXECUTE FUNCTION billing.hold_received()"
            )
        )
    outcomes: dict[str, str] = {}

    async def replica(name: str, events: list[OrderEvent]) -> None:
        try:
            async with engine.begin() as conn:  # no retry: a deadlock must show
                await receive_and_decide_order_events(conn, events, topic="payment.event")
            outcomes[name] = "ok"
        except DBAPIError as error:
            outcomes[name] = getattr(error.orig, "sqlstate", None) or repr(error)

    async with engine.connect() as holder:
        await holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": hold})
        long_way = asyncio.create_task(replica("long way", [good, poison]))
        await eventually(lambda: _lock_waits(engine, "advisory"), bool, what="the long way held in its insert")
        fast_path = asyncio.create_task(replica("fast path", [good]))
        await eventually(lambda: _lock_waits(engine, "transactionid"), bool, what="the fast path waiting")
        await holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": hold})
        await asyncio.wait_for(asyncio.gather(long_way, fast_path), timeout=30)
    assert outcomes == {"long way": "ok", "fast path": "ok"}
    async with engine.connect() as conn:
        charges = await conn.scalar(
            select(func.count()).select_from(ledger).where(ledger.c.order_number == good.order_number)
        )
    assert charges == 1  # and the good order paid once, by whichever came first

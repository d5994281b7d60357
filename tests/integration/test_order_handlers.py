"""Order's handlers on a real database and broker: amending and withdrawing interplay with the
relay, payment results move an order once, and a refund is asked for once."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from orbilnot.model import PaymentEvent, PaymentEventType, order_number_of
from orbilnot.order.handlers import (
    amend_order,
    apply_payment_results,
    get_order,
    mark_attempted,
    place_order,
    withdraw_order,
)
from orbilnot.order.tables import outbox
from orbilnot.shared.kafka import ProducerHandle
from orbilnot.shared.relay import OutboxRelay
from support import read_topic


async def publish_all(engine: AsyncEngine, producer: ProducerHandle) -> None:
    relay = OutboxRelay(
        "test", outbox, engine=engine, producer=producer, batch_size=50, poll_interval_s=1, on_attempt=mark_attempted
    )
    while await relay.publish_batch():
        pass


def result(account: uuid.UUID, order: uuid.UUID, kind: PaymentEventType, amount: str = "10") -> PaymentEvent:
    return PaymentEvent(
        event_id=uuid.uuid4(),
        payment_event_type=kind,
        account_id=account,
        order_number=order_number_of(account, order),
        amount=Decimal(amount),
        occurred_at=datetime.now(UTC),
    )


async def test_an_amended_order_is_published_with_its_new_amount_and_a_withdrawn_one_not_at_all(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, infra
) -> None:
    account = uuid.uuid4()
    async with engine.begin() as conn:
        amended = await place_order(conn, account, Decimal(10), topic=topic)
        withdrawn = await place_order(conn, account, Decimal(20), topic=topic)
    async with engine.begin() as conn:
        await amend_order(conn, account, order_number_of(account, amended), Decimal("12.34"), topic=topic)
        assert await withdraw_order(conn, account, order_number_of(account, withdrawn), topic=topic) is None

    await publish_all(engine, producer)
    events = [json.loads(r.value) for r in await read_topic(infra.kafka_bootstrap_servers, topic, at_least=1)]
    assert [(e["orderNumber"], e["amount"]) for e in events] == [(order_number_of(account, amended), 12.34)]


async def test_a_result_is_applied_once_and_none_to_an_order_never_sent(
    engine: AsyncEngine, producer: ProducerHandle, topic: str
) -> None:
    account = uuid.uuid4()
    async with engine.begin() as conn:
        order = await place_order(conn, account, Decimal(10), topic=topic)
    confirmed = result(account, order, PaymentEventType.PAYMENT_CONFIRMED)
    async with engine.begin() as conn:  # forged: its CREATED was never sent
        await apply_payment_results(conn, [result(account, order, PaymentEventType.PAYMENT_CONFIRMED)])
    async with engine.connect() as conn:
        assert (await get_order(conn, account, order)).status == "NEW"

    await publish_all(engine, producer)
    denied_late = result(account, order, PaymentEventType.PAYMENT_DENIED)
    for event in (confirmed, confirmed, denied_late):
        async with engine.begin() as conn:
            await apply_payment_results(conn, [event])
    async with engine.connect() as conn:
        assert (await get_order(conn, account, order)).status == "CONFIRMED"
        unpublished = await conn.scalar(select(outbox.c.id).where(outbox.c.published_at.is_(None)))
    assert unpublished is None


async def test_a_refund_is_requested_once_and_completes_on_refunded(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, infra
) -> None:
    account = uuid.uuid4()
    async with engine.begin() as conn:
        order = await place_order(conn, account, Decimal(10), topic=topic)
    await publish_all(engine, producer)
    async with engine.begin() as conn:
        await apply_payment_results(conn, [result(account, order, PaymentEventType.PAYMENT_CONFIRMED)])

    number = order_number_of(account, order)
    for _ in range(3):  # repeating DELETE changes nothing after the first
        async with engine.begin() as conn:
            refunding = await withdraw_order(conn, account, number, topic=topic)
        assert refunding is not None and refunding.status == "REFUND_PENDING"
        await publish_all(engine, producer)

    events = [json.loads(r.value) for r in await read_topic(infra.kafka_bootstrap_servers, topic, at_least=2)]
    assert [e["eventType"] for e in events] == ["CREATED", "CANCELLED"]
    async with engine.begin() as conn:
        await apply_payment_results(conn, [result(account, order, PaymentEventType.REFUNDED)])
    async with engine.connect() as conn:
        assert (await get_order(conn, account, order)).status == "REFUNDED"


async def test_a_batch_of_results_applies_each_once_in_the_order_consumed(
    engine: AsyncEngine, producer: ProducerHandle, topic: str
) -> None:
    """The consumer hands a whole batch to the handler: several results of one order, copies of
    one event, an order nobody knows — each decided as if it had come alone, in order."""
    account = uuid.uuid4()
    async with engine.begin() as conn:
        refunded = await place_order(conn, account, Decimal(10), topic=topic)
        denied = await place_order(conn, account, Decimal(20), topic=topic)
    await publish_all(engine, producer)
    confirmed = result(account, refunded, PaymentEventType.PAYMENT_CONFIRMED)
    batch = [
        confirmed,
        result(account, denied, PaymentEventType.PAYMENT_DENIED),
        confirmed,  # a redelivery within the batch
        result(account, uuid.uuid4(), PaymentEventType.PAYMENT_CONFIRMED),  # an order nobody knows
        result(account, denied, PaymentEventType.PAYMENT_CONFIRMED),  # does not apply: already denied
        result(account, refunded, PaymentEventType.REFUNDED),  # applies to the CONFIRMED just before it
    ]
    async with engine.begin() as conn:
        await apply_payment_results(conn, batch)
    async with engine.connect() as conn:
        assert (await get_order(conn, account, refunded)).status == "REFUNDED"
        assert (await get_order(conn, account, denied)).status == "CANCELLED"
    async with engine.begin() as conn:  # the whole batch again: every event is a redelivery
        await apply_payment_results(conn, batch)
    async with engine.connect() as conn:
        assert (await get_order(conn, account, refunded)).status == "REFUNDED"

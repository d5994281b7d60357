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
    OrderEventsSource,
    amend_order,
    apply_payment_result,
    get_order,
    place_order,
    withdraw_order,
)
from orbilnot.order.tables import orders
from orbilnot.shared.kafka import ProducerHandle
from orbilnot.shared.relay import OutboxRelay
from support import read_topic


async def publish_all(engine: AsyncEngine, producer: ProducerHandle, topic: str) -> None:
    relay = OutboxRelay(OrderEventsSource(topic), engine=engine, producer=producer, batch_size=50, poll_interval_s=1)
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
        amended = await place_order(conn, account, Decimal(10))
        withdrawn = await place_order(conn, account, Decimal(20))
    async with engine.begin() as conn:
        await amend_order(conn, account, order_number_of(account, amended), Decimal("12.34"))
        assert await withdraw_order(conn, account, order_number_of(account, withdrawn)) is None

    await publish_all(engine, producer, topic)
    events = [json.loads(r.value) for r in await read_topic(infra.kafka_bootstrap_servers, topic, at_least=1)]
    assert [(e["orderNumber"], e["amount"]) for e in events] == [(order_number_of(account, amended), 12.34)]


async def test_a_result_for_an_order_still_new_is_applied_once(engine: AsyncEngine) -> None:
    account = uuid.uuid4()
    async with engine.begin() as conn:
        order = await place_order(conn, account, Decimal(10))
    confirmed = result(account, order, PaymentEventType.PAYMENT_CONFIRMED)
    denied_late = result(account, order, PaymentEventType.PAYMENT_DENIED)
    for event in (confirmed, confirmed, denied_late):
        async with engine.begin() as conn:
            await apply_payment_result(conn, event)
    async with engine.connect() as conn:
        assert (await get_order(conn, account, order)).status == "CONFIRMED"
        pending = await conn.scalar(select(orders.c.pending_event_id).where(orders.c.id == order))
    assert pending is None, "the result answered the pending CREATED: nothing is left to publish"


async def test_a_refund_is_requested_once_and_completes_on_refunded(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, infra
) -> None:
    account = uuid.uuid4()
    async with engine.begin() as conn:
        order = await place_order(conn, account, Decimal(10))
    await publish_all(engine, producer, topic)
    async with engine.begin() as conn:
        await apply_payment_result(conn, result(account, order, PaymentEventType.PAYMENT_CONFIRMED))

    number = order_number_of(account, order)
    for _ in range(3):  # repeating DELETE changes nothing after the first
        async with engine.begin() as conn:
            refunding = await withdraw_order(conn, account, number)
        assert refunding is not None and refunding.status == "REFUND_PENDING"
        await publish_all(engine, producer, topic)

    events = [json.loads(r.value) for r in await read_topic(infra.kafka_bootstrap_servers, topic, at_least=2)]
    assert [e["eventType"] for e in events] == ["CREATED", "CANCELLED"]
    async with engine.begin() as conn:
        await apply_payment_result(conn, result(account, order, PaymentEventType.REFUNDED))
    async with engine.connect() as conn:
        assert (await get_order(conn, account, order)).status == "REFUNDED"

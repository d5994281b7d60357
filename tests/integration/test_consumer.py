"""The idempotent consumer on a real broker and database: a redelivered event changes nothing;
a message that cannot be used lands in the dead-letter topic and the next good one is stored."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from orbilnot.billing.handlers import receive_order_events
from orbilnot.billing.tables import order_events
from orbilnot.model import OrderEvent, OrderEventType, PaymentEvent, PaymentEventType
from orbilnot.notification.handlers import store_notifications
from orbilnot.notification.tables import notifications
from orbilnot.shared.consumer import IdempotentConsumer
from orbilnot.shared.kafka import ProducerHandle
from support import eventually, read_topic


def payment_event(amount: str = "10") -> PaymentEvent:
    account = uuid.uuid4()
    return PaymentEvent(
        event_id=uuid.uuid4(),
        payment_event_type=PaymentEventType.PAYMENT_CONFIRMED,
        account_id=account,
        order_number=f"{account}:{uuid.uuid4()}",
        amount=Decimal(amount),
        description="Payment confirmed",
        occurred_at=datetime.now(UTC),
    )


@pytest.fixture
async def notification_consumer(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, infra
) -> AsyncIterator[IdempotentConsumer[PaymentEvent]]:
    consumer = IdempotentConsumer(
        topic=topic,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        model=PaymentEvent,
        handle=store_notifications,
        engine=engine,
        producer=producer,
        kafka=infra.kafka_bootstrap_servers,
        client_id="test",
        batch_size=100,
    )
    consumer.start()
    yield consumer
    await consumer.stop()


async def count_notifications(engine: AsyncEngine, order_number: str) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                select(func.count()).select_from(notifications).where(notifications.c.order_number == order_number)
            )
            or 0
        )


async def test_a_redelivered_event_is_stored_once(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, notification_consumer: object
) -> None:
    event = payment_event()
    marker = payment_event()  # sent after the copies: once it is stored, all copies were seen
    for _ in range(3):
        await producer.producer.send_and_wait(topic, event.to_json(), key=str(event.account_id).encode())
    await producer.producer.send_and_wait(topic, marker.to_json(), key=str(event.account_id).encode())

    await eventually(lambda: count_notifications(engine, marker.order_number), lambda n: n == 1, what="marker")
    assert await count_notifications(engine, event.order_number) == 1


async def test_poison_messages_go_to_the_dead_letter_topic_and_the_next_good_one_is_stored(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, notification_consumer: object, infra
) -> None:
    good = payment_event()
    valid = good.model_dump(mode="json", by_alias=True)
    poison = [
        b"not json at all",
        b'{"eventId": 42}',
        PaymentEvent.model_construct(**{**good.model_dump(), "event_id": uuid.uuid4()})
        .to_json()
        .replace(b'"PAYMENT_CONFIRMED"', b'"PAYMENT_PERHAPS"'),
        __import__("json").dumps({**valid, "amount": "ten"}).encode(),
        b"x" * (1024 * 1024 - 200),
    ]
    key = str(good.account_id).encode()
    for value in poison:
        await producer.producer.send_and_wait(topic, value, key=key)
    await producer.producer.send_and_wait(topic, good.to_json(), key=key)

    await eventually(lambda: count_notifications(engine, good.order_number), lambda n: n == 1, what="good event")
    dead = await read_topic(infra.kafka_bootstrap_servers, f"{topic}.dlt", at_least=len(poison))
    assert len(dead) == len(poison)
    assert [r.value for r in dead[:4]] == poison[:4]
    for record in dead:
        headers = dict(record.headers)
        assert headers["error"], "the reason travels with the message"
        assert headers["original-topic"].decode() == topic


async def test_billing_inbox_keeps_one_row_per_order_event(engine: AsyncEngine) -> None:
    account = uuid.uuid4()
    event = OrderEvent(
        event_id=uuid.uuid4(),
        event_type=OrderEventType.CREATED,
        account_id=account,
        order_number=f"{account}:{uuid.uuid4()}",
        amount=Decimal("5"),
        occurred_at=datetime.now(UTC),
    )
    for _ in range(3):
        async with engine.begin() as conn:
            await receive_order_events(conn, [event])
    async with engine.connect() as conn:
        rows = (
            await conn.execute(select(order_events.c.status).where(order_events.c.event_id == event.event_id))
        ).all()
    assert [tuple(r) for r in rows] == [("RECEIVED",)]

"""The relay on a real PostgreSQL and a real Kafka broker: it publishes exactly what was
committed, once, even with two relays at once; and a publish that failed is published later."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from orbilnot.order.handlers import OrderEventsSource, place_order
from orbilnot.order.tables import orders
from orbilnot.shared.kafka import ProducerHandle
from orbilnot.shared.relay import OutboxRelay
from support import read_topic


class Rollback(Exception):
    pass


async def place_orders(engine: AsyncEngine, count: int) -> set[str]:
    numbers = set()
    for i in range(count):
        account = uuid.uuid4()
        async with engine.begin() as conn:
            order_id = await place_order(conn, account, Decimal(i + 1))
        numbers.add(f"{account}:{order_id}")
    return numbers


async def drain(relay: OutboxRelay) -> None:  # type: ignore[type-arg]
    while await relay.publish_batch():
        pass


def relay_for(engine: AsyncEngine, producer: ProducerHandle, topic: str, batch_size: int = 7) -> OutboxRelay:  # type: ignore[type-arg]
    return OutboxRelay(
        OrderEventsSource(topic), engine=engine, producer=producer, batch_size=batch_size, poll_interval_s=0.1
    )


async def test_publishes_exactly_the_committed_orders_and_marks_them_sent(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, infra
) -> None:
    committed = await place_orders(engine, 20)
    with pytest.raises(Rollback):
        async with engine.begin() as conn:
            await place_order(conn, uuid.uuid4(), Decimal(1))
            raise Rollback

    await drain(relay_for(engine, producer, topic))

    records = await read_topic(infra.kafka_bootstrap_servers, topic, at_least=20)
    events = [json.loads(r.value) for r in records]
    assert sorted(e["orderNumber"] for e in events) == sorted(committed)
    assert all(e["eventType"] == "CREATED" for e in events)
    assert all(r.key.decode() == e["accountId"] for r, e in zip(records, events, strict=True))
    async with engine.connect() as conn:
        statuses = (await conn.execute(select(orders.c.status, func.count()).group_by(orders.c.status))).all()
    assert dict(statuses) == {"SENT": 20}


async def test_two_relays_at_once_never_publish_a_row_twice(
    database_url: str, producer: ProducerHandle, topic: str, infra
) -> None:
    # Two engines: two connection pools, as two replicas would have.
    first_engine, second_engine = create_async_engine(database_url), create_async_engine(database_url)
    try:
        committed = await place_orders(first_engine, 300)
        await asyncio.gather(
            drain(relay_for(first_engine, producer, topic, batch_size=10)),
            drain(relay_for(second_engine, producer, topic, batch_size=10)),
        )
        records = await read_topic(infra.kafka_bootstrap_servers, topic, at_least=300, settle_s=1.0)
        event_ids = [json.loads(r.value)["eventId"] for r in records]
        assert len(event_ids) == len(set(event_ids)) == 300
        assert {json.loads(r.value)["orderNumber"] for r in records} == committed
    finally:
        await first_engine.dispose()
        await second_engine.dispose()


async def test_a_failed_publish_leaves_the_rows_to_publish_again(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, infra
) -> None:
    committed = await place_orders(engine, 3)
    not_connected = ProducerHandle(infra.kafka_bootstrap_servers, client_id="never-started")
    with pytest.raises(RuntimeError):
        await relay_for(engine, not_connected, topic).publish_batch()
    async with engine.connect() as conn:
        assert set(await conn.scalars(select(orders.c.status))) == {"NEW"}

    await drain(relay_for(engine, producer, topic))
    records = await read_topic(infra.kafka_bootstrap_servers, topic, at_least=3)
    assert {json.loads(r.value)["orderNumber"] for r in records} == committed

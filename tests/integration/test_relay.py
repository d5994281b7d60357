"""The relay on a real PostgreSQL and a real Kafka broker: it publishes exactly what was
committed, once, even with two relays at once; a publish that failed is published later; nothing
is marked published that the broker did not acknowledge; and an order whose event may be out is
never treated as NEW again (the ack-then-rollback window); a message the broker refuses on its own
is set aside without holding back the others; published rows are swept after their retention."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import REGISTRY
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from orbilnot.model import order_number_of
from orbilnot.order.handlers import amend_order, get_order, mark_attempted, place_order, withdraw_order
from orbilnot.order.tables import orders, outbox
from orbilnot.shared.errors import Conflict
from orbilnot.shared.kafka import ProducerHandle
from orbilnot.shared.outbox import outbox_row, record
from orbilnot.shared.relay import OutboxRelay
from support import read_topic


class Rollback(Exception):
    pass


async def place_orders(engine: AsyncEngine, topic: str, count: int) -> set[str]:
    numbers = set()
    for i in range(count):
        account = uuid.uuid4()
        async with engine.begin() as conn:
            order_id = await place_order(conn, account, Decimal(i + 1), topic=topic)
        numbers.add(f"{account}:{order_id}")
    return numbers


async def drain(relay: OutboxRelay) -> None:
    while await relay.publish_batch():
        pass


def relay_for(
    engine: AsyncEngine,
    producer: ProducerHandle,
    batch_size: int = 7,
    retention: timedelta | None = None,
    *,
    holding_locks: bool = False,
) -> OutboxRelay:
    """The order service's relay; `holding_locks`: one with no `on_attempt`, as billing's, which
    holds its rows by their locks while it sends (shared/relay.py)."""
    return OutboxRelay(
        "test",
        outbox,
        engine=engine,
        producer=producer,
        batch_size=batch_size,
        poll_interval_s=0.1,
        on_attempt=None if holding_locks else mark_attempted,
        retention=retention,
        sweep_batch_size=2,
    )


# Both ways of holding a batch while it is sent: a committed lease, or row locks.
both_ways = pytest.mark.parametrize("holding_locks", [False, True], ids=["lease", "locks"])


async def create_topic(infra, max_message_bytes: int) -> str:  # type: ignore[no-untyped-def]
    name = f"test.limited.{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=1,
                    replication_factor=1,
                    topic_configs={"max.message.bytes": str(max_message_bytes)},
                )
            ]
        )
    finally:
        await admin.close()
    return name


async def unpublished(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).where(outbox.c.published_at.is_(None))) or 0)


async def test_publishes_exactly_the_committed_orders_and_marks_them_sent(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, infra
) -> None:
    committed = await place_orders(engine, topic, 20)
    with pytest.raises(Rollback):
        async with engine.begin() as conn:
            await place_order(conn, uuid.uuid4(), Decimal(1), topic=topic)
            raise Rollback

    await drain(relay_for(engine, producer))

    records = await read_topic(infra.kafka_bootstrap_servers, topic, at_least=20)
    events = [json.loads(r.value) for r in records]
    assert sorted(e["orderNumber"] for e in events) == sorted(committed)
    assert all(e["eventType"] == "CREATED" for e in events)
    assert all(r.key.decode() == e["accountId"] for r, e in zip(records, events, strict=True))
    async with engine.connect() as conn:
        statuses = (await conn.execute(select(orders.c.status, func.count()).group_by(orders.c.status))).all()
    assert dict(statuses) == {"SENT": 20}
    assert await unpublished(engine) == 0


async def test_the_outbox_headers_travel_as_kafka_headers(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, infra
) -> None:
    await place_orders(engine, topic, 1)
    async with engine.begin() as conn:
        await conn.execute(update(outbox).values(headers={"traceparent": "00-abc-def-01"}))
    await drain(relay_for(engine, producer))
    (record,) = await read_topic(infra.kafka_bootstrap_servers, topic, at_least=1)
    assert dict(record.headers) == {"traceparent": b"00-abc-def-01"}


@both_ways
async def test_two_relays_at_once_never_publish_a_row_twice(
    database_url: str, producer: ProducerHandle, topic: str, infra, holding_locks: bool
) -> None:
    # Two engines: two connection pools, as two replicas would have.
    first_engine, second_engine = create_async_engine(database_url), create_async_engine(database_url)
    try:
        committed = await place_orders(first_engine, topic, 300)
        await asyncio.gather(
            drain(relay_for(first_engine, producer, batch_size=10, holding_locks=holding_locks)),
            drain(relay_for(second_engine, producer, batch_size=10, holding_locks=holding_locks)),
        )
        records = await read_topic(infra.kafka_bootstrap_servers, topic, at_least=300, settle_s=1.0)
        event_ids = [json.loads(r.value)["eventId"] for r in records]
        assert len(event_ids) == len(set(event_ids)) == 300
        assert {json.loads(r.value)["orderNumber"] for r in records} == committed
    finally:
        await first_engine.dispose()
        await second_engine.dispose()


@both_ways
async def test_a_failed_publish_leaves_the_rows_to_publish_again(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, infra, holding_locks: bool
) -> None:
    committed = await place_orders(engine, topic, 3)
    not_connected = ProducerHandle(infra.kafka_bootstrap_servers, client_id="never-started")
    with pytest.raises(RuntimeError):
        await relay_for(engine, not_connected, holding_locks=holding_locks).publish_batch()
    assert await unpublished(engine) == 3

    await drain(relay_for(engine, producer, holding_locks=holding_locks))
    records = await read_topic(infra.kafka_bootstrap_servers, topic, at_least=3)
    assert {json.loads(r.value)["orderNumber"] for r in records} == committed


@both_ways
async def test_nothing_is_marked_published_that_the_broker_refused(
    engine: AsyncEngine, producer: ProducerHandle, infra, holding_locks: bool
) -> None:
    """The relay's central promise. The broker takes the connection but refuses every message
    (the topic's `max.message.bytes` is smaller than any event): a relay that did not wait for the
    broker's acks before marking its rows published would mark them all here. (Each message is
    refused on its own, so each is set aside with the broker's error, not published.)"""
    refusing = await create_topic(infra, max_message_bytes=64)
    await place_orders(engine, refusing, 5)

    await relay_for(engine, producer, holding_locks=holding_locks).publish_batch()

    assert await unpublished(engine) == 5
    async with engine.connect() as conn:
        rows = (await conn.execute(select(outbox.c.attempts, outbox.c.error))).all()
    # Before sending with a lease; with the locks, in the transaction that sets them aside.
    assert [row.attempts for row in rows] == [1] * 5, "the attempt was recorded"
    assert all(row.error and "MessageSizeTooLarge" in row.error for row in rows), rows


class AckedThenRolledBack(Exception):
    pass


async def test_the_ack_then_rollback_window_never_lets_an_order_look_unsent(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker acknowledged CREATED, then the relay's final commit failed (a crash after the
    ack, a timeout, a failed commit). The order may be charged: PUT answers 409, DELETE does not
    remove it (409 while its payment is decided), and the relay sends the event again later with
    the same id, so billing sees one order, charged once."""
    account = uuid.uuid4()
    async with engine.begin() as conn:
        order = await place_order(conn, account, Decimal(5), topic=topic)
    number = order_number_of(account, order)

    relay = relay_for(engine, producer)

    async def fail_after_the_acks(*_: object) -> None:
        raise AckedThenRolledBack

    monkeypatch.setattr(relay, "_mark_published", fail_after_the_acks)
    with pytest.raises(AckedThenRolledBack):
        await relay.publish_batch()
    (first,) = await read_topic(infra.kafka_bootstrap_servers, topic, at_least=1)

    with pytest.raises(Conflict):
        async with engine.begin() as conn:
            await amend_order(conn, account, number, Decimal(7), topic=topic)
    with pytest.raises(Conflict):
        async with engine.begin() as conn:
            await withdraw_order(conn, account, number, topic=topic)
    async with engine.connect() as conn:
        order_now = await get_order(conn, account, order)
    assert (order_now.status, order_now.amount) == ("SENT", Decimal(5))

    # The lease runs out (made to, here), and a healthy relay sends the same event again.
    monkeypatch.undo()
    async with engine.begin() as conn:
        await conn.execute(update(outbox).values(claimed_until=func.now()))
    await drain(relay_for(engine, producer))
    records = await read_topic(infra.kafka_bootstrap_servers, topic, at_least=2)
    assert [json.loads(r.value)["eventId"] for r in records] == [json.loads(first.value)["eventId"]] * 2
    assert await unpublished(engine) == 0


async def test_a_relay_holding_locks_lets_go_of_its_rows_as_soon_as_its_transaction_ends(
    engine: AsyncEngine, producer: ProducerHandle, topic: str, infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Billing's relay (no `on_attempt`) claims by row locks, not a committed lease: when marking
    its rows published fails after the broker's acks, the rows are unpublished and free again at
    once (no lease to wait for), and the next batch sends the same events again, with the same ids."""
    await place_orders(engine, topic, 3)
    relay = relay_for(engine, producer, holding_locks=True)

    async def fail_after_the_acks(*_: object) -> None:
        raise AckedThenRolledBack

    monkeypatch.setattr(relay, "_mark_published", fail_after_the_acks)
    with pytest.raises(AckedThenRolledBack):
        await relay.publish_batch()
    first = await read_topic(infra.kafka_bootstrap_servers, topic, at_least=3)
    async with engine.connect() as conn:
        attempts = list(await conn.scalars(select(outbox.c.attempts)))
    assert attempts == [0, 0, 0], "nothing of the rolled-back attempt stays"

    await drain(relay_for(engine, producer, holding_locks=True))
    records = await read_topic(infra.kafka_bootstrap_servers, topic, at_least=6)
    ids = [json.loads(r.value)["eventId"] for r in first]
    assert sorted(json.loads(r.value)["eventId"] for r in records) == sorted(ids * 2)
    assert await unpublished(engine) == 0
    async with engine.connect() as conn:
        assert list(await conn.scalars(select(outbox.c.attempts))) == [1, 1, 1]


@both_ways
async def test_a_message_the_broker_refuses_on_its_own_is_set_aside_and_the_others_flow(
    engine: AsyncEngine, producer: ProducerHandle, infra, holding_locks: bool
) -> None:
    """One partition, so the relay's messages share the broker's batches: a message larger than the
    topic takes (refused by the broker) and one larger than any request (refused by the client)
    sit between ordinary events. Those two are set aside with their error, never marked
    published; the others are published, and the outbox is not blocked behind them."""
    limited = await create_topic(infra, max_message_bytes=4096)
    events = [
        outbox_row(uuid.uuid4(), limited, "k", value)
        for value in (b'"first"', b'"' + b"x" * 10_000 + b'"', b'"second"', b'"' + b"y" * 1_100_000 + b'"', b'"third"')
    ]
    async with engine.begin() as conn:
        await record(conn, outbox, events)
    refused_before = REGISTRY.get_sample_value("orbilnot_relay_refused_total", {"source": "test"}) or 0.0

    await drain(relay_for(engine, producer, holding_locks=holding_locks))
    assert not await relay_for(engine, producer, holding_locks=holding_locks).publish_batch(), (
        "refused rows are not claimed again"
    )

    published = await read_topic(infra.kafka_bootstrap_servers, limited, at_least=3)
    assert [r.value for r in published] == [b'"first"', b'"second"', b'"third"']
    async with engine.connect() as conn:
        rows = (await conn.execute(select(outbox).order_by(outbox.c.id))).all()
    assert [(row.published_at is None, row.refused_at is None) for row in rows] == [
        (False, True),
        (True, False),
        (False, True),
        (True, False),
        (False, True),
    ]
    assert all("TooLarge" in rows[i].error for i in (1, 3)), [rows[i].error for i in (1, 3)]
    assert REGISTRY.get_sample_value("orbilnot_relay_refused_total", {"source": "test"}) == refused_before + 2


async def test_published_rows_are_swept_after_their_retention_in_bounded_batches(
    engine: AsyncEngine, producer: ProducerHandle, topic: str
) -> None:
    await place_orders(engine, topic, 6)
    relay = relay_for(engine, producer, retention=timedelta(hours=24))
    await drain(relay)
    async with engine.begin() as conn:
        old = list(await conn.scalars(select(outbox.c.id).order_by(outbox.c.id).limit(5)))
        await conn.execute(
            update(outbox).where(outbox.c.id.in_(old)).values(published_at=func.now() - text("interval '25 hours'"))
        )
        # An unpublished row, however old, is never swept: it is still owed to Kafka.
        await conn.execute(
            update(outbox)
            .where(outbox.c.id == old[-1])
            .values(published_at=None, created_at=func.now() - text("interval '30 hours'"))
        )
    await place_orders(engine, topic, 1)  # not yet published

    assert await relay.sweep() == 4  # two batches of two, then one that finds nothing left

    async with engine.connect() as conn:
        left = list(await conn.scalars(select(outbox.c.id).order_by(outbox.c.id)))
    assert old[-1] in left and not set(old[:4]) & set(left)
    assert len(left) == 3  # the unpublished old one, the recent published one, the new one


@both_ways
async def test_a_refused_message_in_its_own_producer_batch_does_not_stall_the_partition(
    engine: AsyncEngine, producer: ProducerHandle, infra, holding_locks: bool
) -> None:
    """The refused message is larger than a producer batch (16 KB), so it goes out in a batch of
    its own and the one behind it in the next: the broker refuses the first, and the idempotent
    producer answers the second with OutOfOrderSequenceNumber. That is not the second message's
    fault: it is sent again, alone, after the producer is renewed, and published."""
    limited = await create_topic(infra, max_message_bytes=8192)
    events = [
        outbox_row(uuid.uuid4(), limited, "k", value)
        for value in (b'"first"', b'"' + b"x" * 20_000 + b'"', b'"second"')
    ]
    async with engine.begin() as conn:
        await record(conn, outbox, events)

    await drain(relay_for(engine, producer, holding_locks=holding_locks))

    published = await read_topic(infra.kafka_bootstrap_servers, limited, at_least=2)
    assert [r.value for r in published] == [b'"first"', b'"second"']
    async with engine.connect() as conn:
        rows = (await conn.execute(select(outbox).order_by(outbox.c.id))).all()
    assert [(row.published_at is None, row.refused_at is None) for row in rows] == [
        (False, True),
        (True, False),
        (False, True),
    ]
    assert "TooLarge" in rows[1].error, rows[1].error


async def test_a_published_row_kept_among_the_oldest_does_not_hold_the_sweep_back(
    engine: AsyncEngine, producer: ProducerHandle, topic: str
) -> None:
    """The oldest row was published only now (a refused row published again, say): each batch
    steps past what it keeps, so the expired rows behind it go in the same sweep."""
    await place_orders(engine, topic, 7)
    relay = relay_for(engine, producer, retention=timedelta(hours=24))
    await drain(relay)
    async with engine.begin() as conn:
        ids = list(await conn.scalars(select(outbox.c.id).order_by(outbox.c.id)))
        await conn.execute(
            update(outbox).where(outbox.c.id.in_(ids[1:])).values(published_at=func.now() - text("interval '25 hours'"))
        )

    assert await relay.sweep() == 6  # batches of two: 1, 2, 2, 1

    async with engine.connect() as conn:
        assert list(await conn.scalars(select(outbox.c.id))) == ids[:1]


async def test_a_sweep_stopped_at_its_bound_goes_on_at_the_next_idle_step(
    engine: AsyncEngine, producer: ProducerHandle, topic: str
) -> None:
    await place_orders(engine, topic, 7)
    await drain(relay_for(engine, producer))
    async with engine.begin() as conn:
        await conn.execute(update(outbox).values(published_at=func.now() - text("interval '25 hours'")))
    relay = relay_for(engine, producer, retention=timedelta(hours=24))
    relay.SWEEP_BATCHES = 2  # two batches of two per sweep

    async def left() -> int:
        async with engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(outbox)) or 0)

    assert not await relay.publish_batch()  # idle: sweeps 4, stopped at its bound
    assert await left() == 3
    assert not await relay.publish_batch()  # at once, not a minute later: the rest
    assert await left() == 0

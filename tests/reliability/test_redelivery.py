"""Scenario 5: every event on the order and payment topics delivered again changes nothing.

After a load has settled, every record on both topics is published a second time (same
partition, key, value: exactly what a consumer sees when Kafka redelivers), the live services
consume the copies, and then every balance, ledger, order, notification and every row of every
table is what it was before. Copies are known to be consumed when the consumer groups' committed
offsets reach the topics' new ends.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from kafka_tools import (
    GROUPS_OF_ORDER_TOPIC,
    GROUPS_OF_PAYMENT_TOPIC,
    publish_copies,
    read_all,
    wait_consumed,
)
from replicated import LONG, ReplicatedStack
from workload import Workload, _get_json, check_invariants, get_all

SCHEMAS = ("billing", "order_service", "notification_service")


async def api_snapshot(workload: Workload) -> dict[str, Any]:
    """What a user sees of every account: balance, ledger, orders, notifications."""
    seen: dict[str, Any] = {}
    for account in workload.books:
        seen[account] = {
            "account": await _get_json(workload.http, f"/account/{account}"),
            "ledger": await get_all(workload.http, f"/account/{account}/transactions"),
            "orders": await get_all(workload.http, f"/orders/{account}"),
            "notifications": await get_all(workload.http, f"/notifications/{account}"),
        }
    return seen


async def table_snapshot(database_url: str) -> dict[str, tuple[int, str]]:
    """Row count and a digest of every row of every table of the three services."""
    db = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        tables = await db.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema = ANY($1::text[]) AND table_type = 'BASE TABLE' ORDER BY 1, 2",
            list(SCHEMAS),
        )
        assert len(tables) >= 6, tables
        digests = {}
        for schema, table in tables:
            name = f'"{schema}"."{table}"'
            row = await db.fetchrow(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {name} t"
            )
            digests[name] = (row[0], row[1])
        return digests
    finally:
        await db.close()


async def test_every_event_delivered_twice_changes_nothing(replicated_stack: ReplicatedStack) -> None:
    env = replicated_stack.env
    kafka = env["KAFKA_BOOTSTRAP_SERVERS"]
    database_url = env["DATABASE_URL"]
    topics = {env["ORDER_EVENT_TOPIC"]: GROUPS_OF_ORDER_TOPIC, env["PAYMENT_EVENT_TOPIC"]: GROUPS_OF_PAYMENT_TOPIC}
    workload = Workload(replicated_stack.gateway, accounts=20, orders=1000 if LONG else 200, seed=5)
    try:
        await workload.open_accounts()
        await workload.place_orders()
        before = await check_invariants(workload, database_url)
        assert before.get("REFUNDED", 0) > 0 and before["CANCELLED"] > 0, before
        # Settled: every event so far is consumed, so the snapshots below are the final state.
        for topic, groups in topics.items():
            await wait_consumed(kafka, topic, groups)
        api_before = await api_snapshot(workload)
        tables_before = await table_snapshot(database_url)

        originals = {topic: await read_all(kafka, topic) for topic in topics}
        # Every order produced CREATED (+ CANCELLED when refunded), and a payment result each.
        assert len(originals[env["ORDER_EVENT_TOPIC"]]) >= before["orders"], originals.keys()
        assert len(originals[env["PAYMENT_EVENT_TOPIC"]]) >= before["orders"]
        for records in originals.values():
            assert await publish_copies(kafka, records) == len(records)
        for topic, groups in topics.items():
            ends = await wait_consumed(kafka, topic, groups)
            assert sum(ends.values()) >= 2 * len(originals[topic]), (topic, ends)

        # Everything the copies could have touched is committed by now (offsets come after the
        # database commit); billing could only have reacted by adding inbox rows, caught below.
        assert await table_snapshot(database_url) == tables_before
        assert await api_snapshot(workload) == api_before
        # The copies were recognised as duplicates and dropped, not rejected as bad messages.
        for topic in topics:
            dead = await read_all(kafka, f"{topic}.dlt")
            assert not dead, f"{len(dead)} copies dead-lettered, e.g. {dead[0].headers}"
        # Billing published nothing in answer to the copies.
        payment_topic = env["PAYMENT_EVENT_TOPIC"]
        assert len(await read_all(kafka, payment_topic)) == 2 * len(originals[payment_topic])

        # The consumers are still at work: more orders after the copies all complete.
        workload.order_count = 40
        await workload.place_orders()
        after = await check_invariants(workload, database_url)
    finally:
        await workload.close()
    assert after["orders"] == before["orders"] + 40
    print(f"redelivery: {before} then {after}")

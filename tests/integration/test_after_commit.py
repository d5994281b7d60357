"""`shared.db.transaction`/`after_commit`: what the metrics count follows only a commit that
happened, once, however many times the transaction had to be run (README, "Metrics")."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orbilnot.billing.handlers import open_account, process_batch, receive_order_events
from orbilnot.model import OrderEvent, OrderEventType
from orbilnot.shared.db import after_commit, savepoint, transaction
from orbilnot.shared.retry import in_transaction


async def test_callbacks_run_after_the_commit_and_not_after_a_rollback(engine: AsyncEngine) -> None:
    ran: list[str] = []
    async with transaction(engine) as conn:
        await conn.execute(text("SELECT 1"))
        after_commit(conn, lambda: ran.append("committed"))
        assert ran == []  # not before the commit
    assert ran == ["committed"]

    with pytest.raises(RuntimeError):
        async with transaction(engine) as conn:
            after_commit(conn, lambda: ran.append("rolled back"))
            raise RuntimeError("the handler failed")
    assert ran == ["committed"]


async def test_a_savepoint_rolled_back_forgets_what_was_registered_inside_it(engine: AsyncEngine) -> None:
    """What the consumers' per-event savepoints rely on: a parked event's undone work is not counted."""
    ran: list[str] = []
    async with transaction(engine) as conn:
        after_commit(conn, lambda: ran.append("before"))
        with pytest.raises(RuntimeError):
            async with savepoint(conn):
                after_commit(conn, lambda: ran.append("undone"))
                raise RuntimeError("this event failed on its own")
        async with savepoint(conn):
            after_commit(conn, lambda: ran.append("kept"))
    assert ran == ["before", "kept"]


async def test_a_failed_commit_runs_nothing(engine: AsyncEngine) -> None:
    ran: list[str] = []
    with pytest.raises(DBAPIError):
        async with transaction(engine) as conn:
            # A deferred constraint fails at COMMIT, after everything in the block went well.
            await conn.execute(text("CREATE TEMP TABLE t (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED)"))
            await conn.execute(text("INSERT INTO t VALUES (1), (1)"))
            after_commit(conn, lambda: ran.append("counted"))
    assert ran == []


async def test_a_retried_transaction_counts_the_attempt_that_committed_once(engine: AsyncEngine) -> None:
    ran: list[int] = []
    attempts = 0

    async def work(conn: AsyncConnection) -> None:
        nonlocal attempts
        attempts += 1
        after_commit(conn, lambda: ran.append(attempts))
        if attempts == 1:  # a serialization failure, as PostgreSQL raises it
            await conn.execute(text("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$"))

    await in_transaction(engine, work, what="test")
    assert attempts == 2 and ran == [2]


async def test_outside_a_transaction_of_ours_nothing_is_kept(engine: AsyncEngine) -> None:
    ran: list[str] = []
    async with engine.begin() as conn:
        after_commit(conn, lambda: ran.append("dropped"))
    # …and the pooled connection carries nothing over to the next transaction that uses it.
    async with transaction(engine) as conn:
        pass
    await asyncio.sleep(0)
    assert ran == []


# -- billing's processor: each decision counted once ----------------------------------------------


def decisions(outcome: str) -> float:
    return REGISTRY.get_sample_value("orbilnot_decision_latency_seconds_count", {"outcome": outcome}) or 0.0


async def fail_ledger_writes_for(engine: AsyncEngine, order_number: str, sqlstate: str, times: int) -> None:
    """Writing this order's ledger entry fails with `sqlstate`, the first `times` times."""
    async with engine.begin() as conn:
        await conn.execute(text("CREATE SEQUENCE billing.injected_failures"))
        await conn.execute(
            text(f"""
            CREATE FUNCTION billing.inject_failure() RETURNS trigger AS $$
            BEGIN
              IF NEW.order_number = '{order_number}' AND nextval('billing.injected_failures') <= {times} THEN
                RAISE EXCEPTION 'injected failure' USING ERRCODE = '{sqlstate}';
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


async def orders_received(engine: AsyncEngine, *amounts: int) -> list[OrderEvent]:
    async with engine.begin() as conn:
        account = await open_account(conn, Decimal(100))
        events = [
            OrderEvent(
                event_id=uuid.uuid4(), event_type=OrderEventType.CREATED, account_id=account,
                order_number=f"{account}:{uuid.uuid4()}", amount=Decimal(amount), occurred_at=datetime.now(UTC),
            )
            for amount in amounts
        ]  # fmt: skip
        for event in events:
            await receive_order_events(conn, [event])
    return events


@pytest.mark.parametrize(
    ("sqlstate", "times", "expected"),
    [
        # The batch fails on one event of its own: decided again one by one, that one parked.
        ("P0001", 1000, {"confirmed": 2, "denied": 1, "parked": 1}),
        # A serialization failure: the whole transaction runs again, nothing parked.
        ("40001", 1, {"confirmed": 3, "denied": 1, "parked": 0}),
    ],
    ids=["batch-decided-again-one-by-one", "transaction-run-again"],
)
async def test_each_decision_is_counted_once_however_often_its_batch_ran(
    engine: AsyncEngine, sqlstate: str, times: int, expected: dict[str, int]
) -> None:
    before = {outcome: decisions(outcome) for outcome in expected}
    # 10, 20 and 30 are paid from the 100 (unless parked); 500 is more than is left: denied.
    culprit = (await orders_received(engine, 10, 20, 30, 500))[1]
    await fail_ledger_writes_for(engine, culprit.order_number, sqlstate, times)

    assert await process_batch(engine, 50, topic="payment.event") == 4

    assert {outcome: decisions(outcome) - before[outcome] for outcome in expected} == expected


def parked_by_billing() -> float:
    return REGISTRY.get_sample_value("orbilnot_parked_events_total", {"service": "billing"}) or 0.0


async def test_an_event_parked_by_a_transaction_run_again_is_counted_once(engine: AsyncEngine) -> None:
    """The processor parks the culprit, then a serialization failure on a later event of the
    batch runs the whole transaction again, which parks it again: one event, counted once."""
    before, parked_before = decisions("parked"), parked_by_billing()
    events = await orders_received(engine, 10, 20, 30)
    culprit, later = events[1], events[2]
    await fail_ledger_writes_for(engine, culprit.order_number, "P0001", 1000)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE SEQUENCE billing.injected_conflicts"))
        await conn.execute(
            text(f"""
            CREATE FUNCTION billing.inject_conflict() RETURNS trigger AS $$
            BEGIN
              IF NEW.value LIKE '%{later.order_number}%' AND nextval('billing.injected_conflicts') <= 1 THEN
                RAISE EXCEPTION 'injected conflict' USING ERRCODE = '40001';
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql""")
        )
        await conn.execute(
            text(
                "CREATE TRIGGER inject_conflict BEFORE INSERT ON billing.outbox "
                "FOR EACH ROW EXECUTE FUNCTION billing.inject_conflict()"
            )
        )

    assert await process_batch(engine, 50, topic="payment.event") == 3

    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT last_value FROM billing.injected_conflicts")) >= 2, "ran again"
    assert decisions("parked") - before == 1
    assert parked_by_billing() - parked_before == 1

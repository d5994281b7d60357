"""`DirectStatement` (shared/db.py) on a real PostgreSQL: a statement run by asyncpg itself on a
pooled connection behaves as SQLAlchemy running it would — its values, its errors, what becomes of
a connection that died or was cancelled mid-statement — and placing an order that way keeps the
idempotency-key rules."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Integer, event, func, literal, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql import bindparam

from orbilnot.order import handlers
from orbilnot.order.handlers import place_order
from orbilnot.order.tables import orders, outbox
from orbilnot.shared.db import DirectStatement, is_connection_problem
from orbilnot.shared.errors import Conflict
from support import eventually


async def test_values_go_through_the_statements_own_types(engine: AsyncEngine) -> None:
    statement = DirectStatement(
        select(
            (bindparam("document", type_=JSONB)["a"].as_integer() + bindparam("n", type_=Integer) + literal(10)).label(
                "total"
            )
        )
    )
    assert await statement.scalar(engine, {"document": {"a": 1}, "n": 2}) == 13
    async with engine.connect() as conn:  # the same through SQLAlchemy, in a caller's connection
        assert await statement.scalar(conn, {"document": {"a": 1}, "n": 2}) == 13


async def test_an_error_is_raised_as_sqlalchemy_raises_it(engine: AsyncEngine) -> None:
    statement = DirectStatement(select(literal(1, Integer) / bindparam("divisor", type_=Integer)))
    async with engine.connect() as conn:
        with pytest.raises(DBAPIError) as through_sqlalchemy:
            await conn.scalar(statement.statement, {"divisor": 0})
    with pytest.raises(DBAPIError) as direct:
        await statement.scalar(engine, {"divisor": 0})
    assert type(direct.value) is type(through_sqlalchemy.value)
    assert type(direct.value.orig) is type(through_sqlalchemy.value.orig)
    assert direct.value.orig.sqlstate == "22012"  # type: ignore[union-attr]
    assert not direct.value.connection_invalidated and not is_connection_problem(direct.value)
    assert await statement.scalar(engine, {"divisor": 1}) == 1  # the connection is still good


async def test_a_dead_connection_is_a_connection_problem_and_the_pool_starts_afresh(database_url: str) -> None:
    name = f"direct-{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(
        database_url, pool_size=3, connect_args={"server_settings": {"application_name": name}}
    )
    statement = DirectStatement(select(bindparam("n", type_=Integer)))
    try:
        # Three connections in the pool, then PostgreSQL restarts under them, as it were.
        assert await asyncio.gather(*(statement.scalar(engine, {"n": n}) for n in range(3))) == [0, 1, 2]
        async with create_async_engine(database_url).connect() as admin:
            killed = await admin.scalar(
                text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": name},
            )
        assert killed == 3
        with pytest.raises(DBAPIError) as died:
            await statement.scalar(engine, {"n": 7})
        assert died.value.connection_invalidated and is_connection_problem(died.value)
        # The other two died too; like SQLAlchemy, the first failure recycled every connection as
        # old as the one that failed, so no later statement meets one of them.
        assert await asyncio.gather(*(statement.scalar(engine, {"n": n}) for n in range(3))) == [0, 1, 2]
    finally:
        await engine.dispose()


async def test_a_statement_cancelled_midway_leaves_the_pool_serving(database_url: str) -> None:
    engine = create_async_engine(database_url, pool_size=1, max_overflow=0)
    try:
        sleep = DirectStatement(select(func.pg_sleep(bindparam("s", type_=Integer)), literal(1)))
        task = asyncio.create_task(sleep.scalar(engine, {"s": 30}))

        async def sleeping() -> int:
            async with create_async_engine(database_url).connect() as admin:
                return int(
                    await admin.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep%$1%'"))
                    or 0
                )

        await eventually(sleeping, lambda n: n > 0, what="the statement running")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The pool's only connection was busy with the sleep: dropped (as SQLAlchemy does on an exit
        # exception), and a new one serves.
        one = DirectStatement(select(bindparam("n", type_=Integer)))
        assert await asyncio.wait_for(one.scalar(engine, {"n": 1}), timeout=10) == 1
    finally:
        await engine.dispose()


async def test_an_engine_whose_statements_are_watched_runs_them_through_sqlalchemy(engine: AsyncEngine) -> None:
    """Tracing's SQLAlchemy instrumentation listens to every statement for its spans."""
    seen: list[str] = []

    def watch(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", watch)
    try:
        assert await DirectStatement(select(bindparam("n", type_=Integer))).scalar(engine, {"n": 5}) == 5
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", watch)
    assert len(seen) == 1


async def test_an_order_placed_on_the_engine_keeps_the_idempotency_rules(engine: AsyncEngine) -> None:
    account, topic = uuid.uuid4(), "order.event"
    first = await place_order(engine, account, Decimal("10.50"), "key-1", topic=topic)
    assert await place_order(engine, account, Decimal("10.50"), "key-1", topic=topic) == first
    with pytest.raises(Conflict):
        await place_order(engine, account, Decimal("11"), "key-1", topic=topic)
    # Two identical requests at once: one order, both answered its id.
    twins = await asyncio.gather(*(place_order(engine, account, Decimal(3), "key-2", topic=topic) for _ in range(2)))
    assert twins[0] == twins[1]
    other = await place_order(engine, uuid.uuid4(), Decimal("10.50"), "key-1", topic=topic)
    assert other != first  # another account's key never matches
    async with engine.connect() as conn:
        placed = (await conn.execute(select(orders.c.id, orders.c.amount, orders.c.status))).all()
        events = await conn.scalar(select(func.count()).select_from(outbox))
    assert sorted((row.amount, row.status) for row in placed) == [
        (Decimal(3), "NEW"),
        (Decimal("10.50"), "NEW"),
        (Decimal("10.50"), "NEW"),
    ]
    assert events == 3


async def test_orders_placed_at_once_are_placed_together_and_one_that_fails_fails_alone(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups: list[int] = []
    place_together = handlers._PLACE_ORDERS.column

    async def counted(db: AsyncEngine, parameters: dict[str, Any]) -> list[Any]:
        groups.append(len(parameters["order_id"]))
        return await place_together(db, parameters)

    monkeypatch.setattr(handlers._PLACE_ORDERS, "column", counted)
    first, second, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    topic = "order.event"
    results = await asyncio.gather(
        place_order(engine, first, Decimal(1), topic=topic),
        place_order(engine, first, Decimal(2), topic=topic),
        place_order(engine, second, Decimal(3), "key", topic=topic),
        place_order(engine, second, Decimal(3), "key", topic=topic),  # the same request twice
        place_order(engine, other, Decimal(7), "nul\x00", topic=topic),  # text PostgreSQL refuses
        return_exceptions=True,
    )
    assert groups == [5]  # one statement for all (which failed on the last), then each alone
    assert isinstance(results[4], DBAPIError) and not is_connection_problem(results[4])
    assert results[2] == results[3] and not isinstance(results[2], BaseException)

    groups.clear()
    later = await asyncio.gather(*(place_order(engine, first, Decimal(n), topic=topic) for n in (4, 5, 6)))
    assert groups == [3] and len(set(later)) == 3
    async with engine.connect() as conn:
        placed = (
            await conn.execute(
                select(orders.c.id, orders.c.amount).where(orders.c.account_id == first).order_by(orders.c.seq)
            )
        ).all()
        published = list(
            await conn.scalars(select(outbox.c.value).where(outbox.c.key == str(first)).order_by(outbox.c.id))
        )
        others = await conn.scalar(select(func.count()).select_from(orders).where(orders.c.account_id != first))
    # One account's orders are numbered, and their events queued, in the order they were placed.
    assert [row.amount for row in placed] == [1, 2, 4, 5, 6]
    assert [json.loads(value)["amount"] for value in published] == [1, 2, 4, 5, 6]
    assert [row.id for row in placed][2:] == later
    assert others == 1  # the twice-sent request's one order; the failed one placed nothing


TOPIC = "order.event"


async def test_a_group_whose_answer_was_lost_after_it_committed_answers_what_committed(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The group's statement commits, then its answer is lost (the connection breaks). The orders
    are answered with their ids, as committed, and none is placed a second time (which met its own
    id in the primary key and answered a 500 for an order that exists)."""
    place_group = handlers._PLACE_ORDERS.column

    async def committed_then_lost(db: AsyncEngine, parameters: dict[str, Any]) -> list[Any]:
        await place_group(db, parameters)
        raise ConnectionResetError("the connection broke before the answer")

    monkeypatch.setattr(handlers._PLACE_ORDERS, "column", committed_then_lost)
    accounts = [uuid.uuid4() for _ in range(3)]
    answers = await asyncio.gather(*(place_order(engine, a, Decimal(5), topic=TOPIC) for a in accounts))
    async with engine.connect() as conn:
        placed = dict((await conn.execute(select(orders.c.account_id, orders.c.id))).all())
    assert {placed[a] for a in accounts} == set(answers)


async def test_a_group_that_got_no_answer_and_committed_nothing_answers_the_error_to_each(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No answer and nothing committed: each order gets the connection error (a 503, retried by a
    client with its Idempotency-Key), as one order alone would; none is placed behind its back."""

    async def lost(db: AsyncEngine, parameters: dict[str, Any]) -> list[Any]:
        raise ConnectionResetError("the connection broke before the answer")

    monkeypatch.setattr(handlers._PLACE_ORDERS, "column", lost)
    answers = await asyncio.gather(
        *(place_order(engine, uuid.uuid4(), Decimal(5), topic=TOPIC) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(answer, ConnectionResetError) and is_connection_problem(answer) for answer in answers)
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(orders)) == 0


async def test_a_group_holds_at_most_max_group_orders(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each account's turn is an advisory lock in PostgreSQL's cluster-wide lock table: one group
    of thousands of accounts filled it and failed other sessions' transactions. Orders past the
    cap form the next group."""
    monkeypatch.setattr(handlers, "MAX_GROUP", 3)
    place_group = handlers._PLACE_ORDERS.column
    sizes: list[int] = []

    async def counted(db: AsyncEngine, parameters: dict[str, Any]) -> list[Any]:
        sizes.append(len(parameters["turns"]))
        return await place_group(db, parameters)

    monkeypatch.setattr(handlers._PLACE_ORDERS, "column", counted)
    answers = await asyncio.gather(*(place_order(engine, uuid.uuid4(), Decimal(5), topic=TOPIC) for _ in range(8)))
    assert len(set(answers)) == 8
    assert sizes and max(sizes) <= 3 and sum(sizes) >= 6  # two groups of 3 (and one of 2, placed alone)
    async with engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(orders)) == 8


async def test_a_groups_statement_belongs_to_no_single_request(engine: AsyncEngine) -> None:
    """The group's statement is all its requests': it runs in a context of its own, not the first
    request's (whose trace and request id it used to carry); an order placed alone keeps its own."""
    from orbilnot.shared.observability import request_id_var

    seen: list[str | None] = []

    def watch(*args: Any) -> None:
        seen.append(request_id_var.get())

    async def request(request_id: str) -> uuid.UUID:
        request_id_var.set(request_id)
        return await place_order(engine, uuid.uuid4(), Decimal(5), topic=TOPIC)

    event.listen(engine.sync_engine, "before_cursor_execute", watch)  # (the SQLAlchemy path)
    try:
        await asyncio.gather(*(request(f"request-{n}") for n in (1, 2, 3)))
        assert seen == [None]
        seen.clear()
        await request("alone")
        assert seen == ["alone"]
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", watch)


async def test_a_connection_handed_back_is_closed_when_the_pool_keeps_it_no_more(database_url: str) -> None:
    """Handing a connection back may close it (an overflow connection): that awaits, so it has to
    happen inside SQLAlchemy's greenlet, else the pool drops it without closing it."""
    name = f"overflow-{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(
        database_url, pool_size=1, max_overflow=5, connect_args={"server_settings": {"application_name": name}}
    )
    admin = create_async_engine(database_url)
    sleep = DirectStatement(select(func.pg_sleep(0.2), bindparam("n", type_=Integer)))

    async def backends() -> int:
        async with admin.connect() as conn:
            found = await conn.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"), {"name": name}
            )
            return int(found or 0)

    try:
        await asyncio.gather(*(sleep.scalar(engine, {"n": n}) for n in range(6)))
        await eventually(backends, lambda count: count == 1, what="the overflow connections closed")
    finally:
        await engine.dispose()
        await admin.dispose()

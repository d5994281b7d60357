"""Keyset pages and a writer that commits out of order (issue 8).

A page ends at the last row it shows, and the next page starts after it. If a row numbered before
that end could still commit afterwards, the next page would never show it. These tests hold one
writer's transaction open while a second writer of the same account commits and a reader takes
the first page: the held row must still come, exactly once, on a later page.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import literal, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orbilnot.model import PaymentEvent, PaymentEventType, order_number_of
from orbilnot.notification.handlers import list_notifications, store_notifications
from orbilnot.order.handlers import ORDERS_LIST, list_orders, place_order
from orbilnot.shared.pagination import Page, account_list_key, account_list_turn
from support import eventually


async def _blocked_or_done(engine: AsyncEngine, task: asyncio.Task[Any]) -> bool:
    """The second writer either committed, or waits for a lock the first one holds."""
    if task.done():
        return True
    async with engine.connect() as conn:
        waiting = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        )
    return bool(waiting)


async def _check_out_of_order_commit(
    engine: AsyncEngine,
    write: Callable[[AsyncConnection], Awaitable[Any]],
    read: Callable[[AsyncConnection, int | None], Awaitable[Page[Any]]],
    key: Callable[[Any], Any],
) -> None:
    async with engine.begin() as conn:
        await write(conn)
    held = await engine.connect()
    await held.begin()
    try:
        await write(held)  # numbered before the next writer's row, committed after it

        async def second_writer() -> None:
            async with engine.begin() as conn:
                await write(conn)

        second = asyncio.create_task(second_writer())
        await eventually(lambda: _blocked_or_done(engine, second), bool, what="second writer committed or waiting")
        async with engine.connect() as conn:
            first_page = await read(conn, None)
        await held.commit()
    finally:
        await held.close()
    await second
    # A client polling for what came since resumes after the last row it was shown.
    async with engine.connect() as conn:
        rest = await read(conn, first_page.after)
    seen = [key(item) for item in (*first_page.items, *rest.items)]
    assert len(seen) == len(set(seen)), f"repeated: {seen}"
    assert len(seen) == 3, f"skipped: only {seen}"


async def test_an_order_committed_late_is_on_a_later_page(engine: AsyncEngine) -> None:
    account = uuid.uuid4()

    async def write(conn: AsyncConnection) -> None:
        await place_order(conn, account, Decimal(1), topic="order.event")

    async def read(conn: AsyncConnection, after: int | None) -> Page[Any]:
        return await list_orders(conn, account, limit=2, after=after)

    await _check_out_of_order_commit(engine, write, read, key=lambda order: order.id)


async def test_a_notification_committed_late_is_on_a_later_page(engine: AsyncEngine) -> None:
    account = uuid.uuid4()

    async def write(conn: AsyncConnection) -> None:
        event = PaymentEvent(
            event_id=uuid.uuid4(),
            payment_event_type=PaymentEventType.PAYMENT_CONFIRMED,
            account_id=account,
            order_number=order_number_of(account, uuid.uuid4()),
            amount=Decimal(1),
            description="",
            occurred_at=datetime.now(UTC),
        )
        await store_notifications(conn, [event])

    async def read(conn: AsyncConnection, after: int | None) -> Page[Any]:
        return await list_notifications(conn, account, limit=2, after=after)

    await _check_out_of_order_commit(engine, write, read, key=lambda notice: notice.id)


async def test_an_order_draws_its_number_only_once_it_has_its_accounts_turn(engine: AsyncEngine) -> None:
    """The turn must come before the number, or two writers could draw 2 and 3, the one with 3
    take the turn and commit first, and a reader resume after 3 before 2 is committed."""
    account = uuid.uuid4()
    numbers_drawn = text("SELECT last_value FROM pg_sequences WHERE sequencename = 'orders_seq_seq'")
    turn = await engine.connect()
    await turn.begin()
    try:
        # Another writer of this account holds its turn.
        await turn.execute(select(account_list_turn(literal(account_list_key(ORDERS_LIST, account)))))
        async with engine.connect() as conn:
            before = await conn.scalar(numbers_drawn)

        async def writer() -> None:
            async with engine.begin() as conn:
                await place_order(conn, account, Decimal(1), topic="order.event")

        waiting = asyncio.create_task(writer())
        await eventually(lambda: _blocked_or_done(engine, waiting), bool, what="the writer waits for its turn")
        assert not waiting.done()
        async with engine.connect() as conn:
            assert await conn.scalar(numbers_drawn) == before, "a number was drawn before the turn"
    finally:
        await turn.rollback()
        await turn.close()
    await waiting


async def test_orders_placed_together_draw_their_numbers_only_once_they_have_their_accounts_turns(
    engine: AsyncEngine,
) -> None:
    """The same for a group of orders placed at once (`handlers._Placements`): one statement,
    whose turns of all its accounts come before any of its orders draws a number."""
    account, other = uuid.uuid4(), uuid.uuid4()
    numbers_drawn = text("SELECT last_value FROM pg_sequences WHERE sequencename = 'orders_seq_seq'")
    turn = await engine.connect()
    await turn.begin()
    try:
        await turn.execute(select(account_list_turn(literal(account_list_key(ORDERS_LIST, account)))))
        async with engine.connect() as conn:
            before = await conn.scalar(numbers_drawn)
        waiting = asyncio.ensure_future(
            asyncio.gather(*(place_order(engine, owner, Decimal(1), topic="order.event") for owner in (other, account)))
        )
        await eventually(lambda: _blocked_or_done(engine, waiting), bool, what="the group waits for its turn")
        assert not waiting.done()
        async with engine.connect() as conn:
            assert await conn.scalar(numbers_drawn) == before, "a number was drawn before the turn"
    finally:
        await turn.rollback()
        await turn.close()
    assert len(set(await waiting)) == 2

"""`shared.db.transaction`/`after_commit`: what the metrics count follows only a commit that
happened, once, however many times the transaction had to be run (README, "Metrics")."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orbilnot.shared.db import after_commit, transaction
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

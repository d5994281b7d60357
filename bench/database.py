"""What the benchmark reads from the database: each order's own timestamps, written by the services
(so the stages are timed by the system's clock, not the load generator's), and pg_stat_statements.

Every query here carries the `/* bench */` comment, which pg_stat_statements keeps in the text, so
the benchmark's own statements are left out of the statement profile.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg

MARK = "/* bench */"


@dataclass(frozen=True)
class OrderStages:
    """Seconds since the epoch at which the services recorded each step of one order."""

    created: float  # order service: the order committed (orders.created_at)
    decided: float  # billing: payment decided (order_events.processed_at)
    notified: float  # notification service: the notification committed (notifications.created_at)


# created_at, processed_at and notifications.created_at are now() in the transaction that wrote
# them: the moment each step began to commit, on the database's clock.
_STAGES = f"""{MARK}
    SELECT extract(epoch FROM o.created_at)::float8,
           extract(epoch FROM e.processed_at)::float8,
           extract(epoch FROM n.created_at)::float8
    FROM order_service.orders o
    JOIN billing.order_events e ON e.order_number = o.order_number AND e.event_type = 'CREATED'
    JOIN notification_service.notifications n ON n.order_number = o.order_number
    WHERE o.id = ANY($1::uuid[])"""


async def notification_count(db: asyncpg.Connection) -> int:
    return int(await db.fetchval(f"{MARK} SELECT count(*) FROM notification_service.notifications"))


async def wait_notified(db: asyncpg.Connection, baseline: int, expected: int, timeout_s: float) -> int:
    """Poll until `expected` notifications were added since `baseline` (or the deadline); returns
    how many were. Polling: nothing in the database announces a commit to an outside reader."""
    deadline = time.monotonic() + timeout_s
    while True:
        added = await notification_count(db) - baseline
        if added >= expected or time.monotonic() > deadline:
            return added
        await asyncio.sleep(0.1)


async def order_stages(db: asyncpg.Connection, order_ids: list[str]) -> list[OrderStages]:
    rows = await db.fetch(_STAGES, order_ids)
    return [OrderStages(*row) for row in rows]


async def transactions_committed(db: asyncpg.Connection) -> int:
    return int(await db.fetchval(f"{MARK} SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))


async def reset_statements(db: asyncpg.Connection) -> None:
    await db.execute(f"{MARK} SELECT pg_stat_statements_reset()")


@dataclass(frozen=True)
class StatementStats:
    query: str
    calls: int
    total_ms: float
    mean_ms: float
    rows: int


async def top_statements(db: asyncpg.Connection, limit: int = 12) -> tuple[list[StatementStats], int]:
    """The statements that took the most execution time since the last reset, and the number of
    calls of all statements (the benchmark's own excluded)."""
    rows = await db.fetch(
        f"""{MARK}
        SELECT query, calls, total_exec_time, mean_exec_time, rows
        FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND query NOT LIKE '%/* bench */%'
        ORDER BY total_exec_time DESC"""
    )
    stats = [StatementStats(" ".join(r[0].split()), r[1], r[2], r[3], r[4]) for r in rows]
    return stats[:limit], sum(s.calls for s in stats)

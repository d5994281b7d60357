"""The relay: publishes what a service recorded in its outbox, and marks it published.

This is the outbox half of the saga, written once, for the one outbox table of each schema
(`shared/outbox.py`). A batch goes like this:

1. **Claim and record the attempt, and commit**: `UPDATE … SET attempts = attempts + 1,
   claimed_until = now() + lease WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)`, plus whatever
   the service must record in the same transaction (`on_attempt`: the order service moves the
   orders NEW → SENT). From this commit on, the rows say "may be out": no service code can mistake
   them for events never sent, whatever happens to this relay afterwards.
2. **Send** every message and wait for the broker's acks (acks=all, idempotent producer). No
   database transaction is open meanwhile; the lease keeps other replicas off these rows.
3. **Mark them published** (`published_at`) in a second transaction.

A crash, a send timeout or a failed commit anywhere leaves the rows unpublished: once the lease
runs out they are sent again with the same event ids, and consumers drop the copies. Nothing is
marked published that the broker did not acknowledge, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Row, Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orbilnot.shared.kafka import ProducerHandle
from orbilnot.shared.retry import in_transaction
from orbilnot.shared.worker import Worker

log = logging.getLogger(__name__)

PUBLISHED = Counter("orbilnot_relay_published_total", "Messages the relay published", ["source"])

OnAttempt = Callable[[AsyncConnection, Sequence[Row[Any]]], Awaitable[None]]
"""Called in the claim's transaction with the claimed outbox rows, before anything is sent."""


class OutboxRelay:
    SEND_TIMEOUT_S = 10.0
    # Longer than a send may take: a relay still sending keeps its rows; a dead one lets go.
    LEASE = timedelta(seconds=SEND_TIMEOUT_S + 5)

    def __init__(
        self,
        name: str,
        outbox: Table,
        *,
        engine: AsyncEngine,
        producer: ProducerHandle,
        batch_size: int,
        poll_interval_s: float,
        on_attempt: OnAttempt | None = None,
    ) -> None:
        self.name = name
        self._outbox = outbox
        self._engine = engine
        self._producer = producer
        self._batch_size = batch_size
        self._on_attempt = on_attempt
        self.worker = Worker(f"relay:{name}", self.publish_batch, poll_interval_s=poll_interval_s)

    def wake(self) -> None:
        """Called right after a commit that created something to publish."""
        self.worker.wake()

    async def publish_batch(self) -> bool:
        """Publish one batch; True when the batch was full and more may be waiting."""
        tracker = self.worker.tracker
        rows = await in_transaction(self._engine, self._claim, what=f"relay {self.name}: claim", tracker=tracker)
        if not rows:
            return False
        try:
            await self._send(rows)
        except BaseException:
            # Nothing is marked published. Let the rows go at once (not after the lease), so the
            # worker's own backoff decides when to try again.
            with contextlib.suppress(Exception):
                await self._release(rows)
            raise
        ids = [row.id for row in rows]
        await in_transaction(
            self._engine, lambda conn: self._mark_published(conn, ids), what=f"relay {self.name}: mark", tracker=tracker
        )
        PUBLISHED.labels(self.name).inc(len(rows))
        return len(rows) == self._batch_size

    async def _claim(self, conn: AsyncConnection) -> Sequence[Row[Any]]:
        outbox = self._outbox
        claimable = (
            select(outbox.c.id)
            .where(
                outbox.c.published_at.is_(None),
                (outbox.c.claimed_until.is_(None)) | (outbox.c.claimed_until < func.now()),
            )
            .order_by(outbox.c.id)
            .limit(self._batch_size)
            .with_for_update(skip_locked=True)
        )
        claimed = (
            await conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(claimable.scalar_subquery()))
                .values(attempts=outbox.c.attempts + 1, claimed_until=func.now() + self.LEASE)
                .returning(
                    outbox.c.id, outbox.c.event_id, outbox.c.topic, outbox.c.key, outbox.c.value, outbox.c.headers
                )
            )
        ).all()
        rows = sorted(claimed, key=lambda row: row.id)  # RETURNING keeps no order; the outbox's is ours
        if rows and self._on_attempt is not None:
            await self._on_attempt(conn, rows)
        return rows

    async def _send(self, rows: Sequence[Row[Any]]) -> None:
        # send() only enqueues; the returned futures resolve when the broker acknowledges. A broker
        # that does not answer must not hold the batch for ever: give up and let the worker retry.
        async with asyncio.timeout(self.SEND_TIMEOUT_S):
            producer = self._producer.producer
            acks = [
                await producer.send(
                    row.topic,
                    value=row.value.encode(),
                    key=row.key.encode(),
                    headers=[(name, str(value).encode()) for name, value in row.headers.items()] or None,
                )
                for row in rows
            ]
            await asyncio.gather(*acks)

    async def _mark_published(self, conn: AsyncConnection, ids: list[int]) -> None:
        await conn.execute(
            update(self._outbox).where(self._outbox.c.id.in_(ids)).values(published_at=func.now(), claimed_until=None)
        )

    async def _release(self, rows: Sequence[Row[Any]]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(self._outbox)
                .where(self._outbox.c.id.in_([row.id for row in rows]), self._outbox.c.published_at.is_(None))
                .values(claimed_until=None)
            )

"""The relay: publishes what a service recorded in its database, and marks it published.

This is the outbox half of the saga, written once. A service plugs in an `OutboxSource` — which
rows owe a message, what that message is, and what "published" means for those rows — and the
relay does the rest:

1. claim a batch with `SELECT … FOR UPDATE SKIP LOCKED`, so replicas never take the same rows;
2. hand every message to the producer and wait for the broker's acks (acks=all, idempotent);
3. mark the rows published in the same transaction that holds their locks, and commit.

A crash anywhere before step 3 commits leaves the rows unpublished: they go out again with the
same event id, and consumers drop the copy. Nothing is marked published that the broker did not
take, so nothing is lost; at worst something is delivered twice, which consumers are built for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orbilnot.shared.kafka import ProducerHandle
from orbilnot.shared.worker import Worker

log = logging.getLogger(__name__)

PUBLISHED = Counter("orbilnot_relay_published_total", "Messages the relay published", ["source"])

Row = TypeVar("Row")


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    topic: str
    key: bytes
    value: bytes


class OutboxSource(Protocol, Generic[Row]):
    """What one service publishes: which rows, as which messages, and how to mark them sent."""

    name: str

    async def claim(self, conn: AsyncConnection, limit: int) -> Sequence[Row]:
        """Lock up to `limit` rows that still owe a message (`FOR UPDATE SKIP LOCKED`)."""
        ...

    def message(self, row: Row) -> OutgoingMessage: ...

    async def mark_published(self, conn: AsyncConnection, rows: Sequence[Row]) -> None: ...


class OutboxRelay(Generic[Row]):
    SEND_TIMEOUT_S = 20.0

    def __init__(
        self,
        source: OutboxSource[Row],
        *,
        engine: AsyncEngine,
        producer: ProducerHandle,
        batch_size: int,
        poll_interval_s: float,
    ) -> None:
        self.source = source
        self._engine = engine
        self._producer = producer
        self._batch_size = batch_size
        self.worker = Worker(f"relay:{source.name}", self.publish_batch, poll_interval_s=poll_interval_s)

    def wake(self) -> None:
        """Called right after a commit that created something to publish."""
        self.worker.wake()

    async def publish_batch(self) -> bool:
        """Publish one batch; True when the batch was full and more may be waiting."""
        async with self._engine.begin() as conn:
            rows = await self.source.claim(conn, self._batch_size)
            if not rows:
                return False
            messages = [self.source.message(row) for row in rows]
            # send() only enqueues; the returned futures resolve when the broker acknowledges.
            # A broker that does not answer must not hold the rows' locks for ever: give up,
            # roll back, and let the worker retry the whole batch.
            async with asyncio.timeout(self.SEND_TIMEOUT_S):
                producer = self._producer.producer
                acks = [await producer.send(m.topic, value=m.value, key=m.key) for m in messages]
                await asyncio.gather(*acks)
            await self.source.mark_published(conn, rows)
        PUBLISHED.labels(self.source.name).inc(len(rows))
        return len(rows) == self._batch_size

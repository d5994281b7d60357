"""The relay: publishes what a service recorded in its outbox, and marks it published.

This is the outbox half of the saga, written once, for the one outbox table of each schema
(`shared/outbox.py`). A relay with an `on_attempt` (the order service's) goes like this:

1. **Claim and record the attempt, and commit**: `UPDATE … SET attempts = attempts + 1,
   claimed_until = now() + lease WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)`, plus whatever
   the service must record in the same transaction (`on_attempt`: the order service moves the
   orders NEW → SENT). From this commit on, the rows say "may be out": no service code can mistake
   them for events never sent, whatever happens to this relay afterwards.
2. **Send** every message and wait for the broker's acks (acks=all, idempotent producer). No
   database transaction is open meanwhile; the lease keeps other replicas off these rows.
3. **Mark them published** (`published_at`) in a second transaction.

A relay without one (billing's: nothing of its service tells a sent event from an unsent one)
needs no commit before sending, so it does all three in ONE transaction: `SELECT … FOR UPDATE
SKIP LOCKED` (the row locks keep other replicas off the rows while it sends, as the lease
would), send and wait for the acks, then `UPDATE … SET published_at, attempts = attempts + 1`
and commit. That is one statement and one commit fewer per batch, and no second version of every
row (in `make bench`, billing's claim `UPDATE` was the costliest statement of the saga's
asynchronous part). Its rows keep `attempts = 0` until published; a relay that dies, or whose
commit fails, lets go of them at once (its transaction ends), and they are sent again.

A crash, a send timeout or a failed commit anywhere leaves the rows unpublished: once the lease
runs out (or the locks go) they are sent again with the same event ids, and consumers drop the
copies. Nothing is marked published that the broker did not acknowledge, so nothing is lost.

A message the broker refuses on its own (larger than the topic or a request takes, a record it
calls corrupt) would be refused again at every try and hold back every row behind it. Such a
refusal is told apart from the broker being away or slow by its error type (`REFUSED`), and a
message is blamed only when it is refused alone: the broker answers for a whole batch of a
partition, so when anything was refused, every message that failed is sent again one at a time
(those that failed otherwise too: the idempotent producer fails every later batch of that
partition after a refusal). One still refused is set aside (`refused_at` and `error` on its row,
`orbilnot_relay_refused_total`) in the transaction that marks the others published. Any other
error, for any row (when sent alone, if anything was refused), leaves all of them to be sent again.

Published rows are deleted once older than the retention, in bounded batches, at most once a
minute and only when the relay has caught up (`sweep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from aiokafka.errors import (
    CorruptRecordException,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from prometheus_client import Counter
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Row,
    Select,
    Table,
    any_,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Executable

from orbilnot.shared import tracing
from orbilnot.shared.db import transaction
from orbilnot.shared.kafka import ProducerHandle
from orbilnot.shared.retry import in_transaction
from orbilnot.shared.worker import Worker

log = logging.getLogger(__name__)

PUBLISHED = Counter("orbilnot_relay_published_total", "Messages the relay published", ["source"])
REFUSED_TOTAL = Counter(
    "orbilnot_relay_refused_total", "Messages the broker refused on their own, set aside unpublished", ["source"]
)
SWEPT = Counter("orbilnot_relay_swept_total", "Published outbox rows deleted after their retention", ["source"])

REFUSED = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError, CorruptRecordException)
"""Errors that say "not this message", whoever sends it and however often: no retry cures them.
(Not every non-retriable error: a topic the client may not write to refuses every message.)"""

OnAttempt = Callable[[AsyncConnection, Sequence[Row[Any]]], Awaitable[None]]
"""Called in the claim's transaction with the claimed outbox rows, before anything is sent."""


class OutboxRelay:
    SEND_TIMEOUT_S = 10.0
    # Longer than a send may take: a relay still sending keeps its rows; a dead one lets go.
    LEASE = timedelta(seconds=SEND_TIMEOUT_S + 5)
    SWEEP_EVERY_S = 60.0
    SWEEP_BATCHES = 10  # per sweep: a relay that sweeps is not publishing

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
        retention: timedelta | None = None,
        sweep_batch_size: int = 1000,
    ) -> None:
        self.name = name
        self._outbox = outbox
        self._engine = engine
        self._producer = producer
        self._batch_size = batch_size
        self._on_attempt = on_attempt
        self._retention = retention
        self._sweep_batch_size = sweep_batch_size
        self._next_sweep = 0.0
        self.worker = Worker(f"relay:{name}", self.publish_batch, poll_interval_s=poll_interval_s)
        # The statements of every batch, built once: building and cache-keying them anew for each
        # batch was a visible share of a relay's CPU.
        message = (outbox.c.id, outbox.c.event_id, outbox.c.topic, outbox.c.key, outbox.c.value, outbox.c.headers)

        def claimable(*columns: Column[Any]) -> Select[Any]:
            return (
                select(*columns)
                .where(
                    outbox.c.published_at.is_(None),
                    outbox.c.refused_at.is_(None),
                    (outbox.c.claimed_until.is_(None)) | (outbox.c.claimed_until < func.now()),
                )
                .order_by(outbox.c.id)
                .limit(batch_size)
                .with_for_update(skip_locked=True)
            )

        self._lock_batch = claimable(*message)
        self._claim_batch = (
            update(outbox)
            .where(outbox.c.id.in_(claimable(outbox.c.id).scalar_subquery()))
            .values(attempts=outbox.c.attempts + 1, claimed_until=func.now() + self.LEASE)
            .returning(*message)
        )
        # Holding the rows by their locks, the attempt is recorded with the outcome.
        attempted = {"attempts": outbox.c.attempts + 1} if on_attempt is None else {}
        self._mark = (
            update(outbox).where(_one_of(outbox.c.id)).values(published_at=func.now(), claimed_until=None, **attempted)
        )
        self._mark_refused = (
            update(outbox)
            .where(outbox.c.id == bindparam("row_id", type_=BigInteger))
            .values(refused_at=func.now(), error=bindparam("reason"), claimed_until=None, **attempted)
        )
        self._let_go = (
            update(outbox).where(_one_of(outbox.c.id), outbox.c.published_at.is_(None)).values(claimed_until=None)
        )
        # At 0 from the start, for the alert's increase() to see the first refusal (consumer.py).
        REFUSED_TOTAL.labels(name)

    def wake(self) -> None:
        """Called right after a commit that created something to publish."""
        self.worker.wake()

    async def publish_batch(self) -> bool:
        """Publish one batch; True when the batch was full and more may be waiting."""
        if self._on_attempt is None:
            return await self._publish_holding_locks()
        tracker = self.worker.tracker
        rows = await in_transaction(self._engine, self._claim, what=f"relay {self.name}: claim", tracker=tracker)
        if not rows:
            await self._sweep_when_due()
            return False
        try:
            refused = await self._send_and_isolate_refusals(rows)
        except BaseException:
            # Nothing is marked published. Let the rows go at once (not after the lease), so the
            # worker's own backoff decides when to try again.
            with contextlib.suppress(Exception):
                await self._release(rows)
            raise
        published = [row.id for row in rows if row.id not in refused]
        await in_transaction(
            self._engine,
            lambda conn: self._mark_published(conn, published, refused),
            what=f"relay {self.name}: mark",
            tracker=tracker,
        )
        return await self._published(rows, published, refused)

    async def _publish_holding_locks(self) -> bool:
        """Lock, send, mark published, in one transaction (module docstring). Not retried here:
        a failure anywhere (the database's or the broker's) rolls it all back, lets go of the rows
        and goes to the worker's backoff, as the two-transaction path's failures do."""
        async with transaction(self._engine) as conn:
            rows: Sequence[Row[Any]] = (await conn.execute(self._lock_batch)).all()
            if rows:
                refused = await self._send_and_isolate_refusals(rows)
                published = [row.id for row in rows if row.id not in refused]
                await self._mark_published(conn, published, refused)
        if not rows:
            await self._sweep_when_due()
            return False
        return await self._published(rows, published, refused)

    async def _published(self, rows: Sequence[Row[Any]], published: list[int], refused: dict[int, str]) -> bool:
        PUBLISHED.labels(self.name).inc(len(published))
        if refused:
            REFUSED_TOTAL.labels(self.name).inc(len(refused))
        if len(rows) < self._batch_size:
            await self._sweep_when_due()  # caught up (a busy relay may never find the outbox empty)
            return False
        return True

    async def sweep(self) -> int:
        """Delete published rows older than the retention, oldest first, a bounded batch per
        transaction, up to `SWEEP_BATCHES`; returns how many."""
        return (await self._sweep())[0]

    async def _sweep(self) -> tuple[int, bool]:
        """How many were deleted, and whether the sweep stopped at its bound with more to do.

        Each batch looks at the next `sweep_batch_size` published rows in id order (a walk of the
        primary key, which skips just the few rows still unpublished), from where the last one
        stopped, and deletes those expired. A row kept among them (published late, as a refused
        row published again) is stepped over, not looked at again by every batch. Ids follow
        publication closely enough that a batch with nothing expired ends the sweep: so no index
        is kept only for this, and a sweep that finds nothing expired reads one batch, not the
        table."""
        if self._retention is None:
            return 0, False
        outbox = self._outbox
        looked_at = (
            select(outbox.c.id, outbox.c.published_at)
            .where(outbox.c.published_at.is_not(None), outbox.c.id > bindparam("after", type_=BigInteger))
            .order_by(outbox.c.id)
            .limit(self._sweep_batch_size)
            .cte("looked_at")
        )
        deleted = (
            delete(outbox)
            .where(
                outbox.c.id.in_(select(looked_at.c.id).where(looked_at.c.published_at < func.now() - self._retention))
            )
            .returning(outbox.c.id)
            .cte("deleted")
        )
        # One statement: the batch's last id (where the next one starts), its size, what went.
        delete_batch = select(
            select(func.max(looked_at.c.id)).scalar_subquery().label("last"),
            select(func.count()).select_from(looked_at).scalar_subquery().label("looked_at"),
            select(func.count()).select_from(deleted).scalar_subquery().label("deleted"),
        )
        after, swept, more = 0, 0, True
        for _ in range(self.SWEEP_BATCHES):
            batch = await in_transaction(
                self._engine,
                functools.partial(_one_row, statement=delete_batch, after=after),
                what=f"relay {self.name}: sweep",
            )
            swept += batch.deleted
            if batch.looked_at < self._sweep_batch_size or batch.deleted == 0:
                more = False
                break
            after = batch.last
        if swept:
            SWEPT.labels(self.name).inc(swept)
            log.info("relay %s: %d published rows older than %s deleted", self.name, swept, self._retention)
        return swept, more

    async def _sweep_when_due(self) -> None:
        # Off the hot path: only when the relay has caught up, and at most once a minute
        # unless the last sweep stopped at its bound (then at the next idle step, to catch up).
        now = asyncio.get_running_loop().time()
        if self._retention is None or now < self._next_sweep:
            return
        self._next_sweep = now + self.SWEEP_EVERY_S
        try:
            if (await self._sweep())[1]:
                self._next_sweep = now
        except Exception:
            log.warning("relay %s: sweeping published rows failed; next time", self.name, exc_info=True)

    async def _claim(self, conn: AsyncConnection) -> Sequence[Row[Any]]:
        claimed = (await conn.execute(self._claim_batch)).all()
        rows = sorted(claimed, key=lambda row: row.id)  # RETURNING keeps no order; the outbox's is ours
        if rows and self._on_attempt is not None:
            await self._on_attempt(conn, rows)
        return rows

    async def _send_and_isolate_refusals(self, rows: Sequence[Row[Any]]) -> dict[int, str]:
        """Send the batch; return the rows the broker refused alone, by id, with the reason."""
        outcomes = await self._send(rows)
        failed = [(row, error) for row, error in zip(rows, outcomes, strict=True) if error is not None]
        if failed and not any(isinstance(error, REFUSED) for _, error in failed):
            raise failed[0][1]  # nothing refused: the broker is away or slow, not a message's fault
        refused: dict[int, str] = {}
        for row, _ in failed:
            # Alone, so that its refusal is its own and not its batch's. A failure of another kind
            # is sent again too: after a refusal the producer fails what followed on that partition
            # in later producer batches (OutOfOrderSequenceNumber), no fault of theirs; `_send`
            # has renewed it, so alone they go through. What fails alone and is not refused is a
            # real failure, and leaves the whole batch to be sent again.
            (alone,) = await self._send([row])
            if alone is None:
                continue
            if not isinstance(alone, REFUSED):
                raise alone
            reason = f"{type(alone).__name__}: {alone}"[:2000]
            log.error(
                "relay %s: event %s (%s) refused by the broker, set aside: %s",
                self.name,
                row.event_id,
                row.topic,
                reason,
            )
            refused[row.id] = reason
        return refused

    async def _send(self, rows: Sequence[Row[Any]]) -> list[BaseException | None]:
        """Each row's outcome: None when the broker acknowledged it, else the refusal."""
        # send() only enqueues; the returned futures resolve when the broker acknowledges. A broker
        # that does not answer must not hold the batch for ever: give up and let the worker retry.
        # Each row's publish span continues the trace its state change was recorded in.
        with tracing.publishing([(row.topic, row.key, row.headers) for row in rows]) as headers_of:
            async with asyncio.timeout(self.SEND_TIMEOUT_S):
                producer = self._producer.producer
                acks: list[Awaitable[Any]] = []
                refused_by_client: set[int] = set()
                for i, (row, headers) in enumerate(zip(rows, headers_of, strict=True)):
                    try:
                        acks.append(
                            await producer.send(
                                row.topic,
                                value=row.value.encode(),
                                key=row.key.encode(),
                                headers=[(name, value.encode()) for name, value in headers.items()] or None,
                            )
                        )
                    except REFUSED as error:  # the client's own check (larger than a request may be)
                        refused_by_client.add(i)
                        acks.append(_failed(error))
                outcomes = await asyncio.gather(*acks, return_exceptions=True)
        if any(isinstance(outcome, REFUSED) for i, outcome in enumerate(outcomes) if i not in refused_by_client):
            await self._producer.renew()  # out of step with the broker otherwise (see renew())
        return [outcome if isinstance(outcome, BaseException) else None for outcome in outcomes]

    async def _mark_published(self, conn: AsyncConnection, published: list[int], refused: dict[int, str]) -> None:
        if published:
            await conn.execute(self._mark, {"ids": published})
        for row_id, reason in refused.items():
            await conn.execute(self._mark_refused, {"row_id": row_id, "reason": reason})

    async def _release(self, rows: Sequence[Row[Any]]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(self._let_go, {"ids": [row.id for row in rows]})


async def _one_row(conn: AsyncConnection, *, statement: Executable, after: int) -> Row[Any]:
    return (await conn.execute(statement, {"after": after})).one()


async def _failed(error: BaseException) -> None:
    raise error


def _one_of(column: Column[int]) -> ColumnElement[bool]:
    """`column = ANY($1::BIGINT[])`, the ids given as `ids` at execution: one statement text
    whatever the batch's size, prepared once per connection (an `IN ($1, …, $n)` is a new
    statement, parsed and planned, for every size)."""
    return column == any_(bindparam("ids", type_=ARRAY(BigInteger)))
